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
    test::child_result res = test::run_in_child(setup, body, 20s);
    if (res.setup_failed) {
        MESSAGE("could not install a seccomp filter here: skipped");
        return;
    }
    INFO("child: ", res.report);
    CHECK(res.report.empty());
    CHECK(test::exited_with(res.status, 0));
}

// ---- happy eyeballs (RFC 8305) ----

TEST_CASE("happy eyeballs: an address that never answers delays the connection by about the delay only") {
    run_bounded([]() -> ringio::task<> {
        hanging_address hang = co_await make_hanging(ringio::ip_address::loopback_v4());
        auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0);
        std::vector<ringio::endpoint> eps;
        eps.push_back(hang.where);  // a connect there would wait for the SYN retries: minutes
        eps.push_back(v4(srv.port()));
        const std::size_t fds = test::open_fds();

        ringio::connect_options o;
        o.happy_eyeballs_delay = 100ms;
        auto t0 = std::chrono::steady_clock::now();
        auto conn = co_await ringio::open_connection(eps, o);
        auto took = std::chrono::steady_clock::now() - t0;
        CHECK(conn.second.peername() == v4(srv.port()));  // the second address won
        CHECK(took >= 100ms);                              // it was started after the delay
        CHECK(took < 3s);                                  // not after the first gave up
        // The losing attempt's socket is closed: open are the winner's and the server's end.
        CHECK(co_await test::eventually([&] { return srv.connections() == 1; }));
        CHECK(test::open_fds() == fds + 2);
        co_await echo_check(std::move(conn));
        CHECK(co_await test::eventually([&] { return srv.connections() == 0; }));
        CHECK(test::open_fds() == fds);

        // Without happy eyeballs the addresses are tried in turn, as before: the second only
        // once the first has failed (here: timed out).
        o = {};
        o.timeout = 200ms;
        t0 = std::chrono::steady_clock::now();
        conn = co_await ringio::open_connection(eps, o);
        took = std::chrono::steady_clock::now() - t0;
        CHECK(conn.second.peername() == v4(srv.port()));
        CHECK(took >= 200ms);
        co_await echo_check(std::move(conn));
        // ... and with no timeout, not at all while the first hangs.
        auto pending = ringio::create_task(ringio::open_connection(eps));
        co_await ringio::sleep(300ms);
        CHECK_FALSE(pending.done());
        CHECK(srv.connections() == 0);
        pending.cancel();
        CHECK(co_await thrown<ringio::cancelled_error>(std::move(pending)));
        CHECK(co_await test::eventually([&] { return srv.connections() == 0; }));
        CHECK(test::open_fds() == fds);
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("happy eyeballs: an attempt that fails starts the next at once, without waiting for the delay") {
    run_bounded([]() -> ringio::task<> {
        hanging_address hang = co_await make_hanging(ringio::ip_address::loopback_v4());
        auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0);
        const std::size_t fds = test::open_fds();
        std::vector<ringio::endpoint> eps;
        eps.push_back(v4(closed_port(ringio::ip_address::loopback_v4())));  // refused at once
        eps.push_back(v4(srv.port()));
        ringio::connect_options o;
        o.happy_eyeballs_delay = 30s;
        auto t0 = std::chrono::steady_clock::now();
        auto conn = co_await ringio::open_connection(eps, o);
        CHECK(std::chrono::steady_clock::now() - t0 < 3s);
        CHECK(conn.second.peername() == v4(srv.port()));
        co_await echo_check(std::move(conn));

        // Refused, hanging, accepting: the refusal starts the second at once, the delay the third.
        eps.insert(eps.begin() + 1, hang.where);
        o.happy_eyeballs_delay = 50ms;
        t0 = std::chrono::steady_clock::now();
        conn = co_await ringio::open_connection(eps, o);
        CHECK(std::chrono::steady_clock::now() - t0 < 3s);
        CHECK(conn.second.peername() == v4(srv.port()));
        co_await echo_check(std::move(conn));
        CHECK(co_await test::eventually([&] { return srv.connections() == 0; }));
        CHECK(test::open_fds() == fds);

        // Every attempt failing: the error names them all, as without happy eyeballs.
        std::uint16_t refused = closed_port(ringio::ip_address::loopback_v4());
        eps.clear();
        eps.push_back(v4(refused));
        eps.push_back(hang.where);
        o.timeout = 200ms;  // the hanging one gives up after this
        auto e = co_await thrown<std::system_error>(ringio::open_connection(eps, o));
        REQUIRE(e);
        CHECK(e->code().value() == ETIMEDOUT);
        CHECK(std::string(e->what()) == fmt::format("ringio: connect to {}: {}; {}: {}", eps[0],
                                                    std::system_category().message(ECONNREFUSED), eps[1],
                                                    std::system_category().message(ETIMEDOUT)));
        CHECK(test::open_fds() == fds);
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("happy eyeballs: two attempts that both connect: one wins, the other's connection is closed") {
    run_bounded([]() -> ringio::task<> {
        auto a = co_await ringio::start_server(echo, "127.0.0.1", 0);
        auto b = co_await ringio::start_server(echo, "127.0.0.1", 0);
        const std::size_t fds = test::open_fds();
        std::vector<ringio::endpoint> eps;
        eps.push_back(v4(a.port()));
        eps.push_back(v4(b.port()));
        ringio::connect_options o;
        o.happy_eyeballs_delay = 0ms;  // both start at once
        for (int i = 0; i < 20; ++i) {
            auto conn = co_await ringio::open_connection(eps, o);
            ringio::endpoint peer = conn.second.peername();
            CHECK((peer == eps[0] || peer == eps[1]));
            co_await echo_check(std::move(conn));
            // The loser's socket was closed: whichever server it reached sees EOF, and every
            // descriptor, the servers' ends included, is closed again.
            CHECK(co_await test::eventually([&] { return test::open_fds() == fds; }));
            CHECK(a.connections() + b.connections() == 0);
        }
        a.close();
        b.close();
        co_await a.wait_closed();
        co_await b.wait_closed();
    }());
}

TEST_CASE("happy eyeballs: cancelling open_connection mid-way cancels every attempt and leaks no fd") {
    run_bounded([]() -> ringio::task<> {
        hanging_address hang4 = co_await make_hanging(ringio::ip_address::loopback_v4());
        hanging_address hang6 = co_await make_hanging(ringio::ip_address::loopback_v6());
        std::vector<ringio::endpoint> eps;
        for (int i = 0; i < 2; ++i) {
            eps.push_back(hang6.where);
            eps.push_back(hang4.where);
        }
        const std::size_t fds = test::open_fds();
        ringio::connect_options o;
        o.happy_eyeballs_delay = 50ms;
        // Cancelled before it starts, with 1, 2, 3 and all 4 attempts under way.
        for (std::size_t started = 0; started <= eps.size(); ++started) {
            CAPTURE(started);
            auto h = ringio::create_task(ringio::open_connection(eps, o));
            if (started > 0) CHECK(co_await test::eventually([&] { return test::open_fds() == fds + started; }));
            h.cancel();
            CHECK(co_await thrown<ringio::cancelled_error>(std::move(h)));
            CHECK(test::open_fds() == fds);
        }
        // The same without happy eyeballs (one attempt at a time).
        auto h = ringio::create_task(ringio::open_connection(eps));
        CHECK(co_await test::eventually([&] { return test::open_fds() == fds + 1; }));
        h.cancel();
        CHECK(co_await thrown<ringio::cancelled_error>(std::move(h)));
        CHECK(test::open_fds() == fds);
    }());
}

TEST_CASE("interleave reorders the addresses by family, as asyncio") {
    run_bounded([]() -> ringio::task<> {
        // Every address refused: the error lists them in the order they were tried.
        std::vector<ringio::endpoint> eps;
        eps.push_back(v6(closed_port(ringio::ip_address::loopback_v6())));
        eps.push_back(v6(closed_port(ringio::ip_address::loopback_v6())));
        eps.push_back(v6(closed_port(ringio::ip_address::loopback_v6())));
        eps.push_back(v4(closed_port(ringio::ip_address::loopback_v4())));
        eps.push_back(v4(closed_port(ringio::ip_address::loopback_v4())));
        auto tried = [](const std::vector<ringio::endpoint>& order) {
            std::string s = "ringio: connect to ";
            for (std::size_t i = 0; i < order.size(); ++i) s += (i ? ", " : "") + order[i].to_string();
            return s + ": " + std::system_category().message(ECONNREFUSED);
        };
        struct expectation {
            std::optional<std::chrono::milliseconds> delay;
            std::optional<std::size_t> interleave;
            std::vector<std::size_t> order;
        };
        std::vector<expectation> cases;
        cases.push_back({std::nullopt, std::nullopt, {0, 1, 2, 3, 4}});  // as given
        cases.push_back({10ms, std::nullopt, {0, 3, 1, 4, 2}});        // happy eyeballs: 1
        cases.push_back({10ms, 0, {0, 1, 2, 3, 4}});
        cases.push_back({10ms, 2, {0, 1, 3, 2, 4}});
        cases.push_back({std::nullopt, 1, {0, 3, 1, 4, 2}});
        cases.push_back({std::nullopt, 9, {0, 1, 2, 3, 4}});
        for (const expectation& c : cases) {
            ringio::connect_options o;
            o.happy_eyeballs_delay = c.delay;
            o.interleave = c.interleave;
            std::vector<ringio::endpoint> order;
            for (std::size_t i : c.order) order.push_back(eps[i]);
            auto e = co_await thrown<std::system_error>(ringio::open_connection(eps, o));
            REQUIRE(e);
            CHECK(std::string(e->what()) == tried(order));
        }
    }());
}
