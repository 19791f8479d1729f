// The example programs (examples/echo_server, echo_client, chat_server), run as child processes
// and driven over TCP on 127.0.0.1: they keep the contracts of DESIGN.md section 7 (chat_server's
// own tests are in net_chat.cpp). Every wait is bounded, so a broken example fails the test
// instead of hanging it.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <poll.h>
#include <signal.h>
#include <unistd.h>

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
#include <fmt/ranges.h>

#include "child_process.hpp"
#include "example_clients.hpp"

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

#if !defined(RINGIO_ECHO_SERVER) || !defined(RINGIO_ECHO_CLIENT) || !defined(RINGIO_CHAT_SERVER)

TEST_CASE("the examples are not built (RINGIO_BUILD_EXAMPLES=OFF): skipped") {
    std::exit(77);  // CTest's skip code
}

#else

namespace {

// The child-process harness (child_process.hpp).
using test::child;
using test::describe_status;
using test::exited_with;
// Connections to the example servers (example_clients.hpp).
using test::close_connection;
using test::connect_to;
using test::connection;
using test::read_to_eof;
using test::server_process;
using test::threaded_server;

std::string pattern(std::size_t size, std::size_t seed) {
    std::string s(size, '\0');
    for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>((seed * 131 + i * 7 + i / 251) & 0xff);
    return s;
}

/// One client of an echo server: `rounds` messages of 1 to max_size bytes, each echo checked
/// byte for byte, then EOF both ways. Returns how many of the rounds + 1 checks passed.
ringio::task<std::size_t> echo_client_rounds(std::uint16_t port, std::size_t id, std::size_t rounds,
                                             std::size_t max_size) {
    connection c = co_await connect_to(port);
    std::size_t ok = 0;
    for (std::size_t i = 0; i < rounds; ++i) {
        std::string msg = pattern(1 + (id * 977 + i * 4099) % max_size, id * 100 + i);
        c.second.write(msg);
        if (co_await c.first.read_exactly(msg.size()) == msg) ++ok;
    }
    c.second.write_eof();
    if ((co_await c.first.read()).empty()) ++ok;
    co_await close_connection(c);
    co_return ok;
}

/// `clients` concurrent echo_client_rounds against port; every one must pass every check.
void check_echo_clients(std::uint16_t port, std::size_t clients, std::size_t rounds, std::size_t max_size,
                        std::chrono::seconds limit) {
    ringio::run([](std::uint16_t p, std::size_t n, std::size_t r, std::size_t m, std::chrono::seconds l) -> ringio::task<> {
        std::vector<ringio::task<std::size_t>> all;
        for (std::size_t id = 0; id < n; ++id) all.push_back(echo_client_rounds(p, id, r, m));
        std::vector<std::size_t> ok = co_await ringio::wait_for(ringio::gather(std::move(all)), l);
        REQUIRE(ok.size() == n);
        for (std::size_t id = 0; id < n; ++id) CHECK_MESSAGE(ok[id] == r + 1, "client ", id);
    }(port, clients, rounds, max_size, limit));
}

}  // namespace

// ---- bad arguments --------------------------------------------------------------------------

TEST_CASE("examples: bad arguments print a usage message on stderr and exit with status 2") {
    const std::vector<std::vector<std::string>> cases = {
        {RINGIO_ECHO_SERVER, "--port", "abc"},
        {RINGIO_ECHO_SERVER, "--port", "65536"},
        {RINGIO_ECHO_SERVER, "--bogus"},
        {RINGIO_ECHO_SERVER, "--host"},
        {RINGIO_CHAT_SERVER, "--port", "-1"},
        {RINGIO_CHAT_SERVER, "--host", ""},
        {RINGIO_ECHO_CLIENT, "--host", "127.0.0.1"},  // no --port
        {RINGIO_ECHO_CLIENT, "--port", "1", "--count", "0"},
        {RINGIO_ECHO_CLIENT, "--port", "1", "--size", "10"},  // --size without --count
    };
    for (const auto& args : cases) {
        child proc(args);
        std::optional<int> status = proc.wait(10s);
        INFO(fmt::format("{}", fmt::join(args, " ")));
        CHECK_MESSAGE(exited_with(status, 2), describe_status(status));
        CHECK(proc.stderr_text().find("usage:") != std::string::npos);
    }
}

// ---- echo_server ----------------------------------------------------------------------------

TEST_CASE("echo_server: echoes 0 bytes, 1 byte and 1 MiB exactly") {
    server_process srv(RINGIO_ECHO_SERVER);
    ringio::run([](std::uint16_t port) -> ringio::task<> {
        {  // 0 bytes: EOF at once is answered with EOF
            connection c = co_await connect_to(port);
            c.second.write_eof();
            CHECK(co_await read_to_eof(c.first) == "");
            co_await close_connection(c);
        }
        {  // 1 byte
            connection c = co_await connect_to(port);
            c.second.write("x");
            CHECK(co_await ringio::wait_for(c.first.read_exactly(1), 5s) == "x");
            c.second.write_eof();
            CHECK(co_await read_to_eof(c.first) == "");
            co_await close_connection(c);
        }
        {  // 1 MiB: write() only buffers, so the echo is read while it is being sent
            connection c = co_await connect_to(port);
            std::string big = pattern(1 << 20, 1);
            c.second.write(big);
            CHECK(co_await ringio::wait_for(c.first.read_exactly(big.size()), 10s) == big);
            c.second.write_eof();
            CHECK(co_await read_to_eof(c.first) == "");  // not one byte more
            co_await close_connection(c);
        }
    }(srv.port));
    srv.stop_with(SIGTERM);
}

TEST_CASE("echo_server: after the client's EOF it finishes sending, then closes (half-close)") {
    server_process srv(RINGIO_ECHO_SERVER);
    ringio::run([](std::uint16_t port) -> ringio::task<> {
        connection c = co_await connect_to(port);
        std::string data = pattern(3 << 20, 2);  // more than the socket buffers hold at once
        c.second.write(data);
        c.second.write_eof();  // FIN right after the data, before reading anything back
        std::string back = co_await read_to_eof(c.first);
        CHECK(back.size() == data.size());
        CHECK(back == data);
        co_await close_connection(c);
    }(srv.port));
    srv.stop_with(SIGTERM);
}

TEST_CASE("echo_server: 50 concurrent clients") {
    server_process srv(RINGIO_ECHO_SERVER);
    check_echo_clients(srv.port, 50, 20, 40000, 30s);
    srv.stop_with(SIGTERM);
}

TEST_CASE("echo_server: SIGTERM closes idle and stuck connections and exits with status 0 within a second") {
    server_process srv(RINGIO_ECHO_SERVER);
    ringio::run([](server_process& s) -> ringio::task<> {
        connection idle = co_await connect_to(s.port);
        connection stuck = co_await connect_to(s.port);
        // `stuck` sends a lot and never reads: the server's echo of it stalls in drain(), and a
        // graceful close alone would never finish.
        stuck.second.write(pattern(16 << 20, 3));
        idle.second.write("ping");
        CHECK(co_await ringio::wait_for(idle.first.read_exactly(4), 5s) == "ping");
        co_await ringio::sleep(50ms);  // let the stuck connection fill the buffers (not a sync)

        auto start = steady::now();
        s.proc.signal(SIGTERM);
        std::optional<int> status = co_await ringio::to_thread([&] { return s.proc.wait(1s); });
        auto took = steady::now() - start;
        INFO("stderr: ", s.proc.stderr_text());
        CHECK_MESSAGE(exited_with(status, 0), describe_status(status));
        CHECK(took < 1s);
        // The idle client was closed gracefully: EOF, no reset.
        CHECK(co_await read_to_eof(idle.first, 5s) == "");
        idle.second.abort();
        stuck.second.abort();
    }(srv));
}

TEST_CASE("echo_server: SIGINT with no client exits with status 0 within a second") {
    server_process srv(RINGIO_ECHO_SERVER);
    srv.stop_with(SIGINT);
}

// ---- echo_client ----------------------------------------------------------------------------

TEST_CASE("echo_client: --count 100 against echo_server verifies every byte and prints latency statistics") {
    server_process srv(RINGIO_ECHO_SERVER);
    child client({RINGIO_ECHO_CLIENT, "--host", "127.0.0.1", "--port", std::to_string(srv.port), "--count", "100",
                  "--size", "1000"});
    std::optional<std::string> out = client.read_all(30s);
    std::optional<int> status = client.wait(5s);
    INFO("stderr: ", client.stderr_text());
    CHECK_MESSAGE(exited_with(status, 0), describe_status(status));
    REQUIRE(out.has_value());
    INFO("stdout: ", *out);
    CHECK(out->find("100 messages of 1000 bytes echoed and verified") != std::string::npos);
    for (std::string_view word : {"msgs/s", "min ", "median ", "p99 ", "max "})
        CHECK_MESSAGE(out->find(word) != std::string::npos, word);
    srv.stop_with(SIGTERM);
}

TEST_CASE("echo_client: lines from stdin come back with their round-trip time") {
    server_process srv(RINGIO_ECHO_SERVER);
    child client({RINGIO_ECHO_CLIENT, "--port", std::to_string(srv.port)}, "hello\nworld\nno newline at the end");
    std::optional<std::string> out = client.read_all(30s);
    std::optional<int> status = client.wait(5s);
    INFO("stderr: ", client.stderr_text());
    CHECK_MESSAGE(exited_with(status, 0), describe_status(status));
    REQUIRE(out.has_value());
    INFO("stdout: ", *out);
    CHECK(out->starts_with("hello  ("));
    CHECK(out->find("\nworld  (") != std::string::npos);
    CHECK(out->find("\nno newline at the end  (") != std::string::npos);
    CHECK(out->find(" us)\n") != std::string::npos);
    srv.stop_with(SIGTERM);
}

TEST_CASE("echo_client: a refused connection exits with status 1 and says so") {
    // A port nobody listens on: bind one, note it, close it.
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    ringio::endpoint any(ringio::ip_address::loopback_v4(), 0);
    REQUIRE(::bind(fd, any.data(), any.size()) == 0);
    ringio::endpoint bound;
    socklen_t len = ringio::endpoint::capacity();
    REQUIRE(::getsockname(fd, bound.data(), &len) == 0);
    bound.resize(len);
    ::close(fd);

    child client({RINGIO_ECHO_CLIENT, "--port", std::to_string(bound.port()), "--count", "1"});
    std::optional<int> status = client.wait(10s);
    CHECK_MESSAGE(exited_with(status, 1), describe_status(status));
    std::string err = client.stderr_text();
    INFO("stderr: ", err);
    CHECK(err.find("cannot connect to 127.0.0.1:") != std::string::npos);
    CHECK(err.find("refused") != std::string::npos);
}

TEST_CASE("echo_client: a corrupted echo exits with status 1 and names the byte") {
    // An echo server (in this process) that flips one byte of the 3rd message.
    ringio::run([]() -> ringio::task<> {
        auto corrupt = [](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
            std::size_t total = 0;
            while (true) {
                std::string data = co_await r.read(65536);
                if (data.empty()) break;
                for (std::size_t i = 0; i < data.size(); ++i)
                    if (total + i == 2 * 100 + 17) data[i] = static_cast<char>(data[i] ^ 0x40);
                total += data.size();
                w.write(data);
                co_await w.drain();
            }
        };
        ringio::server srv = co_await ringio::start_server(corrupt, "127.0.0.1", 0);
        child client({RINGIO_ECHO_CLIENT, "--port", std::to_string(srv.port()), "--count", "10", "--size", "100"});
        std::optional<int> status = co_await ringio::to_thread([&] { return client.wait(10s); });
        CHECK_MESSAGE(exited_with(status, 1), describe_status(status));
        std::string err = client.stderr_text();
        INFO("stderr: ", err);
        CHECK(err.find("message 2: byte 17 came back as") != std::string::npos);
        srv.close();
        srv.close_clients();
        co_await ringio::wait_for(srv.wait_closed(), 5s);
    }());
}

// ---- --threads N: several loops behind one port ----------------------------------------------

TEST_CASE("examples: --threads wants a number from 1") {
    for (const char* path : {RINGIO_ECHO_SERVER, RINGIO_CHAT_SERVER})
        for (const char* bad : {"0", "x", ""}) {
            child proc({path, "--threads", bad});
            std::optional<int> status = proc.wait(10s);
            INFO(path, " --threads '", bad, "'");
            CHECK_MESSAGE(exited_with(status, 2), describe_status(status));
            CHECK(proc.stderr_text().find("usage:") != std::string::npos);
        }
}

TEST_CASE("echo_server --threads 2: 64 concurrent clients, every byte checked, both loops serve") {
    threaded_server srv(RINGIO_ECHO_SERVER, 2);
    check_echo_clients(srv.port, 64, 10, 20000, 60s);
    test::stop_with(srv.proc, SIGTERM);
    // SO_REUSEPORT hashes each connection's addresses and ports to a listener: with 64
    // connections both loops get some (all on one would be a 1 in 2^63 chance).
    std::vector<std::size_t> per_loop = srv.connections_per_loop();
    REQUIRE(per_loop.size() == 2);
    CHECK(per_loop[0] + per_loop[1] == 64);
    CHECK(per_loop[0] > 0);
    CHECK(per_loop[1] > 0);
}

TEST_CASE("echo_server --threads 2: SIGINT with open and stuck connections exits with status 0 within a second") {
    threaded_server srv(RINGIO_ECHO_SERVER, 2);
    ringio::run([](threaded_server& s) -> ringio::task<> {
        std::vector<connection> cs;
        for (int i = 0; i < 8; ++i) cs.push_back(co_await connect_to(s.port));
        for (auto& c : cs) {
            c.second.write("ping");
            CHECK(co_await ringio::wait_for(c.first.read_exactly(4), 5s) == "ping");
        }
        cs[0].second.write(pattern(16 << 20, 5));  // never read back: stalls that loop's drain()
        auto start = steady::now();
        s.proc.signal(SIGINT);
        std::optional<int> status = co_await ringio::to_thread([&] { return s.proc.wait(1s); });
        INFO("stderr: ", s.proc.stderr_text());
        CHECK_MESSAGE(exited_with(status, 0), describe_status(status));
        CHECK(steady::now() - start < 1s);
        for (auto& c : cs) c.second.abort();
    }(srv));
}

#endif
