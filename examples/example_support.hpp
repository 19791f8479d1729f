// example_support.hpp: what the example programs have in common, kept here so that each example
// shows only what it is about. Header-only; used by the programs in this directory, not part of
// ringio's API.
//
//   - the command line: "--name value" pairs, the same error messages everywhere, a usage error
//     exits with status 2 (with "usage: ..." on stderr);
//   - the server contract: signals blocked from the start, "listening on ..." as the first line on
//     stdout (flushed), SIGINT or SIGTERM end the program with status 0;
//   - --threads N for TCP servers that take it: N loops (ringio::run_threads), each with its own
//     listening socket on the one port (SO_REUSEPORT), stopped together;
//   - main(): runs the async main, whose result is the exit status; an exception is printed on
//     stderr and gives status 1; when no loop can be set up here (RINGIO_BACKEND=io_uring where
//     io_uring is blocked; unforced, the loop uses epoll), the reason is printed on stderr and the
//     status is 77 (exit_no_io_uring).
#pragma once

#include <ringio/ringio.hpp>

#include <signal.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace examples {

using namespace std::chrono_literals;

/// Who is talking: the name prefixes every message on stderr; `usage` ends with "\n".
struct program {
    std::string_view name;   // "echo_server"
    std::string_view usage;  // "usage: echo_server [--host HOST] [--port PORT]\n"
    bool help = true;        // --help and -h print the usage on stdout and exit with status 0
    bool threads = false;    // a TCP server that takes --threads N (tcp_server_main)
};

/// Reports a bad command line and exits with status 2.
[[noreturn]] inline void usage_error(const program& p, std::string_view problem) {
    fmt::print(stderr, "{}: {}\n{}", p.name, problem, p.usage);
    std::exit(2);
}

/// The number `value` of option `arg`, from `lo` to `hi`; anything else is a usage error.
template <class T>
T parse_number(const program& p, std::string_view arg, std::string_view value, T lo, T hi) {
    T v{};
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    if (value.empty() || ec != std::errc() || end != value.data() + value.size() || v < lo || v > hi)
        usage_error(p, fmt::format("{} wants a number from {} to {}, not '{}'", arg, lo, hi, value));
    return v;
}

/// The value of --host: a name or an address, not empty.
inline std::string parse_host(const program& p, std::string_view value) {
    if (value.empty()) usage_error(p, "--host needs a non-empty value");
    return std::string(value);
}

/// Walks the command line, made of "--name value" pairs with names from `known`, calling
/// on_option(name, value) for each pair in order.
template <class OnOption>
void parse_options(const program& p, int argc, char** argv, std::initializer_list<std::string_view> known,
                   OnOption on_option) {
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (p.help && (arg == "--help" || arg == "-h")) {
            fmt::print("{}", p.usage);
            std::exit(0);
        }
        if (std::find(known.begin(), known.end(), arg) == known.end())
            usage_error(p, fmt::format("unknown argument '{}'", arg));
        if (i + 1 == argc) usage_error(p, fmt::format("{} needs a value", arg));
        on_option(arg, std::string_view(argv[++i]));
    }
}

/// Where a server listens: --host and --port (and --threads, for servers that take it).
struct listen_options {
    std::string host = "127.0.0.1";
    std::uint16_t port = 0;  // any free port
    std::size_t threads = 1;  // event loops, one per thread

    /// Takes the value of --host, --port or --threads (false for any other option).
    bool parse(const program& p, std::string_view arg, std::string_view value) {
        if (arg == "--host")
            host = parse_host(p, value);
        else if (arg == "--port")
            port = parse_number<std::uint16_t>(p, arg, value, 0, 65535);
        else if (arg == "--threads" && p.threads)
            threads = parse_number<std::size_t>(p, arg, value, 1, 1024);
        else
            return false;
        return true;
    }
};

/// The command line of a server that takes --host and --port only (and --threads when
/// p.threads is set).
inline listen_options parse_listen_options(const program& p, int argc, char** argv) {
    listen_options o;
    auto take = [&](std::string_view arg, std::string_view value) { o.parse(p, arg, value); };
    if (p.threads)
        parse_options(p, argc, argv, {"--host", "--port", "--threads"}, take);
    else
        parse_options(p, argc, argv, {"--host", "--port"}, take);
    return o;
}

/// Blocks SIGINT and SIGTERM in the calling thread. A server calls it first thing in main(), so
/// that a signal arriving before wait_signal() is called stays pending instead of killing the
/// process. (wait_signal reads them from a signalfd.)
inline void block_stop_signals() {
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
}

/// Prints "listening on [PROTOCOL ]HOST:PORT". The contract with tests and benchmarks: this is
/// the first line on stdout, and it is flushed now (stdout is fully buffered when it is a pipe),
/// so that whoever started the server with --port 0 learns the port.
inline void announce_listening(const ringio::endpoint& where, std::string_view protocol = {}) {
    if (protocol.empty())
        fmt::print("listening on {}\n", where);
    else
        fmt::print("listening on {} {}\n", protocol, where);
    std::fflush(stdout);
}

/// Waits for SIGINT or SIGTERM (blocked by block_stop_signals()) and says which on stderr.
inline ringio::task<> wait_for_stop_signal(const program& p) {
    int sig = co_await ringio::wait_signal({SIGINT, SIGTERM});
    fmt::print(stderr, "{}: {}, shutting down\n", p.name, sig == SIGINT ? "SIGINT" : "SIGTERM");
}

/// True when the server's connections have all closed within `limit`.
inline ringio::task<bool> closed_within(ringio::server& server, std::chrono::milliseconds limit) {
    try {
        co_await ringio::wait_for(server.wait_closed(), limit);
        co_return true;
    } catch (const ringio::timeout_error&) {
        co_return false;
    }
}

/// The end of a server's shutdown, once it has stopped accepting and asked every connection to
/// close gracefully: a client that does not read would keep a graceful close waiting forever, so
/// connections still open after a grace period are reset instead; the whole takes well under a
/// second.
inline ringio::task<> finish_closing(const program& p, ringio::server& server) {
    // TRICKY: the results are named because GCC 12 miscompiles `if (co_await f()) co_return;`
    // (the coroutine never starts).
    bool closed = co_await closed_within(server, 400ms);
    if (!closed) {
        server.abort_clients();
        closed = co_await closed_within(server, 200ms);
    }
    if (!closed) fmt::print(stderr, "{}: {} connections still open at exit\n", p.name, server.connections());
}

/// The life of a TCP server: ringio::start_server() calls `handler` for each connection; the
/// listening line; then SIGINT or SIGTERM, and shut_down(server); exit status 0.
template <class Handler>
ringio::task<int> serve(const program& p, listen_options opt, Handler handler,
                        ringio::task<> (*shut_down)(ringio::server&)) {
    ringio::server server = co_await ringio::start_server(handler, opt.host, opt.port);
    announce_listening(server.sockets().front().local_endpoint());  // the first line
    co_await wait_for_stop_signal(p);
    co_await shut_down(server);
    co_return 0;
}

/// What one loop of a --threads server keeps. Touched only on that loop's thread, except
/// `accepted`, read after every loop has ended.
struct loop_server {
    ringio::server server;
    ringio::event stop;        // set (by loop 0, through call_on) when the server is to stop
    std::size_t accepted = 0;  // connections this loop's listener accepted
};

/// `handler`, counting the connections of `where`.
template <class Handler>
ringio::connection_handler counting(Handler& handler, loop_server& where) {
    return [h = &handler, w = &where](ringio::stream_reader r, ringio::stream_writer wr) {
        ++w->accepted;
        return (*h)(std::move(r), std::move(wr));
    };
}

/// Loop i of a --threads server. Loop 0 listens first (with --port 0 it learns the port), then
/// has every other loop listen on the same port, each with a socket of its own (SO_REUSEPORT:
/// the kernel spreads incoming connections over them by a hash of the addresses and ports), then
/// prints the listening line. On SIGINT or SIGTERM it tells the others to stop and every loop
/// shuts its own server down at the same time.
template <class Handler>
ringio::task<> serve_loop(const program& p, const listen_options& opt, Handler& handler,
                          ringio::task<> (*shut_down)(ringio::server&), std::vector<loop_server>& loops,
                          std::size_t i) {
    ringio::loop_group& group = *ringio::loop_group::current();
    loop_server& me = loops[i];
    ringio::server_options so;
    so.reuse_port = true;
    if (i == 0) {
        me.server = co_await ringio::start_server(counting(handler, me), opt.host, opt.port, so);
        const std::uint16_t port = me.server.port();
        for (std::size_t j = 1; j < loops.size(); ++j) {
            // Runs as a Task on loop j, so that the server and its connections belong to loop j.
            auto listen_there = [o = &opt, h = &handler, there = &loops[j], so, port]() -> ringio::task<> {
                there->server = co_await ringio::start_server(counting(*h, *there), o->host, port, so);
            };
            co_await ringio::call_on(group.loop(j), std::move(listen_there));  // rethrows if it cannot listen
        }
        announce_listening(me.server.sockets().front().local_endpoint());  // the first line, once
        co_await wait_for_stop_signal(p);
        for (std::size_t j = 1; j < loops.size(); ++j) {
            auto stop_there = [there = &loops[j]] { there->stop.set(); };
            co_await ringio::call_on(group.loop(j), std::move(stop_there));
        }
    } else {
        co_await me.stop.wait();
    }
    co_await shut_down(me.server);
}

/// The exit status of an example whose loop cannot be set up: RINGIO_BACKEND=io_uring where
/// io_uring is unavailable (a kernel without it, a container's seccomp profile,
/// kernel.io_uring_disabled). 77, the tests' "skipped". Unforced, the loop uses epoll there.
inline constexpr int exit_no_io_uring = 77;

/// Runs `main_task` on a new event loop: its result is the exit status. When the loop cannot be
/// set up, ringio's message (which names the cause and the fix) goes to stderr and the status is
/// exit_no_io_uring. Another exception that ends it (cannot listen, unknown host, ...) is printed
/// on stderr and gives status 1.
inline int run(const program& p, ringio::task<int> main_task) {
    std::optional<ringio::event_loop> loop;
    try {
        loop.emplace();
    } catch (const std::system_error& e) {
        fmt::print(stderr, "{}: {}\n", p.name, e.what());
        return exit_no_io_uring;
    }
    try {
        return loop->run_until_complete(std::move(main_task));
    } catch (const std::exception& e) {
        fmt::print(stderr, "{}: {}\n", p.name, e.what());
        return 1;
    }
}

/// The life of a TCP server with --threads N (N > 1): serve_loop() on each of N loops, then
/// "NAME: connections per loop: A B ..." on stderr (it shows how SO_REUSEPORT spread them).
template <class Handler>
int serve_threads(const program& p, const listen_options& opt, Handler handler,
                  ringio::task<> (*shut_down)(ringio::server&)) {
    try {  // as run(): where no loop can be set up, say why and exit 77, before any thread starts
        ringio::event_loop probe;
    } catch (const std::system_error& e) {
        fmt::print(stderr, "{}: {}\n", p.name, e.what());
        return exit_no_io_uring;
    }
    std::vector<loop_server> loops(opt.threads);
    try {
        ringio::run_threads(opt.threads, [&](std::size_t i) { return serve_loop(p, opt, handler, shut_down, loops, i); });
    } catch (const std::exception& e) {
        fmt::print(stderr, "{}: {}\n", p.name, e.what());
        return 1;
    }
    std::vector<std::size_t> accepted;
    for (const loop_server& l : loops) accepted.push_back(l.accepted);
    fmt::print(stderr, "{}: connections per loop: {}\n", p.name, fmt::join(accepted, " "));
    return 0;
}

/// main() of a TCP server that takes --host and --port (and --threads N when p.threads is set):
/// serve() (or serve_threads() for N > 1) until SIGINT or SIGTERM.
template <class Handler>
int tcp_server_main(const program& p, int argc, char** argv, Handler handler,
                    ringio::task<> (*shut_down)(ringio::server&)) {
    listen_options opt = parse_listen_options(p, argc, argv);  // exits with status 2 on bad arguments
    // Before anything else, so that none is lost; also before the loop threads start, which
    // inherit the mask: only loop 0 reads the signals (wait_signal), no thread is killed by them.
    block_stop_signals();
    if (opt.threads > 1) return serve_threads(p, opt, handler, shut_down);
    return run(p, serve(p, opt, handler, shut_down));  // status 1 if it cannot listen (address in use, ...)
}

}  // namespace examples
