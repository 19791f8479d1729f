// open_connection: trying several addresses, a socket that cannot be created for one family,
// and the error messages, over real loopback sockets.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>
#include <ringio/server.hpp>
#include <ringio/stream.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "child_process.hpp"
#include "helpers.hpp"
#include "net_helpers.hpp"
#include "seccomp_block.hpp"

using namespace std::chrono_literals;

namespace {

using test::contains;
using test::echo;
using test::run_bounded;
using test::thrown;

/// A TCP port on `address` that nothing listens on (bound, then closed).
std::uint16_t closed_port(const ringio::ip_address& address) {
    auto s = ringio::socket::create(address.family(), SOCK_STREAM);
    s.bind(ringio::endpoint(address, 0));
    return s.local_endpoint().port();
}

ringio::endpoint v4(std::uint16_t port) { return ringio::endpoint(ringio::ip_address::loopback_v4(), port); }
ringio::endpoint v6(std::uint16_t port) { return ringio::endpoint(ringio::ip_address::loopback_v6(), port); }

/// Sends a line through an echoing connection and checks it comes back; then closes.
ringio::task<> echo_check(std::pair<ringio::stream_reader, ringio::stream_writer> conn) {
    auto& [r, w] = conn;
    w.write("ping\n");
    CHECK(co_await r.read_line() == "ping\n");
    w.close();
    co_await w.wait_closed();
}

/// Runs `body` in a forked child (after `setup`, which may install a seccomp filter there and
/// returns false if it could not); returns the child's exit status and what it wrote (its
/// failures). Bounded: a child still running after `limit` is killed.
struct child_result {
    std::optional<int> status;
    std::string report;
    bool setup_failed = false;
};
child_result run_in_child(const std::function<bool()>& setup, const std::function<std::string()>& body,
                          std::chrono::milliseconds limit) {
    constexpr int exit_no_setup = 3;
    int out[2];
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(out[0]);
        if (!setup()) ::_exit(exit_no_setup);
        std::string report;
        try {
            report = body();
        } catch (const std::exception& e) {
            report = std::string("exception: ") + e.what();
        }
        for (std::size_t off = 0; off < report.size();) {
            ssize_t n = ::write(out[1], report.data() + off, report.size() - off);
            if (n <= 0) break;
            off += static_cast<std::size_t>(n);
        }
        ::_exit(report.empty() ? 0 : 1);  // no doctest teardown in the child
    }
    ::close(out[1]);
    child_result res;
    auto deadline = test::steady::now() + limit;
    pollfd p{out[0], POLLIN, 0};
    while (::poll(&p, 1, test::remaining_ms(deadline)) > 0) {
        char buf[4096];
        ssize_t n = ::read(out[0], buf, sizeof buf);
        if (n <= 0) break;  // EOF: the child has ended
        res.report.append(buf, static_cast<std::size_t>(n));
    }
    ::close(out[0]);
    // The pipe's EOF comes as the child exits (or at the deadline): wait for its end, bounded.
    int st = 0;
    pid_t ended = 0;
    for (int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); pidfd >= 0; pidfd = -1) {
        pollfd pp{pidfd, POLLIN, 0};
        if (::poll(&pp, 1, test::remaining_ms(deadline)) > 0) ended = ::waitpid(pid, &st, 0);
        ::close(pidfd);
    }
    if (ended != pid) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &st, 0);
        res.report += " (killed at the time limit)";
        return res;
    }
    res.status = st;
    res.setup_failed = WIFEXITED(st) && WEXITSTATUS(st) == exit_no_setup;
    return res;
}

/// How many times `needle` occurs in `haystack`.
std::size_t occurrences(std::string_view haystack, std::string_view needle) {
    std::size_t n = 0;
    for (auto at = haystack.find(needle); at != std::string_view::npos; at = haystack.find(needle, at + needle.size())) ++n;
    return n;
}

/// An address where a connect hangs: a listener with backlog 0 whose accept queue is full (one
/// connection nobody accepts), so the kernel drops further SYNs and a connect waits for the
/// SYN retries (over two minutes with the default tcp_syn_retries = 6).
struct hanging_address {
    ringio::socket listener;
    ringio::socket filler;
    ringio::endpoint where;
};
ringio::task<hanging_address> make_hanging(ringio::ip_address address) {
    hanging_address h;
    h.listener = ringio::socket::create(address.family(), SOCK_STREAM);
    h.listener.bind(ringio::endpoint(address, 0));
    h.listener.listen(0);
    h.where = h.listener.local_endpoint();
    h.filler = ringio::socket::create(address.family(), SOCK_STREAM);
    co_await h.filler.connect(h.where);
    co_return h;
}

}  // namespace

TEST_CASE("open_connection over a list of endpoints: tried in order, the first that accepts wins") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0);
        std::uint16_t refused = closed_port(ringio::ip_address::loopback_v4());
        std::vector<ringio::endpoint> eps;
        eps.push_back(v4(refused));
        eps.push_back(v4(srv.port()));
        auto conn = co_await ringio::open_connection(eps);
        CHECK(conn.second.peername() == v4(srv.port()));
        co_await echo_check(std::move(conn));

        // An empty list is the caller's mistake.
        auto e = co_await thrown<std::invalid_argument>(ringio::open_connection(std::vector<ringio::endpoint>{}));
        CHECK(e);
        srv.close();
        co_await srv.wait_closed();
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("a failed open_connection names every attempt once and the errno text once") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        const std::string refused_text = std::system_category().message(ECONNREFUSED);
        std::uint16_t port = closed_port(ringio::ip_address::loopback_v4());
        {  // one address
            auto e = co_await thrown<std::system_error>(ringio::open_connection("127.0.0.1", port));
            REQUIRE(e);
            MESSAGE("one address refused: ", std::string(e->what()));
            CHECK(e->code().value() == ECONNREFUSED);
            CHECK(std::string(e->what()) == "ringio: connect to 127.0.0.1:" + std::to_string(port) + ": " + refused_text);
        }
        {  // two addresses failing alike: both named, the errno text once
            std::uint16_t port6 = closed_port(ringio::ip_address::loopback_v6());
            std::vector<ringio::endpoint> eps;
            eps.push_back(v4(port));
            eps.push_back(ringio::endpoint(ringio::ip_address::loopback_v6(), port6));
            auto e = co_await thrown<std::system_error>(ringio::open_connection(eps));
            REQUIRE(e);
            MESSAGE("two addresses refused: ", std::string(e->what()));
            CHECK(e->code().value() == ECONNREFUSED);
            CHECK(std::string(e->what()) == fmt::format("ringio: connect to {}, {}: {}", eps[0], eps[1], refused_text));
        }
        {  // different errors: each address once, each errno text once, the last one's errno
            hanging_address hang = co_await make_hanging(ringio::ip_address::loopback_v4());
            std::vector<ringio::endpoint> eps;
            eps.push_back(v4(port));
            eps.push_back(hang.where);
            eps.push_back(v4(port));  // the same address twice is tried twice
            ringio::connect_options o;
            o.timeout = 50ms;
            auto e = co_await thrown<std::system_error>(ringio::open_connection(eps, o));
            REQUIRE(e);
            std::string what = e->what();
            MESSAGE("refused, timed out, refused: ", what);
            CHECK(e->code().value() == ECONNREFUSED);
            CHECK(occurrences(what, refused_text) == 1);
            CHECK(occurrences(what, std::system_category().message(ETIMEDOUT)) == 1);
            CHECK(occurrences(what, hang.where.to_string()) == 1);
            CHECK(occurrences(what, v4(port).to_string()) == 2);
            CHECK(what == fmt::format("ringio: connect to {}: {}; {}, {}: {}", hang.where,
                                      std::system_category().message(ETIMEDOUT), eps[0], eps[2], refused_text));
        }
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("a socket that cannot be created for one family is that address's failure; the next is tried") {
    // In a child whose seccomp filter makes socket(AF_INET6, ...) fail with EAFNOSUPPORT (as in
    // a network namespace without IPv6): [::1]:P then 127.0.0.1:P connects over IPv4.
    if (test::native_arch == 0) {
        MESSAGE("no seccomp arch constant for this machine: skipped");
        return;
    }
    auto setup = [] { return test::block_socket_family(AF_INET6, EAFNOSUPPORT); };
    auto body = []() -> std::string {
        std::string report;
        ringio::run([](std::string& out) -> ringio::task<> {
            std::size_t fds = test::open_fds();
            {
                auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0);
                std::vector<ringio::endpoint> eps;
                eps.push_back(v6(srv.port()));
                eps.push_back(v4(srv.port()));
                try {
                    auto conn = co_await ringio::open_connection(eps);
                    if (conn.second.peername() != v4(srv.port())) out += "connected to the wrong address; ";
                    conn.second.write("ping\n");
                    if (co_await conn.first.read_line() != "ping\n") out += "no echo; ";
                    conn.second.close();
                    co_await conn.second.wait_closed();
                } catch (const std::exception& e) {
                    out += std::string("open_connection failed: ") + e.what() + "; ";
                }
                // Every address failing: each one's error, the errno of the last.
                std::uint16_t refused = closed_port(ringio::ip_address::loopback_v4());
                eps.clear();
                eps.push_back(v6(refused));
                eps.push_back(v4(refused));
                try {
                    (void)co_await ringio::open_connection(eps);
                    out += "connected to a closed port; ";
                } catch (const std::system_error& e) {
                    std::string what = e.what();
                    if (e.code().value() != ECONNREFUSED) out += "errno " + std::to_string(e.code().value()) + "; ";
                    if (what != fmt::format("ringio: connect to {} (socket()): {}; {}: {}", eps[0],
                                            std::system_category().message(EAFNOSUPPORT), eps[1],
                                            std::system_category().message(ECONNREFUSED)))
                        out += "unexpected message: " + what + "; ";
                }
                srv.close();
                co_await srv.wait_closed();
            }
            if (test::open_fds() != fds) out += "fd leaked; ";
        }(report));
        return report;
    };
    child_result res = run_in_child(setup, body, 20s);
    if (res.setup_failed) {
        MESSAGE("could not install a seccomp filter here: skipped");
        return;
    }
    INFO("child: ", res.report);
    CHECK(res.report.empty());
    CHECK(test::exited_with(res.status, 0));
}
