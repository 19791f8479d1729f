// The UDP examples (examples/udp_echo and udp_ping), run as child processes on 127.0.0.1: they
// keep the contracts of DESIGN.md section 7. Every wait is bounded, so a broken example fails the
// test instead of hanging it.
#include <doctest/doctest.h>

#include <ringio/datagram.hpp>
#include <ringio/ringio.hpp>

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "child_process.hpp"

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

#if !defined(RINGIO_UDP_ECHO) || !defined(RINGIO_UDP_PING)

TEST_CASE("the examples are not built (RINGIO_BUILD_EXAMPLES=OFF): skipped") {
    std::exit(77);  // CTest's skip code
}

#else

namespace {

// The child-process harness (child_process.hpp).
using test::child;
using test::describe_status;
using test::exited_with;

/// udp_echo started with --port 0, and the port it announced on its first line.
struct udp_echo_process {
    child proc;
    std::uint16_t port = 0;

    explicit udp_echo_process(std::vector<std::string> extra = {}) : proc(args(std::move(extra))) {
        port = test::read_announced_port(proc, "listening on udp 127.0.0.1:");
    }

    static std::vector<std::string> args(std::vector<std::string> extra) {
        std::vector<std::string> a{RINGIO_UDP_ECHO, "--host", "127.0.0.1", "--port", "0"};
        a.insert(a.end(), extra.begin(), extra.end());
        return a;
    }

    [[nodiscard]] ringio::endpoint address() const { return ringio::endpoint(ringio::ip_address::loopback_v4(), port); }

    /// Sends `sig` and checks that the server exits with status 0 within a second.
    void stop_with(int sig) { test::stop_with(proc, sig); }
};

std::vector<std::byte> pattern(std::size_t size, std::size_t seed) {
    std::vector<std::byte> v(size);
    for (std::size_t i = 0; i < size; ++i) v[i] = static_cast<std::byte>((seed * 131 + i * 7 + i / 251) & 0xff);
    return v;
}

/// Sends `data` from `ep` to `to` and waits for the reply (resending up to 5 times, 1 s apart:
/// UDP may lose a datagram, though loopback should not). The reply, or nullopt.
ringio::task<std::optional<std::vector<std::byte>>> round_trip(ringio::datagram_endpoint& ep, ringio::endpoint to,
                                                               std::vector<std::byte> data) {
    std::vector<std::byte> buf(65536);
    for (int attempt = 0; attempt < 5; ++attempt) {
        co_await ep.send_to(data, to);
        try {
            ringio::datagram d = co_await ringio::wait_for(ep.recv_from(buf), 1s);
            CHECK_FALSE(d.truncated);
            CHECK(d.sender == to);
            buf.resize(d.size);
            co_return buf;
        } catch (const ringio::timeout_error&) {
        }
    }
    co_return std::nullopt;
}

struct ping_result {
    std::optional<int> status;  // wait status; nullopt if it did not end in time
    std::string out;            // its stdout
};

/// Runs udp_ping with `args` to completion (bounded).
ping_result run_ping(std::vector<std::string> args, milliseconds limit = 30s) {
    args.insert(args.begin(), RINGIO_UDP_PING);
    child ping(std::move(args));
    std::optional<std::string> out = ping.read_all(limit);
    std::optional<int> status = ping.wait(limit);
    INFO("udp_ping stderr: ", ping.stderr_text());
    return {status, out.value_or("<no EOF on stdout>")};
}

}  // namespace

TEST_CASE("udp_echo announces its port and echoes datagrams of 0, 1, 1472 and 65507 bytes exactly") {
    udp_echo_process server;
    ringio::run([](ringio::endpoint to) -> ringio::task<> {
        auto ep = co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("127.0.0.1:0"), std::nullopt);
        const std::size_t sizes[] = {0, 1, 1472, 65507};
        std::size_t seed = 0;
        for (std::size_t n : sizes) {
            CAPTURE(n);
            auto data = pattern(n, ++seed);
            auto back = co_await round_trip(ep, to, data);
            REQUIRE(back.has_value());
            CHECK(back->size() == n);
            CHECK(*back == data);
        }
    }(server.address()));
    server.stop_with(SIGTERM);
}

TEST_CASE("udp_echo answers each of several clients, concurrently, to its own address") {
    udp_echo_process server;
    ringio::run([](ringio::endpoint to) -> ringio::task<> {
        constexpr int clients = 8, per_client = 50;
        std::vector<ringio::datagram_endpoint> eps;
        for (int i = 0; i < clients; ++i)
            eps.push_back(co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("127.0.0.1:0"), std::nullopt));
        std::vector<ringio::task<int>> runs;
        for (int i = 0; i < clients; ++i) {
            runs.push_back([](ringio::datagram_endpoint& ep, ringio::endpoint dst, int id) -> ringio::task<int> {
                int ok = 0;
                for (int k = 0; k < per_client; ++k) {
                    auto data = pattern(static_cast<std::size_t>(100 + k * 10), static_cast<std::size_t>(id * 1000 + k));
                    auto back = co_await round_trip(ep, dst, data);
                    if (back && *back == data) ++ok;
                }
                co_return ok;
            }(eps[static_cast<std::size_t>(i)], to, i));
        }
        std::vector<int> ok = co_await ringio::wait_for(ringio::gather(std::move(runs)), 60s);
        for (int n : ok) CHECK(n == per_client);
    }(server.address()));
    server.stop_with(SIGINT);
}

TEST_CASE("udp_ping --count 200 against udp_echo: exit 0, 0% loss, round-trip figures") {
    udp_echo_process server;
    ping_result r = run_ping({"--host", "127.0.0.1", "--port", std::to_string(server.port), "--count", "200"});
    INFO("udp_ping output:\n", r.out);
    CHECK_MESSAGE(exited_with(r.status, 0), describe_status(r.status));
    CHECK(r.out.find("200 sent, 200 received, 0% loss") != std::string::npos);
    CHECK(r.out.find("rtt min/median/p99/max = ") != std::string::npos);
    // The other options: big datagrams on a fixed schedule.
    ping_result r2 = run_ping({"--host", "127.0.0.1", "--port", std::to_string(server.port), "--count", "20",
                                     "--size", "65507", "--interval-ms", "2", "--timeout-ms", "2000"});
    INFO("udp_ping output:\n", r2.out);
    CHECK_MESSAGE(exited_with(r2.status, 0), describe_status(r2.status));
    CHECK(r2.out.find("20 datagrams of 65507 bytes") != std::string::npos);
    CHECK(r2.out.find(", 0% loss") != std::string::npos);
    server.stop_with(SIGTERM);
}

TEST_CASE("udp_ping reports 100% loss and exits 1 when nothing answers") {
    // A port with nobody on it: bind one, note it, close it.
    std::uint16_t port = ringio::run([]() -> ringio::task<std::uint16_t> {
        auto ep = co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("127.0.0.1:0"), std::nullopt);
        std::uint16_t p = ep.local_endpoint().port();
        co_await ep.close();
        co_return p;
    }());
    ping_result r = run_ping({"--host", "127.0.0.1", "--port", std::to_string(port), "--count", "3",
                              "--timeout-ms", "200"});
    INFO("udp_ping output:\n", r.out);
    CHECK_MESSAGE(exited_with(r.status, 1), describe_status(r.status));
    CHECK(r.out.find("3 sent, 0 received, 100% loss") != std::string::npos);
}

TEST_CASE("udp_echo and udp_ping: usage errors exit with status 2") {
    for (std::vector<std::string> args : {std::vector<std::string>{RINGIO_UDP_ECHO, "--port", "70000"},
                                          std::vector<std::string>{RINGIO_UDP_ECHO, "--bogus"},
                                          std::vector<std::string>{RINGIO_UDP_PING, "--port", "7"},
                                          std::vector<std::string>{RINGIO_UDP_PING, "--host", "127.0.0.1"},
                                          std::vector<std::string>{RINGIO_UDP_PING, "--host", "127.0.0.1", "--port",
                                                                   "7", "--size", "65508"},
                                          std::vector<std::string>{RINGIO_UDP_PING, "--host", "127.0.0.1", "--port",
                                                                   "7", "--count", "x"}}) {
        CAPTURE(args.back());
        child c(args);
        std::optional<int> status = c.wait(5s);
        CHECK_MESSAGE(exited_with(status, 2), describe_status(status));
        CHECK(c.stderr_text().find("usage:") != std::string::npos);
    }
}

TEST_CASE("udp_echo stops with exit status 0 within a second on SIGINT and on SIGTERM, even while busy") {
    for (int sig : {SIGINT, SIGTERM}) {
        CAPTURE(sig);
        udp_echo_process server;
        // Keep it busy: a ping with datagrams in flight while the signal arrives.
        child ping({RINGIO_UDP_PING, "--host", "127.0.0.1", "--port", std::to_string(server.port), "--count",
                    "100000", "--interval-ms", "1", "--timeout-ms", "200"});
        REQUIRE(ping.read_line(10s).has_value());  // "UDP PING ..." : it runs
        ::poll(nullptr, 0, 50);
        server.stop_with(sig);
    }
}

#endif
