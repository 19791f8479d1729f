// start_server(): a TCP or Unix stream server running one task per connection
// (asyncio.start_server).
//
//   auto srv = co_await ringio::start_server(handle, "127.0.0.1", 8888);
//   co_await ringio::wait_signal({SIGINT, SIGTERM});
//   srv.close();
//   co_await srv.wait_closed();
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ringio/socket.hpp"
#include "ringio/stream.hpp"
#include "ringio/task.hpp"

namespace ringio {

struct server_options {
    int backlog = 100;
    bool reuse_address = true;  // SO_REUSEADDR, as asyncio on Unix
    bool reuse_port = false;    // SO_REUSEPORT: several servers (one per thread) on one port
    std::size_t limit = default_stream_limit;
    /// Each read on a connection must finish within this time (stream_options::read_timeout);
    /// a handler that lets the timeout_error escape has its connection closed, without an
    /// error logged (an idle or slowloris client is not a server error).
    std::optional<std::chrono::nanoseconds> read_timeout{};
};

/// The handler run as its own task for each connection. When it returns, the connection is
/// flushed and closed (unless the handler closed it); if it throws, the error is logged with
/// the peer's address and the server goes on.
using connection_handler = std::function<task<>(stream_reader, stream_writer)>;

namespace detail {
struct server_state;
}

/// A running server. Move-only; destroying it stops accepting (like close()), while the
/// connections already accepted run on.
class server {
public:
    server() noexcept = default;
    explicit server(std::shared_ptr<detail::server_state> st) noexcept;
    server(server&&) noexcept = default;
    server& operator=(server&& o) noexcept;
    ~server();

    /// The listening sockets (one per address; for a host "" both 0.0.0.0 and ::, on one port).
    [[nodiscard]] const std::vector<socket>& sockets() const;
    /// The port the server listens on (of the first socket; 0 for Unix servers).
    [[nodiscard]] std::uint16_t port() const;
    [[nodiscard]] bool is_serving() const noexcept;
    /// Connections whose handlers are running.
    [[nodiscard]] std::size_t connections() const noexcept;

    /// Stops accepting and closes the listening sockets. Connections already accepted go on;
    /// one the kernel accepted concurrently is closed without reaching a handler. Idempotent.
    void close();
    /// Waits until the server is closed and every connection's handler has finished and its
    /// connection is closed (not just the listeners, unlike asyncio before 3.12.1).
    /// Cancel safety: safe.
    task<> wait_closed();
    /// Closes every connection gracefully: peers read what was written, then EOF.
    void close_clients();
    /// Resets every connection (RST); buffered data is dropped.
    void abort_clients();
    /// Waits until close() is called. Cancelling it closes the server.
    task<> serve_forever();

private:
    std::shared_ptr<detail::server_state> st_;
};

/// Listens on host:port and runs `handler` for every connection. host "" (or "0.0.0.0"
/// and "::" together) means every interface, IPv4 and IPv6; port 0 picks a free port (the same
/// one for every address). Uses multishot accept where the kernel has it. Accept failures
/// (EMFILE, ENFILE, ENOMEM, ENOBUFS) are logged once per burst and retried after a short
/// back-off; the listener never dies of them. Throws std::system_error if binding fails.
task<server> start_server(connection_handler handler, std::string host, std::uint16_t port,
                          server_options options = {});

/// Listens on every address of every host in `hosts` (asyncio.start_server with a sequence of
/// hosts), all on one port: with port 0, the port the first socket got. The hosts are resolved
/// concurrently; an address named twice (by two hosts, or "localhost" and "127.0.0.1") gets one
/// socket. With more than one address, an IPv6 socket is IPV6_V6ONLY. Each host must get at
/// least one socket: an address family the machine lacks is skipped only for a host that has
/// addresses of another. Throws std::system_error (EADDRINUSE, for instance for "0.0.0.0" and
/// "127.0.0.1" together: the wildcard already holds the port) if binding fails, EADDRNOTAVAIL
/// for an empty list, resolve_error for a host that does not resolve.
/// Pass a std::vector built before the co_await: a braced list of strings would be ambiguous
/// with the one-host form, and GCC 12 miscompiles an initializer_list inside a coroutine.
task<server> start_server(connection_handler handler, std::vector<std::string> hosts, std::uint16_t port,
                          server_options options = {});

/// The same on a Unix socket path ('@name' for an abstract one). A stale socket file left at
/// the path is replaced. close() removes the file, unless it is no longer the one this server
/// bound (same device and inode; another server may own the path by then, as in asyncio 3.13).
task<server> start_unix_server(connection_handler handler, std::string path, server_options options = {});

}  // namespace ringio
