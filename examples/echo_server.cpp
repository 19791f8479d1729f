// echo_server: sends back every byte it receives (RFC 862 over TCP).
//
//   echo_server [--host H] [--port P]        (defaults: 127.0.0.1, port 0 = any free port)
//
// The first line on stdout is "listening on HOST:PORT", so that a test or a benchmark started
// with --port 0 learns the port. When a client sends EOF, the server finishes sending what it
// owes, then closes. SIGINT or SIGTERM stop the server: it stops accepting, closes every
// connection and exits with status 0 within a second.
#include <ringio/ringio.hpp>

#include <signal.h>

#include <array>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <system_error>

#include <fmt/format.h>

using namespace std::chrono_literals;

namespace {

struct options {
    std::string host = "127.0.0.1";
    std::uint16_t port = 0;
};

[[noreturn]] void usage(std::string_view problem) {
    fmt::print(stderr, "echo_server: {}\nusage: echo_server [--host HOST] [--port PORT]\n", problem);
    std::exit(2);
}

options parse_args(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            fmt::print("usage: echo_server [--host HOST] [--port PORT]\n");
            std::exit(0);
        }
        if (arg != "--host" && arg != "--port") usage(fmt::format("unknown argument '{}'", arg));
        if (i + 1 == argc) usage(fmt::format("{} needs a value", arg));
        std::string_view value = argv[++i];
        if (arg == "--host") {
            if (value.empty()) usage("--host needs a non-empty value");
            o.host = value;
        } else {
            auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), o.port);
            if (ec != std::errc() || end != value.data() + value.size() || value.empty())
                usage(fmt::format("--port wants a number from 0 to 65535, not '{}'", value));
        }
    }
    return o;
}

// One task per connection. The fast path: when the reader has nothing buffered, read_some has
// the kernel receive straight into `buf` in this frame, and write() copies the bytes into the
// writer's buffer, so the buffer is free for the next receive at once.
ringio::task<> echo(ringio::stream_reader reader, ringio::stream_writer writer) {
    std::array<std::byte, 16384> buf;
    try {
        while (true) {
            std::size_t n = co_await reader.read_some(buf);
            if (n == 0) break;                // EOF: the client has sent everything
            if (writer.is_closing()) break;   // the server is shutting down (close_clients)
            writer.write(std::span(buf.data(), n));
            co_await writer.drain();          // backpressure: wait while the client reads slowly
        }
    } catch (const std::system_error&) {
        // The peer reset the connection (or the server aborted it on shutdown): nothing more to
        // echo, and nothing worth logging for an echo server.
    }
    // Returning lets start_server close the connection after the buffered bytes are sent: the
    // client reads every byte it sent, then EOF.
}

// True when the server's connections have all closed within `limit`.
ringio::task<bool> closed_within(ringio::server& server, std::chrono::milliseconds limit) {
    try {
        co_await ringio::wait_for(server.wait_closed(), limit);
        co_return true;
    } catch (const ringio::timeout_error&) {
        co_return false;
    }
}

// Stops the server: no new connections, then a graceful close of the others. A client that does
// not read would keep a graceful close waiting forever, so after a grace period connections are
// reset instead; the whole takes well under a second.
ringio::task<> shut_down(ringio::server& server) {
    server.close();
    server.close_clients();
    // TRICKY: the results are named because GCC 12 miscompiles `if (co_await f()) co_return;`
    // (the coroutine never starts).
    bool closed = co_await closed_within(server, 400ms);
    if (!closed) {
        server.abort_clients();
        closed = co_await closed_within(server, 200ms);
    }
    if (!closed) fmt::print(stderr, "echo_server: {} connections still open at exit\n", server.connections());
}

ringio::task<int> amain(options opt) {
    ringio::server server = co_await ringio::start_server(echo, opt.host, opt.port);
    // The contract with tests and benchmarks: this is the first line, and it is flushed now
    // (stdout is fully buffered when it is a pipe).
    fmt::print("listening on {}\n", server.sockets().front().local_endpoint());
    std::fflush(stdout);

    int sig = co_await ringio::wait_signal({SIGINT, SIGTERM});
    fmt::print(stderr, "echo_server: {}, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    co_await shut_down(server);
    co_return 0;
}

}  // namespace

int main(int argc, char** argv) {
    options opt = parse_args(argc, argv);  // exits with status 2 on bad arguments

    // Block the signals before anything else: one that arrives before wait_signal() is called
    // then stays pending instead of killing the process. (wait_signal reads them from a signalfd.)
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    try {
        return ringio::run(amain(opt));
    } catch (const std::exception& e) {  // cannot listen (address in use, no io_uring, ...)
        fmt::print(stderr, "echo_server: {}\n", e.what());
        return 1;
    }
}
