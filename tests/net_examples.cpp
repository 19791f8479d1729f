// The example programs (examples/echo_server, echo_client, chat_server), run as child processes
// and driven over TCP on 127.0.0.1: they keep the contracts of DESIGN.md section 7. Every wait
// is bounded, so a broken example fails the test instead of hanging it.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "child_process.hpp"

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

/// An example server started with --port 0, and the port it announced on its first line.
struct server_process {
    child proc;
    std::uint16_t port = 0;

    explicit server_process(const char* path) : proc({path, "--host", "127.0.0.1", "--port", "0"}) {
        port = test::read_announced_port(proc, "listening on 127.0.0.1:");
    }

    /// Sends `sig` and checks that the server exits with status 0 within a second.
    void stop_with(int sig) { test::stop_with(proc, sig); }
};

using connection = std::pair<ringio::stream_reader, ringio::stream_writer>;

ringio::task<connection> connect_to(std::uint16_t port) {
    co_return co_await ringio::wait_for(ringio::open_connection("127.0.0.1", port), 5s);
}

/// Everything until EOF (bounded in time).
ringio::task<std::string> read_to_eof(ringio::stream_reader& r, std::chrono::seconds limit = 10s) {
    co_return co_await ringio::wait_for(
        [](ringio::stream_reader& rd) -> ringio::task<std::string> {
            std::string all;
            while (true) {
                std::string chunk = co_await rd.read(65536);
                if (chunk.empty()) co_return all;
                all += chunk;
            }
        }(r),
        limit);
}

std::string pattern(std::size_t size, std::size_t seed) {
    std::string s(size, '\0');
    for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>((seed * 131 + i * 7 + i / 251) & 0xff);
    return s;
}

/// Printable text without newlines, different for each seed.
std::string letters(std::size_t size, std::size_t seed) {
    std::string s(size, 'a');
    for (std::size_t i = 0; i < size; ++i) s[i] = static_cast<char>('a' + (seed * 7 + i * 13 + i / 26) % 26);
    return s;
}

ringio::task<std::string> read_line_within(ringio::stream_reader& r, std::chrono::milliseconds limit = 5s) {
    co_return co_await ringio::wait_for(r.read_line(), limit);
}

ringio::task<> close_connection(connection& c) {
    c.second.close();
    co_await ringio::wait_for(c.second.wait_closed(), 5s);
}

std::string name_of(const connection& c) { return fmt::format("{}", c.second.sockname()); }

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

// ---- chat_server ----------------------------------------------------------------------------

namespace {

/// Connects n clients, then makes sure the server has registered them all: connections are
/// accepted and their handlers started in order, so once the others have received a line from
/// the last one, every handler is in the room.
ringio::task<std::vector<connection>> join_chat(std::uint16_t port, std::size_t n) {
    std::vector<connection> cs;
    for (std::size_t i = 0; i < n; ++i) cs.push_back(co_await connect_to(port));
    cs.back().second.write("sync\n");
    std::string expected = name_of(cs.back()) + ": sync\n";
    for (std::size_t i = 0; i + 1 < n; ++i) CHECK(co_await read_line_within(cs[i].first) == expected);
    co_return cs;
}

}  // namespace

TEST_CASE("chat_server: a line goes to every other client as 'ip:port: text', then under its /nick") {
    server_process srv(RINGIO_CHAT_SERVER);
    ringio::run([](std::uint16_t port) -> ringio::task<> {
        std::vector<connection> cs = co_await join_chat(port, 3);
        connection& a = cs[0];
        connection& b = cs[1];
        connection& c = cs[2];
        std::string name_a = name_of(a);
        CHECK(name_a.starts_with("127.0.0.1:"));

        a.second.write("hello from a\n");
        CHECK(co_await read_line_within(b.first) == name_a + ": hello from a\n");
        CHECK(co_await read_line_within(c.first) == name_a + ": hello from a\n");
        // A did not get its own line: the next line A reads is B's.
        b.second.write("hello from b\r\n");  // CRLF is accepted as a line end
        CHECK(co_await read_line_within(a.first) == name_of(b) + ": hello from b\n");
        CHECK(co_await read_line_within(c.first) == name_of(b) + ": hello from b\n");

        a.second.write("/nick alice\nhi, I am alice\n\n");
        CHECK(co_await read_line_within(b.first) == "alice: hi, I am alice\n");
        CHECK(co_await read_line_within(b.first) == "alice: \n");  // an empty line is a line too
        CHECK(co_await read_line_within(c.first) == "alice: hi, I am alice\n");
        CHECK(co_await read_line_within(c.first) == "alice: \n");

        // A line of exactly the limit (64 KiB) is still fine.
        std::string longest(64 * 1024, 'y');
        c.second.write(longest + "\n");
        std::string expected = name_of(c) + ": " + longest + "\n";  // longer than A's own limit
        CHECK(co_await ringio::wait_for(a.first.read_exactly(expected.size()), 5s) == expected);

        for (connection& x : cs) co_await close_connection(x);
    }(srv.port));
    srv.stop_with(SIGTERM);
}

TEST_CASE("chat_server: a too-long line gets 'error: line too long' and a disconnect; the others go on") {
    server_process srv(RINGIO_CHAT_SERVER);
    ringio::run([](std::uint16_t port) -> ringio::task<> {
        std::vector<connection> cs = co_await join_chat(port, 3);
        connection& a = cs[0];
        connection& b = cs[1];
        connection& c = cs[2];

        a.second.write(std::string(70 * 1024, 'x'));  // no newline yet: past the limit already
        co_await ringio::wait_for(a.second.drain(), 5s);
        a.second.write("\nafter the long line\n");
        CHECK(co_await read_line_within(a.first) == "error: line too long\n");
        CHECK(co_await read_to_eof(a.first, 5s) == "");  // disconnected
        co_await close_connection(a);

        // B and C are unaffected: nothing of A's line reached them, and they still chat.
        b.second.write("still here\n");
        CHECK(co_await read_line_within(c.first) == name_of(b) + ": still here\n");
        c.second.write("me too\n");
        CHECK(co_await read_line_within(b.first) == name_of(c) + ": me too\n");

        co_await close_connection(b);
        co_await close_connection(c);
    }(srv.port));
    srv.stop_with(SIGTERM);
}

TEST_CASE("chat_server: a client that never reads does not hold up the others, and is disconnected") {
    server_process srv(RINGIO_CHAT_SERVER);
    ringio::run([](server_process& s) -> ringio::task<> {
        std::vector<connection> cs = co_await join_chat(s.port, 3);
        connection& a = cs[0];     // talks
        connection& b = cs[1];     // reads everything at once
        connection& slow = cs[2];  // never reads (until the end)
        std::string name_a = name_of(a);
        std::string name_slow = name_of(slow);

        // Batches of 32 lines of 8 KiB: the slow client's socket buffers fill, then its queue
        // of 256 lines; B must get every batch promptly all along.
        constexpr std::size_t batch = 32;
        bool dropped = false;
        std::size_t batches = 0;
        while (!dropped && batches < 200) {  // 50 MiB at most
            std::string lines;
            for (std::size_t i = 0; i < batch; ++i) lines += letters(8 * 1024, batches * batch + i) + "\n";
            a.second.write(lines);
            co_await ringio::wait_for(a.second.drain(), 5s);
            auto start = steady::now();
            for (std::size_t i = 0; i < batch; ++i) {
                std::string got = co_await read_line_within(b.first, 5s);
                std::string_view want(lines.data() + i * (8 * 1024 + 1), 8 * 1024 + 1);
                REQUIRE(got == name_a + ": " + std::string(want));
            }
            CHECK(steady::now() - start < 2s);  // promptly, slow client or not
            ++batches;
            dropped = s.proc.stderr_text().find("disconnecting " + name_slow) != std::string::npos;
        }
        INFO("stderr: ", s.proc.stderr_text());
        CHECK(dropped);
        MESSAGE("slow client disconnected after ", batches, " batches of ", batch, " lines of 8 KiB");

        // The slow client finds its connection ended: what was sent before, then EOF or a reset.
        bool ended = false;
        try {
            std::string rest = co_await read_to_eof(slow.first, 10s);
            ended = true;
            CHECK(rest.size() < 64u << 20);
        } catch (const std::system_error& e) {
            ended = e.code().value() == ECONNRESET;
        }
        CHECK(ended);
        slow.second.abort();

        // The others go on.
        a.second.write("still talking\n");
        CHECK(co_await read_line_within(b.first) == name_a + ": still talking\n");
        co_await close_connection(a);
        co_await close_connection(b);
    }(srv));
    srv.stop_with(SIGTERM);
}

TEST_CASE("chat_server: SIGINT closes the connections and exits with status 0 within a second") {
    server_process srv(RINGIO_CHAT_SERVER);
    ringio::run([](server_process& s) -> ringio::task<> {
        std::vector<connection> cs = co_await join_chat(s.port, 3);
        cs[0].second.write("half a line");  // pending input must not keep the server alive
        auto start = steady::now();
        s.proc.signal(SIGINT);
        std::optional<int> status = co_await ringio::to_thread([&] { return s.proc.wait(1s); });
        auto took = steady::now() - start;
        INFO("stderr: ", s.proc.stderr_text());
        CHECK_MESSAGE(exited_with(status, 0), describe_status(status));
        CHECK(took < 1s);
        // The idle clients see a graceful close: EOF. The first one's half line may reach the
        // server after it stopped reading, and closing a socket with unread input resets it
        // (TCP's rule), so there a reset is fine too; either way the connection must end.
        for (std::size_t i = 0; i < cs.size(); ++i) {
            INFO("client ", i);
            std::string rest;
            int err = 0;
            try {
                rest = co_await read_to_eof(cs[i].first, 5s);
            } catch (const std::system_error& e) {
                err = e.code().value();
            }
            CHECK(rest == "");
            CHECK_MESSAGE((err == 0 || (i == 0 && err == ECONNRESET)), std::strerror(err));
            cs[i].second.abort();
        }
    }(srv));
}

// ---- --threads N: several loops behind one port ----------------------------------------------

namespace {

/// An example server started with --port 0 --threads N.
struct threaded_server {
    child proc;
    std::uint16_t port = 0;

    threaded_server(const char* path, int threads)
        : proc({path, "--host", "127.0.0.1", "--port", "0", "--threads", std::to_string(threads)}) {
        port = test::read_announced_port(proc, "listening on 127.0.0.1:");
    }

    /// The counts of "NAME: connections per loop: A B ..." (printed on stderr at exit).
    std::vector<std::size_t> connections_per_loop() {
        const std::string& err = proc.stderr_text();
        std::vector<std::size_t> counts;
        auto at = err.find("connections per loop:");
        if (at == std::string::npos) return counts;
        std::size_t i = at + std::strlen("connections per loop:");
        while (i < err.size() && err[i] != '\n') {
            if (err[i] == ' ') {
                ++i;
                continue;
            }
            std::size_t used = 0;
            counts.push_back(std::stoul(err.substr(i), &used));
            i += used;
        }
        return counts;
    }
};

/// A chat client whose lines are read into a queue by a task of its own, so that a test can
/// wait for a line with a time limit without cancelling a read half way through a line.
struct chat_client {
    connection c;
    ringio::queue<std::string> lines;
    ringio::task_handle<> reader;

    explicit chat_client(connection conn) : c(std::move(conn)) {}
};

ringio::task<> read_lines_into(ringio::stream_reader& r, ringio::queue<std::string>& q) {
    try {
        while (true) {
            std::string line = co_await r.read_line();
            if (line.empty()) break;  // EOF
            q.put_nowait(std::move(line));
        }
    } catch (const std::exception&) {  // reset, or cancelled at the end of the test
    }
    q.shutdown();
}

/// The next line a client received, or "" when none comes within `limit`.
ringio::task<std::string> next_line(chat_client& cl, std::chrono::milliseconds limit) {
    try {
        co_return co_await ringio::wait_for(
            [](ringio::queue<std::string>& q) -> ringio::task<std::string> { co_return co_await q.get(); }(cl.lines),
            limit);
    } catch (const ringio::timeout_error&) {
        co_return std::string();
    } catch (const ringio::queue_shutdown&) {
        co_return std::string();
    }
}

ringio::task<std::vector<std::unique_ptr<chat_client>>> connect_chat_clients(std::uint16_t port, std::size_t n) {
    std::vector<std::unique_ptr<chat_client>> cs;
    for (std::size_t i = 0; i < n; ++i) {
        cs.push_back(std::make_unique<chat_client>(co_await connect_to(port)));
        chat_client& cl = *cs.back();
        cl.reader = ringio::create_task(read_lines_into(cl.c.first, cl.lines));
    }
    co_return cs;
}

/// Waits until every client is in its loop's room: with several loops, handlers start in no
/// particular order across loops, so client 0 says "sync R" until every other client got one
/// (a client not yet in its room misses a round, never a later one). Client 0 is in the room
/// once anyone receives its line. Bounded: 50 rounds.
ringio::task<bool> sync_chat(std::vector<std::unique_ptr<chat_client>>& cs) {
    std::string name0 = name_of(cs[0]->c);
    for (int round = 0; round < 50; ++round) {
        std::string want = fmt::format("{}: sync {}\n", name0, round);
        cs[0]->c.second.write(fmt::format("sync {}\n", round));
        bool all = true;
        for (std::size_t k = 1; k < cs.size(); ++k) {
            bool got = false;
            while (!got) {  // skips the lines of earlier rounds
                std::string line = co_await next_line(*cs[k], 300ms);
                if (line.empty()) break;
                got = line == want;
            }
            all = all && got;
        }
        if (all) co_return true;
    }
    co_return false;
}

}  // namespace

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

TEST_CASE("chat_server --threads 2: lines go between clients of different loops") {
    threaded_server srv(RINGIO_CHAT_SERVER, 2);
    constexpr std::size_t n = 24;  // all on one loop: a 1 in 2^23 chance
    ringio::run([](std::uint16_t port) -> ringio::task<> {
        std::vector<std::unique_ptr<chat_client>> cs = co_await connect_chat_clients(port, n);
        bool synced = co_await sync_chat(cs);
        REQUIRE(synced);
        // Everyone says something; everyone else hears all of it, whichever loop it is on.
        for (std::size_t i = 0; i < n; ++i) cs[i]->c.second.write(fmt::format("line from {}\n", i));
        for (std::size_t j = 0; j < n; ++j) {
            std::set<std::string> want, got;
            for (std::size_t i = 0; i < n; ++i)
                if (i != j) want.insert(fmt::format("{}: line from {}\n", name_of(cs[i]->c), i));
            for (std::size_t k = 0; k + 1 < n; ++k) got.insert(co_await next_line(*cs[j], 5s));
            CHECK_MESSAGE(got == want, "client ", j);
        }
        // A line from one client reaches the others in the order sent.
        for (int k = 0; k < 20; ++k) cs[n - 1]->c.second.write(fmt::format("seq {}\n", k));
        std::string name = name_of(cs[n - 1]->c);
        for (std::size_t j = 0; j + 1 < n; ++j)
            for (int k = 0; k < 20; ++k) CHECK(co_await next_line(*cs[j], 5s) == fmt::format("{}: seq {}\n", name, k));
        for (auto& cl : cs) co_await close_connection(cl->c);
        for (auto& cl : cs) co_await ringio::wait_for(cl->reader, 5s);
    }(srv.port));
    test::stop_with(srv.proc, SIGTERM);
    std::vector<std::size_t> per_loop = srv.connections_per_loop();
    REQUIRE(per_loop.size() == 2);
    CHECK(per_loop[0] + per_loop[1] == n);
    CHECK(per_loop[0] > 0);
    CHECK(per_loop[1] > 0);
}

#endif
