// udp_echo: sends every datagram back to its sender (RFC 862 over UDP).
//
//   udp_echo [--host H] [--port P] [--workers N]   (defaults: 127.0.0.1, port 0 = any free port, 16)
//
// The first line on stdout is "listening on udp HOST:PORT", so that a test or a benchmark started
// with --port 0 learns the port. Datagrams of any size from 0 to 65507 bytes (65527 over IPv6)
// come back unchanged. SIGINT or SIGTERM stop it: the endpoint is closed and the program exits
// with status 0 within a second.
//
// N worker tasks share the one endpoint, each receiving a datagram and sending it back: while one
// waits for its send, the others receive, so one pass of the loop echoes up to N datagrams with
// one io_uring_enter (the receives themselves cost no system call: a multishot recvmsg fills a
// ring of provided buffers).
#include <ringio/datagram.hpp>
#include <ringio/ringio.hpp>

#include <signal.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>

namespace {

struct options {
    std::string host = "127.0.0.1";
    std::uint16_t port = 0;
    unsigned workers = 16;
};

constexpr std::string_view usage_text = "usage: udp_echo [--host HOST] [--port PORT] [--workers N]\n";

[[noreturn]] void usage(std::string_view problem) {
    fmt::print(stderr, "udp_echo: {}\n{}", problem, usage_text);
    std::exit(2);
}

template <class T>
T parse_number(std::string_view arg, std::string_view value, T lo, T hi) {
    T v{};
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    if (value.empty() || ec != std::errc() || end != value.data() + value.size() || v < lo || v > hi)
        usage(fmt::format("{} wants a number from {} to {}, not '{}'", arg, lo, hi, value));
    return v;
}

options parse_args(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg == "--help" || arg == "-h") {
            fmt::print("{}", usage_text);
            std::exit(0);
        }
        if (arg != "--host" && arg != "--port" && arg != "--workers") usage(fmt::format("unknown argument '{}'", arg));
        if (i + 1 == argc) usage(fmt::format("{} needs a value", arg));
        std::string_view value = argv[++i];
        if (arg == "--host") {
            if (value.empty()) usage("--host needs a non-empty value");
            o.host = value;
        } else if (arg == "--port") {
            o.port = parse_number<std::uint16_t>(arg, value, 0, 65535);
        } else {
            o.workers = parse_number<unsigned>(arg, value, 1, 1024);
        }
    }
    return o;
}

/// The address to bind: a numeric address as it is, a name through the resolver.
ringio::task<ringio::endpoint> local_address(const options& o) {
    if (auto ip = ringio::ip_address::parse(o.host)) co_return ringio::endpoint(*ip, o.port);
    ringio::resolve_options ro;
    ro.socktype = SOCK_DGRAM;
    ro.passive = true;
    std::vector<ringio::endpoint> found = co_await ringio::resolve(o.host, o.port, ro);
    co_return found.front();
}

ringio::task<> echo_worker(ringio::datagram_endpoint& ep, unsigned long& failures) {
    // Room for the largest datagram (65527 bytes of UDP payload over IPv6).
    std::vector<std::byte> buf(65536);
    while (!ep.is_closing()) {
        try {
            ringio::datagram d = co_await ep.recv_from(buf);
            if (d.truncated) continue;  // cannot happen with this buffer; never echo a cut datagram
            co_await ep.send_to(std::span(buf).first(d.size), d.sender);
        } catch (const std::system_error&) {
            // EBADF/ECANCELED: the endpoint is closing. Anything else (a send to a sender that
            // vanished, ENOBUFS under load) loses that one datagram, as UDP may; keep serving.
            if (ep.is_closing()) break;
            ++failures;
        }
    }
}

ringio::task<int> amain(options opt) {
    ringio::endpoint local = co_await local_address(opt);
    ringio::datagram_options dopt;
    dopt.recv_buffer_size = 4 << 20;  // absorb bursts (capped by net.core.rmem_max)
    ringio::datagram_endpoint ep = co_await ringio::create_datagram_endpoint(local, std::nullopt, dopt);
    // The contract with tests and benchmarks: this is the first line, and it is flushed now
    // (stdout is fully buffered when it is a pipe).
    fmt::print("listening on udp {}\n", ep.local_endpoint());
    std::fflush(stdout);

    unsigned long failures = 0;
    std::vector<ringio::task_handle<>> workers;
    for (unsigned i = 0; i < opt.workers; ++i) workers.push_back(ringio::create_task(echo_worker(ep, failures)));

    int sig = co_await ringio::wait_signal({SIGINT, SIGTERM});
    fmt::print(stderr, "udp_echo: {}, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    co_await ep.close();  // pending receives end with EBADF, sends in flight are cancelled
    for (auto& w : workers) co_await w;
    if (failures != 0) fmt::print(stderr, "udp_echo: {} datagrams could not be echoed\n", failures);
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
    } catch (const std::exception& e) {  // cannot bind (address in use, no io_uring, ...)
        fmt::print(stderr, "udp_echo: {}\n", e.what());
        return 1;
    }
}
