// fuzz_endpoint: parsing and formatting of ip_address and endpoint, from_sockaddr, unix_path,
// and resolve() on the inputs it answers without a lookup.
//
// Input: the first byte picks what is fuzzed (its value modulo 6), the rest is the payload:
//   0  ip_address::parse(payload)
//   1  endpoint::parse(payload)
//   2  endpoint::unix_path(payload)
//   3  endpoint::from_sockaddr: payload = 2 bytes of length, 1 byte choosing the family, then the
//      bytes of the sockaddr
//   4  an endpoint built from raw values: 1 byte (even: IPv4, odd: IPv6), 16 address bytes,
//      4 bytes of scope id, 2 bytes of port
//   5  resolve(host, port) for a host it resolves without getaddrinfo (empty, a literal, or in
//      brackets): 1 byte of family, 1 of flags, 2 of port, then the host
//
// Invariants: nothing crashes; parse(to_string(x)) == x and formats the same; the documented
// exceptions only (std::invalid_argument from unix_path/from_sockaddr, resolve_error from
// resolve, none from parse); a Unix path keeps its bytes.
#include <ringio/ringio.hpp>

#include <sys/un.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "fuzz_check.hpp"

namespace {

using ringio::endpoint;
using ringio::ip_address;
using fuzz::fail;
using fuzz::show;

constexpr std::size_t path_offset = offsetof(sockaddr_un, sun_path);
constexpr std::size_t path_room = sizeof(sockaddr_un::sun_path);

/// Takes bytes off the front of the input.
struct reader {
    std::string_view rest;
    std::uint8_t byte() {
        if (rest.empty()) return 0;
        auto b = static_cast<std::uint8_t>(rest.front());
        rest.remove_prefix(1);
        return b;
    }
    std::uint32_t number(int bytes) {
        std::uint32_t v = 0;
        for (int i = 0; i < bytes; ++i) v = v << 8 | byte();
        return v;
    }
};

/// parse(to_string(a)) gives a back, and formats the same.
void check_address_round_trip(const ip_address& a) {
    std::string text = a.to_string();
    std::optional<ip_address> back = ip_address::parse(text);
    if (!back) fail("ip_address::parse({}) failed on to_string()'s own output", show(text));
    if (*back != a) fail("ip_address::parse({}) differs from the address that printed it", show(text));
    if (back->to_string() != text) fail("ip_address {} prints as {} after a round trip", show(text), show(back->to_string()));
    if (a.is_v4() == a.is_v6()) fail("ip_address {}: is_v4() == is_v6()", show(text));
    if (a.family() != (a.is_v4() ? AF_INET : AF_INET6)) fail("ip_address {}: family() disagrees", show(text));
    if (a.is_v4() && a.scope_id() != 0) fail("IPv4 address {} with a scope id", show(text));
    if (a.is_v4() && text.find(':') != std::string::npos) fail("IPv4 address printed with a ':': {}", show(text));
    if (a.is_v6() && text.find(':') == std::string::npos) fail("IPv6 address printed without ':': {}", show(text));
    (void)a.is_loopback();
    (void)a.is_multicast();
    (void)a.is_unspecified();
}

/// The endpoint is equal to itself, survives from_sockaddr(data(), size()), and (when its text is
/// one endpoint::parse accepts) parse(to_string(e)) == e.
void check_endpoint(const endpoint& e, bool expect_parse_round_trip) {
    if (!(e == e)) fail("endpoint {} is not equal to itself", show(e.to_string()));
    std::string text = e.to_string();
    if (fmt::format("{}", e) != text) fail("fmt and to_string() disagree for {}", show(text));
    endpoint copy = endpoint::from_sockaddr(e.data(), e.size());
    if (!(copy == e)) fail("from_sockaddr(data(), size()) of {} differs", show(text));
    if (e.is_ip()) {
        if (e.path() != "") fail("IP endpoint {} has a path", show(text));
        if (!(endpoint(e.address(), e.port()) == e)) fail("endpoint(address(), port()) of {} differs", show(text));
        check_address_round_trip(e.address());
    } else if (e.is_unix()) {
        if (e.port() != 0) fail("Unix endpoint {} has a port", show(text));
    }
    if (!expect_parse_round_trip) return;
    std::optional<endpoint> back = endpoint::parse(text);
    if (!back) fail("endpoint::parse({}) failed on to_string()'s own output", show(text));
    if (!(*back == e)) fail("endpoint::parse({}) differs from the endpoint that printed it", show(text));
    if (back->to_string() != text) fail("endpoint {} prints as {} after a round trip", show(text), show(back->to_string()));
}

void fuzz_ip_parse(std::string_view text) {
    std::optional<ip_address> a = ip_address::parse(text);
    if (!a) return;
    if (text.find('\0') != std::string_view::npos) fail("ip_address::parse accepted a NUL: {}", show(text));
    if (a->is_v6() != (text.find(':') != std::string_view::npos))
        fail("ip_address::parse({}) gave the other family", show(text));
    check_address_round_trip(*a);
    check_endpoint(endpoint(*a, 443), true);
}

void fuzz_endpoint_parse(std::string_view text) {
    std::optional<endpoint> e = endpoint::parse(text);
    if (!e) return;
    if (e->is_unix()) {
        if (text.front() != '/' && text.front() != '@') fail("endpoint::parse({}) made a Unix endpoint", show(text));
        if (e->path() != text) fail("endpoint::parse({}) has path {}", show(text), show(e->path()));
        if (e->is_abstract() != (text.front() == '@')) fail("endpoint::parse({}): is_abstract() wrong", show(text));
    } else if (!e->is_ip()) {
        fail("endpoint::parse({}) made family {}", show(text), e->family());
    }
    check_endpoint(*e, true);
}

void fuzz_unix_path(std::string_view path) {
    const bool abstract = !path.empty() && (path.front() == '@' || path.front() == '\0');
    const bool valid = !path.empty() && path.size() <= (abstract ? path_room : path_room - 1) &&
                       (abstract || path.find('\0') == std::string_view::npos);
    std::optional<endpoint> e;
    try {
        e = endpoint::unix_path(path);
    } catch (const std::invalid_argument&) {
        if (valid) fail("unix_path({}) threw for a valid path", show(path));
        return;
    }
    if (!valid) fail("unix_path({}) accepted an invalid path", show(path));
    std::string expected(path);
    if (abstract) expected[0] = '@';
    if (!e->is_unix()) fail("unix_path({}) is not AF_UNIX", show(path));
    if (e->path() != expected) fail("unix_path({}).path() is {}", show(path), show(e->path()));
    if (e->is_abstract() != abstract) fail("unix_path({}).is_abstract() wrong", show(path));
    std::size_t size = path_offset + path.size() + (abstract ? 0 : 1);
    if (e->size() != size) fail("unix_path({}).size() is {}, not {}", show(path), e->size(), size);
    if (e->to_string() != expected) fail("unix_path({}).to_string() is {}", show(path), show(e->to_string()));
    // endpoint::parse takes only texts starting with '/' or '@' as Unix paths.
    check_endpoint(*e, expected.front() == '/' || expected.front() == '@');
}

void fuzz_from_sockaddr(reader in) {
    const auto len = static_cast<socklen_t>(in.number(2) % (endpoint::capacity() + 16));
    const std::uint8_t family_choice = in.byte();
    alignas(sockaddr_storage) unsigned char buf[sizeof(sockaddr_storage) + 16] = {};
    std::memcpy(buf, in.rest.data(), std::min(in.rest.size(), sizeof buf));
    // Mostly the families it knows, sometimes whatever the bytes say.
    const sa_family_t families[] = {AF_INET, AF_INET6, AF_UNIX};
    if (family_choice % 4 != 3) {
        sa_family_t f = families[family_choice % 4];
        std::memcpy(buf, &f, sizeof f);
    }
    const sockaddr* sa = reinterpret_cast<const sockaddr*>(buf);
    std::optional<endpoint> e;
    try {
        e = endpoint::from_sockaddr(sa, len);
    } catch (const std::invalid_argument&) {
        return;
    }
    if (e->family() != sa->sa_family) fail("from_sockaddr changed the family");
    if (e->size() > len) fail("from_sockaddr: size() {} above the length given, {}", e->size(), len);
    if (e->is_ip()) {
        check_endpoint(*e, true);
        return;
    }
    if (!e->is_unix()) fail("from_sockaddr accepted family {}", e->family());
    std::string path = e->path();
    if (path.empty()) {
        if (e->to_string() != "<unnamed>" && e->size() <= path_offset)
            fail("an unnamed Unix endpoint prints as {}", show(e->to_string()));
        check_endpoint(*e, false);
        return;
    }
    if (!e->is_abstract() && path.front() == '@') {
        // A filesystem path that starts with '@' (a relative path the kernel reports as it was
        // bound) prints like an abstract name: path() cannot tell them apart, and unix_path()
        // and parse() read it as abstract, as documented. No round trip for it.
        check_endpoint(*e, false);
        return;
    }
    // A name the kernel reports makes an equal endpoint through unix_path(), except a
    // filesystem path that fills all of sun_path with no room for its NUL (the kernel allows
    // it; unix_path() rejects it, as documented).
    std::optional<endpoint> again;
    try {
        again = endpoint::unix_path(path);
    } catch (const std::invalid_argument&) {
        if (!(path.size() == path_room && path.front() != '@'))
            fail("unix_path(path()) threw for {} (from_sockaddr, length {})", show(path), len);
        check_endpoint(*e, false);
        return;
    }
    if (!(*again == *e)) fail("unix_path({}) differs from the endpoint from_sockaddr made", show(path));
    check_endpoint(*e, path.front() == '/' || path.front() == '@');
}

void fuzz_raw(reader in) {
    const bool v6 = in.byte() & 1;
    std::array<std::uint8_t, 16> bytes{};
    for (auto& b : bytes) b = in.byte();
    const std::uint32_t scope = in.number(4);
    const auto port = static_cast<std::uint16_t>(in.number(2));
    ip_address a = v6 ? ip_address::v6(bytes, scope)
                      : ip_address::v4(std::array<std::uint8_t, 4>{bytes[0], bytes[1], bytes[2], bytes[3]});
    check_address_round_trip(a);
    endpoint e(a, port);
    if (!(e.address() == a)) fail("endpoint(a, port).address() differs from a ({})", show(a.to_string()));
    if (e.port() != port) fail("endpoint({}, {}).port() is {}", show(a.to_string()), port, e.port());
    check_endpoint(e, true);
}

ringio::event_loop& loop() {
    static ringio::event_loop instance;
    return instance;
}

ringio::task<> resolve_and_check(std::string host, std::uint16_t port, ringio::resolve_options options,
                                 std::optional<ip_address> literal) {
    std::vector<endpoint> got;
    try {
        got = co_await ringio::resolve(host, port, options);
    } catch (const ringio::resolve_error& e) {
        if (e.host() != host) fail("resolve_error names {}, not {}", show(e.host()), show(host));
        co_return;
    }
    if (got.empty()) fail("resolve({}) returned nothing and threw nothing", show(host));
    for (const endpoint& e : got) {
        if (!e.is_ip()) fail("resolve({}) returned a non-IP endpoint", show(host));
        if (e.port() != port) fail("resolve({}, {}) returned port {}", show(host), port, e.port());
        if (options.family != AF_UNSPEC && e.family() != options.family)
            fail("resolve({}) returned family {} for {}", show(host), e.family(), options.family);
    }
    if (literal && !(got.size() == 1 && got.front() == endpoint(*literal, port)))
        fail("resolve({}) did not return the literal", show(host));
}

void fuzz_resolve(reader in) {
    const int families[] = {AF_UNSPEC, AF_INET, AF_INET6, AF_UNIX};
    ringio::resolve_options options;
    options.family = families[in.byte() % 4];
    const std::uint8_t flags = in.byte();
    options.passive = flags & 1;
    options.socktype = flags & 2 ? SOCK_DGRAM : SOCK_STREAM;
    const auto port = static_cast<std::uint16_t>(in.number(2));
    std::string host(in.rest);
    // Only what needs no getaddrinfo (no name lookups while fuzzing): "", a literal, "[...]".
    std::string_view text = host;
    const bool bracketed = text.size() >= 2 && text.front() == '[' && text.back() == ']';
    if (bracketed) text = text.substr(1, text.size() - 2);
    std::optional<ip_address> literal = ip_address::parse(text);
    if (!host.empty() && !bracketed && !literal) return;
    loop().run_until_complete(resolve_and_check(host, port, options, literal));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    reader in{std::string_view(reinterpret_cast<const char*>(data), size)};
    const std::uint8_t mode = in.byte() % 6;
    try {
        switch (mode) {
            case 0: fuzz_ip_parse(in.rest); break;
            case 1: fuzz_endpoint_parse(in.rest); break;
            case 2: fuzz_unix_path(in.rest); break;
            case 3: fuzz_from_sockaddr(in); break;
            case 4: fuzz_raw(in); break;
            case 5: fuzz_resolve(in); break;
        }
    } catch (const std::exception& e) {
        fail("mode {}: undocumented exception {}: {}", mode, typeid(e).name(), e.what());
    } catch (...) {
        fail("mode {}: an exception that is not a std::exception", mode);
    }
    return 0;
}
