// Addresses: ip_address (IPv4 / IPv6 with scope id), endpoint (ip:port or a Unix socket path,
// including Linux abstract names), and resolve(). fmt formats both:
//   fmt::format("{}", ep) -> "127.0.0.1:8080", "[::1]:8080", "[fe80::1%lo]:80", "/run/x.sock",
//   "@abstract-name".
#pragma once

#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "ringio/task.hpp"

namespace ringio {

/// An IPv4 or IPv6 address. Value type, cheap to copy, totally ordered.
class ip_address {
public:
    /// 0.0.0.0
    ip_address() noexcept = default;

    /// From 4 bytes in network order (a.b.c.d), or 16 bytes for IPv6 (+ scope id).
    static ip_address v4(std::array<std::uint8_t, 4> bytes) noexcept;
    static ip_address v6(std::array<std::uint8_t, 16> bytes, std::uint32_t scope_id = 0) noexcept;
    static ip_address any_v4() noexcept;       // 0.0.0.0
    static ip_address any_v6() noexcept;       // ::
    static ip_address loopback_v4() noexcept;  // 127.0.0.1
    static ip_address loopback_v6() noexcept;  // ::1

    /// Parses "127.0.0.1", "::1", "::ffff:1.2.3.4", "fe80::1%lo" or "fe80::1%2" (the scope as an
    /// interface name or number). Returns nullopt for anything else (no name lookup is done).
    static std::optional<ip_address> parse(std::string_view text);

    [[nodiscard]] bool is_v4() const noexcept { return !v6_; }
    [[nodiscard]] bool is_v6() const noexcept { return v6_; }
    [[nodiscard]] int family() const noexcept;  // AF_INET or AF_INET6
    /// 4 meaningful bytes for IPv4 (the first 4), 16 for IPv6.
    [[nodiscard]] const std::array<std::uint8_t, 16>& bytes() const noexcept { return bytes_; }
    [[nodiscard]] std::uint32_t scope_id() const noexcept { return scope_id_; }
    /// 127.0.0.0/8, ::1, and ::ffff:127.0.0.0/104 (IPv4-mapped loopback, as Python 3.13 does).
    [[nodiscard]] bool is_loopback() const noexcept;
    [[nodiscard]] bool is_unspecified() const noexcept;
    [[nodiscard]] bool is_multicast() const noexcept;

    /// "127.0.0.1", "::1", "fe80::1%lo" (scope as the interface name when it has one, else the
    /// number). IPv6 is in inet_ntop's canonical form.
    [[nodiscard]] std::string to_string() const;

    friend auto operator<=>(const ip_address&, const ip_address&) = default;
    friend bool operator==(const ip_address&, const ip_address&) = default;

private:
    std::array<std::uint8_t, 16> bytes_{};
    std::uint32_t scope_id_ = 0;
    bool v6_ = false;
};

/// A socket address: an IP address and port, or a Unix socket path. Holds a sockaddr ready for
/// the kernel (data()/size()).
class endpoint {
public:
    /// 0.0.0.0:0
    endpoint() noexcept;
    endpoint(const ip_address& address, std::uint16_t port) noexcept;

    /// A Unix socket path. A leading '@' (or '\0') names a Linux abstract socket. Throws
    /// std::invalid_argument (naming the path) if the path is empty, too long for sockaddr_un
    /// (a filesystem path needs room for its NUL: at most 107 bytes; "@name" at most 108), or a
    /// filesystem path contains a NUL. size() is offsetof(sun_path) + length + 1 for a path, and
    /// offsetof(sun_path) + 1 + name length for an abstract name (no trailing NUL).
    static endpoint unix_path(std::string_view path);

    /// Parses "127.0.0.1:80", "[::1]:80", "[fe80::1%lo]:80"; a text starting with '/' or '@' as a
    /// Unix path. The port is decimal, 0..65535; IPv6 needs the brackets. Returns nullopt for
    /// anything else (no name lookup), including a Unix path unix_path() would reject.
    static std::optional<endpoint> parse(std::string_view text);

    /// From a kernel sockaddr (accept, recvmsg, getsockname). Throws std::invalid_argument for a
    /// family other than AF_INET, AF_INET6 or AF_UNIX, or a length that does not fit. An unnamed
    /// Unix socket (len == sizeof(sa_family_t)) is accepted: path() is "".
    static endpoint from_sockaddr(const sockaddr* sa, socklen_t len);

    [[nodiscard]] int family() const noexcept { return storage_.ss_family; }
    [[nodiscard]] bool is_ip() const noexcept { return family() == AF_INET || family() == AF_INET6; }
    [[nodiscard]] bool is_unix() const noexcept { return family() == AF_UNIX; }
    /// The IP address (requires is_ip()).
    [[nodiscard]] ip_address address() const noexcept;
    /// The port (0 for Unix endpoints).
    [[nodiscard]] std::uint16_t port() const noexcept;
    /// The Unix path; an abstract name comes back with a leading '@'. Empty for IP endpoints.
    [[nodiscard]] std::string path() const;
    [[nodiscard]] bool is_abstract() const noexcept;

    [[nodiscard]] const sockaddr* data() const noexcept { return reinterpret_cast<const sockaddr*>(&storage_); }
    [[nodiscard]] sockaddr* data() noexcept { return reinterpret_cast<sockaddr*>(&storage_); }
    [[nodiscard]] socklen_t size() const noexcept { return len_; }
    /// Room for the kernel to write into (accept/recvmsg): set the length it reported with resize().
    [[nodiscard]] static constexpr socklen_t capacity() noexcept { return sizeof(sockaddr_storage); }
    void resize(socklen_t len) noexcept { len_ = len; }

    /// "127.0.0.1:8080", "[::1]:8080", "[fe80::1%lo]:80", "/path", "@name"; "<unnamed>" for an
    /// unnamed Unix socket (an unbound client's address).
    [[nodiscard]] std::string to_string() const;

    /// Same family and address and port (scope id included, flow info ignored), or the same path.
    friend bool operator==(const endpoint& a, const endpoint& b) noexcept;

private:
    sockaddr_storage storage_{};
    socklen_t len_ = 0;
};

/// A name that could not be resolved (socket.gaierror). code() is the getaddrinfo EAI_* value.
/// what() is "ringio: cannot resolve 'host': " + gai_strerror(code), or for EAI_SYSTEM the
/// message of errno as it is when the constructor runs.
class resolve_error : public std::runtime_error {
public:
    resolve_error(std::string host, int code);
    [[nodiscard]] const std::string& host() const noexcept { return host_; }
    [[nodiscard]] int code() const noexcept { return code_; }

private:
    std::string host_;
    int code_;
};

struct resolve_options {
    int family = AF_UNSPEC;       // AF_INET, AF_INET6 or AF_UNSPEC for both
    int socktype = SOCK_STREAM;   // SOCK_STREAM or SOCK_DGRAM
    bool passive = false;         // for bind: an empty host means every interface
};

/// Resolves host and port to endpoints, in the order getaddrinfo prefers. A numeric address
/// ("127.0.0.1", "::1", "[::1]") is parsed without leaving the loop; a name is looked up with
/// getaddrinfo on the thread pool (to_thread), so the loop never blocks. An empty host means
/// the loopback addresses, or with options.passive every interface (0.0.0.0 and ::), IPv4
/// first; options.family filters every case. Duplicates are dropped, the order kept.
/// Throws resolve_error naming the host when nothing is found, for a literal of the other family
/// than options.family (EAI_ADDRFAMILY), or for a family other than the three allowed (EAI_FAMILY).
/// Cancel safety: safe (the lookup finishes on its thread; its result is dropped).
task<std::vector<endpoint>> resolve(std::string host, std::uint16_t port, resolve_options options = {});

}  // namespace ringio

template <>
struct fmt::formatter<ringio::ip_address> : fmt::formatter<std::string_view> {
    template <class Ctx>
    auto format(const ringio::ip_address& a, Ctx& ctx) const {
        return fmt::formatter<std::string_view>::format(a.to_string(), ctx);
    }
};

template <>
struct fmt::formatter<ringio::endpoint> : fmt::formatter<std::string_view> {
    template <class Ctx>
    auto format(const ringio::endpoint& e, Ctx& ctx) const {
        return fmt::formatter<std::string_view>::format(e.to_string(), ctx);
    }
};
