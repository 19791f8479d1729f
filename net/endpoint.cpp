// ip_address, endpoint and resolve_error: parsing (inet_pton only, never a name lookup),
// formatting, and the sockaddr the kernel reads and writes.
#include "ringio/endpoint.hpp"

#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstring>
#include <system_error>

namespace ringio {

namespace {

constexpr socklen_t unix_path_offset = offsetof(sockaddr_un, sun_path);
constexpr std::size_t unix_path_room = sizeof(sockaddr_un::sun_path);

/// A strictly decimal unsigned number (no sign, no spaces, no "0x"), or nullopt if it does not
/// fit in T.
template <class T>
std::optional<T> parse_decimal(std::string_view text) {
    if (text.empty()) return std::nullopt;
    T value{};
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
    return value;
}

/// inet_pton on a string_view (it wants a NUL-terminated string).
bool pton(int family, std::string_view text, void* out) {
    char buf[INET6_ADDRSTRLEN + 1];
    if (text.size() >= sizeof buf) return false;
    std::memcpy(buf, text.data(), text.size());
    buf[text.size()] = '\0';
    return ::inet_pton(family, buf, out) == 1;
}

/// The sun_path bytes of a Unix endpoint as the kernel sees them: up to the NUL for a filesystem
/// path, every byte (the leading '\0' included) for an abstract name, empty when unnamed.
std::string_view unix_name(const endpoint& e) noexcept {
    if (e.size() <= unix_path_offset) return {};
    const char* p = reinterpret_cast<const char*>(e.data()) + unix_path_offset;
    const std::size_t n = std::min<std::size_t>(e.size() - unix_path_offset, unix_path_room);
    return p[0] == '\0' ? std::string_view(p, n) : std::string_view(p, ::strnlen(p, n));
}

/// A scope id written as a number ("2") or an interface name ("lo").
std::optional<std::uint32_t> parse_scope(std::string_view text) {
    if (text.empty()) return std::nullopt;
    if (auto n = parse_decimal<std::uint32_t>(text)) return n;
    char name[IF_NAMESIZE];
    if (text.size() >= sizeof name) return std::nullopt;
    std::memcpy(name, text.data(), text.size());
    name[text.size()] = '\0';
    unsigned index = ::if_nametoindex(name);
    if (index == 0) return std::nullopt;
    return index;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// ip_address

ip_address ip_address::v4(std::array<std::uint8_t, 4> bytes) noexcept {
    ip_address a;
    std::memcpy(a.bytes_.data(), bytes.data(), bytes.size());
    return a;
}

ip_address ip_address::v6(std::array<std::uint8_t, 16> bytes, std::uint32_t scope_id) noexcept {
    ip_address a;
    a.bytes_ = bytes;
    a.scope_id_ = scope_id;
    a.v6_ = true;
    return a;
}

ip_address ip_address::any_v4() noexcept { return {}; }
ip_address ip_address::any_v6() noexcept { return v6({}); }
ip_address ip_address::loopback_v4() noexcept { return v4({127, 0, 0, 1}); }
ip_address ip_address::loopback_v6() noexcept {
    std::array<std::uint8_t, 16> b{};
    b[15] = 1;
    return v6(b);
}

std::optional<ip_address> ip_address::parse(std::string_view text) {
    if (text.find('\0') != std::string_view::npos) return std::nullopt;
    if (text.find(':') == std::string_view::npos) {
        std::array<std::uint8_t, 4> b{};
        if (!pton(AF_INET, text, b.data())) return std::nullopt;
        return v4(b);
    }
    std::uint32_t scope = 0;
    if (auto pct = text.find('%'); pct != std::string_view::npos) {
        auto s = parse_scope(text.substr(pct + 1));
        if (!s) return std::nullopt;
        scope = *s;
        text = text.substr(0, pct);
    }
    std::array<std::uint8_t, 16> b{};
    if (!pton(AF_INET6, text, b.data())) return std::nullopt;
    return v6(b, scope);
}

int ip_address::family() const noexcept { return v6_ ? AF_INET6 : AF_INET; }

namespace {
// ::ffff:a.b.c.d: an IPv4 address seen through an IPv6 socket.
bool is_v4_mapped(const std::array<std::uint8_t, 16>& b) noexcept {
    for (int i = 0; i < 10; ++i)
        if (b[i] != 0) return false;
    return b[10] == 0xff && b[11] == 0xff;
}
}  // namespace

bool ip_address::is_loopback() const noexcept {
    if (!v6_) return bytes_[0] == 127;
    // TRICKY: ::ffff:127.x.y.z counts too (as in Python 3.13): the kernel routes it to loopback.
    if (is_v4_mapped(bytes_)) return bytes_[12] == 127;
    return *this == loopback_v6();
}

bool ip_address::is_unspecified() const noexcept {
    const std::size_t n = v6_ ? 16 : 4;
    for (std::size_t i = 0; i < n; ++i)
        if (bytes_[i] != 0) return false;
    return true;
}

bool ip_address::is_multicast() const noexcept {
    if (!v6_) return (bytes_[0] & 0xf0) == 0xe0;  // 224.0.0.0/4
    return bytes_[0] == 0xff;                       // ff00::/8
}

std::string ip_address::to_string() const {
    char buf[INET6_ADDRSTRLEN];
    // inet_ntop cannot fail here: the family is valid and the buffer is large enough.
    ::inet_ntop(family(), bytes_.data(), buf, sizeof buf);
    std::string out = buf;
    if (v6_ && scope_id_ != 0) {
        out += '%';
        char name[IF_NAMESIZE];
        if (::if_indextoname(scope_id_, name) != nullptr)
            out += name;
        else
            out += std::to_string(scope_id_);
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// endpoint

endpoint::endpoint() noexcept : endpoint(ip_address{}, 0) {}

endpoint::endpoint(const ip_address& address, std::uint16_t port) noexcept {
    if (address.is_v4()) {
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_port = htons(port);
        std::memcpy(&sin.sin_addr, address.bytes().data(), 4);
        std::memcpy(&storage_, &sin, sizeof sin);
        len_ = sizeof sin;
    } else {
        sockaddr_in6 sin6{};
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons(port);
        std::memcpy(&sin6.sin6_addr, address.bytes().data(), 16);
        sin6.sin6_scope_id = address.scope_id();
        std::memcpy(&storage_, &sin6, sizeof sin6);
        len_ = sizeof sin6;
    }
}

endpoint endpoint::unix_path(std::string_view path) {
    if (path.empty()) throw std::invalid_argument("ringio: empty Unix socket path");
    const bool abstract = path.front() == '@' || path.front() == '\0';
    // A filesystem path needs its terminating NUL inside sun_path; an abstract name has none, so
    // it may use every byte (its leading '\0' included).
    const std::size_t limit = abstract ? unix_path_room : unix_path_room - 1;
    if (path.size() > limit)
        throw std::invalid_argument(fmt::format("ringio: Unix socket path too long ({} bytes, at most {}): '{}'",
                                                path.size(), limit, path));
    if (!abstract && path.find('\0') != std::string_view::npos)
        throw std::invalid_argument(fmt::format("ringio: Unix socket path contains a NUL byte: '{}'", path));

    endpoint e;
    e.storage_ = {};
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    std::memcpy(sun.sun_path, path.data(), path.size());
    if (abstract) sun.sun_path[0] = '\0';
    std::memcpy(&e.storage_, &sun, sizeof sun);
    e.len_ = static_cast<socklen_t>(unix_path_offset + path.size() + (abstract ? 0 : 1));
    return e;
}

std::optional<endpoint> endpoint::parse(std::string_view text) {
    if (text.empty()) return std::nullopt;
    if (text.front() == '/' || text.front() == '@') {
        try {
            return unix_path(text);
        } catch (const std::invalid_argument&) {
            return std::nullopt;  // too long, or a NUL inside a filesystem path
        }
    }
    // The port follows the last ':'; an IPv6 address must be in brackets so that "::1:80" is not
    // ambiguous.
    std::string_view host;
    std::string_view port_text;
    if (text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
            return std::nullopt;
        host = text.substr(1, close - 1);
        port_text = text.substr(close + 2);
        if (host.find(':') == std::string_view::npos) return std::nullopt;  // "[1.2.3.4]:80"
    } else {
        auto colon = text.find(':');
        if (colon == std::string_view::npos || text.find(':', colon + 1) != std::string_view::npos)
            return std::nullopt;
        host = text.substr(0, colon);
        port_text = text.substr(colon + 1);
    }
    auto port = parse_decimal<std::uint16_t>(port_text);
    if (!port) return std::nullopt;
    auto address = ip_address::parse(host);
    if (!address) return std::nullopt;
    return endpoint(*address, *port);
}

endpoint endpoint::from_sockaddr(const sockaddr* sa, socklen_t len) {
    if (sa == nullptr || len < sizeof(sa_family_t) || len > capacity())
        throw std::invalid_argument(fmt::format("ringio: bad sockaddr length {}", len));
    socklen_t need = 0;
    switch (sa->sa_family) {
        case AF_INET: need = sizeof(sockaddr_in); break;
        case AF_INET6: need = sizeof(sockaddr_in6); break;
        case AF_UNIX:
            if (len > sizeof(sockaddr_un))
                throw std::invalid_argument(fmt::format("ringio: bad AF_UNIX sockaddr length {}", len));
            need = len;  // from sizeof(sa_family_t) (unnamed) up to a full sun_path
            break;
        default: throw std::invalid_argument(fmt::format("ringio: unsupported address family {}", sa->sa_family));
    }
    if (len < need)
        throw std::invalid_argument(fmt::format("ringio: sockaddr of family {} too short ({} bytes)", sa->sa_family, len));
    endpoint e;
    e.storage_ = {};  // zeroed: a sun_path the kernel did not terminate still ends in a NUL
    std::memcpy(&e.storage_, sa, need);
    e.len_ = need;
    return e;
}

ip_address endpoint::address() const noexcept {
    if (family() == AF_INET) {
        sockaddr_in sin;
        std::memcpy(&sin, &storage_, sizeof sin);
        std::array<std::uint8_t, 4> b;
        std::memcpy(b.data(), &sin.sin_addr, 4);
        return ip_address::v4(b);
    }
    if (family() == AF_INET6) {
        sockaddr_in6 sin6;
        std::memcpy(&sin6, &storage_, sizeof sin6);
        std::array<std::uint8_t, 16> b;
        std::memcpy(b.data(), &sin6.sin6_addr, 16);
        return ip_address::v6(b, sin6.sin6_scope_id);
    }
    return {};
}

std::uint16_t endpoint::port() const noexcept {
    // sin_port and sin6_port sit at the same offset.
    static_assert(offsetof(sockaddr_in, sin_port) == offsetof(sockaddr_in6, sin6_port));
    if (!is_ip()) return 0;
    std::uint16_t p;
    std::memcpy(&p, reinterpret_cast<const char*>(&storage_) + offsetof(sockaddr_in, sin_port), sizeof p);
    return ntohs(p);
}

std::string endpoint::path() const {
    if (!is_unix()) return {};
    std::string out(unix_name(*this));
    if (!out.empty() && out[0] == '\0') out[0] = '@';
    return out;
}

bool endpoint::is_abstract() const noexcept {
    return is_unix() && len_ > unix_path_offset &&
           reinterpret_cast<const char*>(&storage_)[unix_path_offset] == '\0';
}

std::string endpoint::to_string() const {
    switch (family()) {
        case AF_INET: return fmt::format("{}:{}", address(), port());
        case AF_INET6: return fmt::format("[{}]:{}", address(), port());
        case AF_UNIX:
            if (len_ <= unix_path_offset) return "<unnamed>";
            return path();
        default: return fmt::format("<address family {}>", family());
    }
}

bool operator==(const endpoint& a, const endpoint& b) noexcept {
    if (a.family() != b.family()) return false;
    switch (a.family()) {
        case AF_INET:
        case AF_INET6: return a.address() == b.address() && a.port() == b.port();
        case AF_UNIX: return unix_name(a) == unix_name(b);
        default:
            return a.len_ == b.len_ && std::memcmp(&a.storage_, &b.storage_, a.len_) == 0;
    }
}

// ---------------------------------------------------------------------------------------------
// resolve_error

namespace {
std::string resolve_message(const std::string& host, int code) {
    // TRICKY: read errno before anything else here can change it (EAI_SYSTEM means "see errno").
    const int err = errno;
    if (code == EAI_SYSTEM)
        return fmt::format("ringio: cannot resolve '{}': {}", host, std::system_category().message(err));
    return fmt::format("ringio: cannot resolve '{}': {}", host, ::gai_strerror(code));
}
}  // namespace

resolve_error::resolve_error(std::string host, int code)
    : std::runtime_error(resolve_message(host, code)), host_(std::move(host)), code_(code) {}

}  // namespace ringio
