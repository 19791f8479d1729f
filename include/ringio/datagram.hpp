// datagram_endpoint: UDP (and Unix datagram) sockets with coroutines, where asyncio offers only
// create_datagram_endpoint's callbacks.
//
//   auto ep = co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("127.0.0.1:0"), {});
//   std::array<std::byte, 65536> buf;
//   auto r = co_await ep.recv_from(buf);          // {size, sender, truncated}
//   co_await ep.send_to(std::span(buf).first(r.size), r.sender);
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>

#include "ringio/endpoint.hpp"
#include "ringio/socket.hpp"
#include "ringio/task.hpp"

namespace ringio {

struct datagram_options {
    bool reuse_address = false;
    bool reuse_port = false;          // SO_REUSEPORT: several endpoints (threads) on one port
    bool allow_broadcast = false;     // SO_BROADCAST; without it a broadcast send fails (EACCES)
    std::optional<int> recv_buffer_size;  // SO_RCVBUF
    std::optional<int> send_buffer_size;  // SO_SNDBUF
    std::optional<bool> v6only;       // IPV6_V6ONLY for an IPv6 local address
    int family = AF_UNSPEC;           // used when neither address is given (default AF_INET)
    /// Receive with one multishot recvmsg into a ring of provided buffers (no syscall per
    /// datagram) where the kernel has it; otherwise one recvmsg per recv_from.
    bool multishot = true;
    unsigned ring_buffers = 32;               // buffers in that ring (a power of two)
    std::size_t max_datagram = 65535;         // payload room per buffer
};

/// One received datagram: `size` bytes were placed in the buffer; `truncated` says the
/// datagram was larger than the buffer (the rest is gone: never silently cut).
struct datagram {
    std::size_t size = 0;
    endpoint sender;
    bool truncated = false;
};

namespace detail {
class datagram_state;
}

/// A bound (and optionally connected) datagram socket. Move-only; destroying it closes the
/// socket after its operations have completed.
class datagram_endpoint {
public:
    datagram_endpoint() noexcept;
    explicit datagram_endpoint(std::unique_ptr<detail::datagram_state> st) noexcept;
    datagram_endpoint(datagram_endpoint&&) noexcept;
    datagram_endpoint& operator=(datagram_endpoint&&) noexcept;
    ~datagram_endpoint();

    /// Sends one datagram to `to`. Throws std::system_error (EMSGSIZE when too large, EACCES for
    /// a broadcast without allow_broadcast, ECONNREFUSED reported from an earlier ICMP error).
    /// Cancel safety: if cancelled, the datagram was either sent whole or not at all.
    task<> send_to(std::span<const std::byte> data, const endpoint& to);
    task<> send_to(std::string_view data, const endpoint& to) { return send_to(as_bytes(data), to); }
    /// Sends to the connected peer.
    task<> send(std::span<const std::byte> data);
    task<> send(std::string_view data) { return send(as_bytes(data)); }

    /// Receives one datagram into buf. Several tasks may wait at once; each gets one datagram,
    /// in arrival order. On a connected endpoint, an ICMP error (port unreachable) is thrown
    /// here as std::system_error(ECONNREFUSED) and the endpoint stays usable.
    /// Cancel safety: safe; a cancelled receive takes no datagram.
    task<datagram> recv_from(std::span<std::byte> buf);
    /// recv_from() on a connected endpoint (the sender is always the peer).
    task<datagram> recv(std::span<std::byte> buf) { return recv_from(buf); }

    [[nodiscard]] endpoint local_endpoint() const;
    [[nodiscard]] std::optional<endpoint> remote_endpoint() const;

    // Multicast (IPv4 and IPv6). Throw std::system_error.
    /// Joins `group` on the interface with index `interface_index` (0: the kernel's choice);
    /// for IPv4 the interface may instead be given by one of its addresses.
    void join_group(const ip_address& group, unsigned interface_index = 0);
    void join_group(const ip_address& group, const ip_address& interface_address);
    void leave_group(const ip_address& group, unsigned interface_index = 0);
    void leave_group(const ip_address& group, const ip_address& interface_address);
    /// IP_MULTICAST_TTL / IPV6_MULTICAST_HOPS.
    void set_multicast_ttl(int ttl);
    /// IP_MULTICAST_LOOP / IPV6_MULTICAST_LOOP: whether this host's own members receive.
    void set_multicast_loopback(bool on);
    /// The outgoing interface for multicast, by address (IPv4) or index (IPv6 or IPv4).
    void set_multicast_interface(const ip_address& interface_address);
    void set_multicast_interface(unsigned interface_index);

    /// Ends pending receives (they throw std::system_error EBADF, "endpoint closed"), waits for
    /// every operation on the socket to complete, then closes it. Idempotent.
    task<> close();
    [[nodiscard]] bool is_closing() const noexcept;
    /// Whether receives use the multishot buffer ring.
    [[nodiscard]] bool multishot() const noexcept;
    /// The underlying socket, for options (const: the endpoint keeps its ownership).
    [[nodiscard]] const socket& transport() const;

private:
    static std::span<const std::byte> as_bytes(std::string_view s) noexcept {
        return std::as_bytes(std::span(s.data(), s.size()));
    }
    std::unique_ptr<detail::datagram_state> st_;
};

/// Creates a datagram endpoint (asyncio.loop.create_datagram_endpoint): bound to `local` if
/// given (port 0: any), connected to `remote` if given; either may be absent. The socket type
/// follows the addresses: UDP for IP endpoints, SOCK_DGRAM Unix sockets for paths.
/// Throws std::system_error (bind/connect errors name the address) or std::invalid_argument
/// when the two addresses' families differ.
task<datagram_endpoint> create_datagram_endpoint(std::optional<endpoint> local, std::optional<endpoint> remote,
                                                 datagram_options options = {});

}  // namespace ringio
