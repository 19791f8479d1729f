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

#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "example_support.hpp"  // the command line, the server contract, main()

namespace {

constexpr examples::program program{"udp_echo", "usage: udp_echo [--host HOST] [--port PORT] [--workers N]\n"};

struct options {
    examples::listen_options listen;  // --host, --port
    unsigned workers = 16;
};

options parse_args(int argc, char** argv) {
    options o;
    auto option = [&](std::string_view arg, std::string_view value) {
        if (!o.listen.parse(program, arg, value))  // then it is --workers
            o.workers = examples::parse_number<unsigned>(program, arg, value, 1, 1024);
    };
    examples::parse_options(program, argc, argv, {"--host", "--port", "--workers"}, option);
    return o;
}

/// The address to bind: a numeric address as it is, a name through the resolver.
ringio::task<ringio::endpoint> local_address(const examples::listen_options& o) {
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
            if (ep.is_closing()) break;  // SIGTERM arrived while this datagram came in
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
    ringio::endpoint local = co_await local_address(opt.listen);
    ringio::datagram_options dopt;
    dopt.recv_buffer_size = 4 << 20;  // absorb bursts (capped by net.core.rmem_max)
    ringio::datagram_endpoint ep = co_await ringio::create_datagram_endpoint(local, std::nullopt, dopt);
    examples::announce_listening(ep.local_endpoint(), "udp");  // the first line

    unsigned long failures = 0;
    std::vector<ringio::task_handle<>> workers;
    for (unsigned i = 0; i < opt.workers; ++i) workers.push_back(ringio::create_task(echo_worker(ep, failures)));

    co_await examples::wait_for_stop_signal(program);
    co_await ep.close();  // pending receives end with EBADF, sends in flight are cancelled
    for (auto& w : workers) co_await w;
    if (failures != 0) fmt::print(stderr, "udp_echo: {} datagrams could not be echoed\n", failures);
    co_return 0;
}

}  // namespace

int main(int argc, char** argv) {
    options opt = parse_args(argc, argv);  // exits with status 2 on bad arguments
    examples::block_stop_signals();        // before anything else, so that none is lost
    return examples::run(program, amain(opt));  // status 1 if it cannot bind (address in use, ...)
}
