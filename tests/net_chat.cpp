// chat_server (examples/chat_server.cpp) run as a child process and driven over TCP on
// 127.0.0.1: the chat contract of DESIGN.md section 7, with its slow consumers (fast readers are
// never dropped, talkers are slowed instead; a stalled reader is dropped after the stall limit;
// memory stays bounded), on one loop and across loops (--threads 2). Some clients are Python
// processes with the plain socket module (skipped without /usr/bin/python3). Every wait is
// bounded, so a broken server fails the test instead of hanging it.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
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

#include "child_process.hpp"
#include "example_clients.hpp"
#include "stress_helpers.hpp"  // rss_bytes, sanitized

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

#if !defined(RINGIO_CHAT_SERVER)

TEST_CASE("the examples are not built (RINGIO_BUILD_EXAMPLES=OFF): skipped") {
    std::exit(77);  // CTest's skip code
}

#else

namespace {

// The child-process harness (child_process.hpp) and connections (example_clients.hpp).
using test::child;
using test::close_connection;
using test::connect_to;
using test::connection;
using test::describe_status;
using test::exited_with;
using test::read_to_eof;
using test::server_process;
using test::threaded_server;

ringio::task<std::string> read_line_within(ringio::stream_reader& r, std::chrono::milliseconds limit = 5s) {
    co_return co_await ringio::wait_for(r.read_line(), limit);
}

std::string name_of(const connection& c) { return fmt::format("{}", c.second.sockname()); }

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

// ---- slow consumers: fast talkers, fast readers, stalled readers ------------------------------

/// chat_server's stall limit: a client whose socket takes nothing for this long is disconnected.
constexpr auto stall_limit = 3s;

/// Line i of a talker's stream, without "\n": its number, then letters up to `size` bytes. The
/// same as expected() in fast_reader_py.
std::string numbered_line(std::size_t i, std::size_t size) {
    std::string s = fmt::format("{:08d}", i);
    for (std::size_t k = 0; s.size() < size; ++k) s += static_cast<char>('a' + (i + k) % 26);
    return s;
}

/// Lines first .. first + n - 1, each with its "\n".
std::string numbered_lines(std::size_t first, std::size_t n, std::size_t size) {
    std::string batch;
    batch.reserve(n * (size + 1));
    for (std::size_t i = first; i < first + n; ++i) (batch += numbered_line(i, size)) += '\n';
    return batch;
}

/// Sends lines first .. first + n - 1 as fast as it can: all of them made first, then written at
/// once, then drain() waits until the kernel has taken them (the server's backpressure reaches
/// the talker there). Bounded by `limit`.
ringio::task<> send_numbered_lines(ringio::stream_writer& w, std::size_t first, std::size_t n, std::size_t size,
                                   std::chrono::seconds limit = 30s) {
    w.write(numbered_lines(first, n, size));
    co_await ringio::wait_for(w.drain(), limit);
}

/// What a reader of numbered lines got.
struct receipt {
    std::size_t in_order = 0;         // lines 0, 1, ... received intact and in order
    steady::duration longest_wait{};  // the longest wait for a line
    std::string trouble;              // what ended it early: a wrong line, EOF, an error
};

/// Reads `count` lines `prefix + numbered_line(i, size) + "\n"`, as fast as it can. Stops at the
/// first line that differs, at EOF, on an error, or when no line comes within `limit`.
ringio::task<receipt> receive_numbered_lines(ringio::stream_reader& r, std::string prefix, std::size_t count,
                                             std::size_t size, std::chrono::seconds limit = 10s) {
    receipt got;
    auto last = steady::now();
    try {
        while (got.in_order < count) {
            std::string line = co_await ringio::wait_for(r.read_line(), limit);
            auto now = steady::now();
            got.longest_wait = std::max(got.longest_wait, now - last);
            last = now;
            if (line != prefix + numbered_line(got.in_order, size) + "\n") {
                got.trouble = line.empty() ? "EOF" : "this line differs: " + line.substr(0, 80);
                break;
            }
            ++got.in_order;
        }
    } catch (const std::exception& e) {
        got.trouble = e.what();
    }
    co_return got;
}

double seconds(steady::duration d) { return std::chrono::duration<double>(d).count(); }

/// Samples the resident memory of process `pid` every 20 ms into `peak` (bytes) until `stop` is
/// set: the server's memory also while a talker is held up (a measurement, not a
/// synchronisation).
ringio::task<> sample_peak_memory(pid_t pid, std::size_t& peak, const bool& stop) {
    while (!stop) {
        peak = std::max(peak, stress::rss_bytes(pid));
        co_await ringio::sleep(20ms);
    }
}

constexpr const char* python = "/usr/bin/python3";

/// A chat client in Python with the plain socket module, run as `python3 -c fast_reader_py PORT
/// NAME COUNT SIZE RCVBUF CHUNK`: it says "/nick NAME" and "hello", then reads as fast as it
/// can, recv(CHUNK) after recv(CHUNK), until it has COUNT lines "talker: " +
/// numbered_line(i, SIZE) (lines from others are skipped); then it says "done" and prints
/// "received COUNT lines". RCVBUF > 0 fixes its socket's receive buffer (SO_RCVBUF, before
/// connecting). A line that differs, EOF, a reset or 30 s of silence end it with status 1 and
/// the reason on stderr.
constexpr const char* fast_reader_py = R"(
import socket, sys
port, name, (count, size, rcvbuf, chunk) = int(sys.argv[1]), sys.argv[2], (int(a) for a in sys.argv[3:7])
base = "abcdefghijklmnopqrstuvwxyz" * (size // 26 + 2)
def expected(i):
    return f"talker: {i:08d}{base[i % 26:i % 26 + size - 8]}".encode()
s = socket.socket()
if rcvbuf > 0:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
s.settimeout(30)
s.connect(("127.0.0.1", port))
s.sendall(f"/nick {name}\nhello\n".encode())
rest, n = b"", 0
try:
    while n < count:
        data = s.recv(chunk)
        if not data:
            sys.exit(f"disconnected after {n} lines")
        lines = (rest + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if not line.startswith(b"talker: "):
                continue
            if n < count and line != expected(n):
                sys.exit(f"line {n} differs: {line[:60]!r}")
            n += 1
except (ConnectionResetError, socket.timeout) as e:
    sys.exit(f"{e!r} after {n} lines")
s.sendall(b"done\n")
print(f"received {n} lines", flush=True)
)";

/// How a Python reader reads: its receive buffer (0: as the system sizes it) and recv() size.
struct reader_socket {
    int rcvbuf = 0;
    std::size_t chunk = 0;
};

std::unique_ptr<child> start_fast_reader(std::uint16_t port, const std::string& name, std::size_t count,
                                         std::size_t size, reader_socket how) {
    return std::make_unique<child>(std::vector<std::string>{python, "-c", fast_reader_py, std::to_string(port), name,
                                                            std::to_string(count), std::to_string(size),
                                                            std::to_string(how.rcvbuf), std::to_string(how.chunk)});
}

/// The server disconnected the client `name` as stalled (its message on stderr).
bool disconnected_as_stalled(child& server, const std::string& name) {
    return server.stderr_text().find("disconnecting " + name + ": it took nothing") != std::string::npos;
}

}  // namespace

// ---- one loop -------------------------------------------------------------------------------

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

TEST_CASE("chat_server: clients reading as fast as they can get all 20,000 lines of 1 KiB of a talker sending as fast as it can") {
    if (::access(python, X_OK) != 0) {
        MESSAGE("skipped: no ", python);
        return;
    }
    server_process srv(RINGIO_CHAT_SERVER);
    ringio::run([](server_process& s) -> ringio::task<> {
        constexpr std::size_t count = 20000;
        constexpr std::size_t size = 1024;
        connection talker = co_await connect_to(s.port);
        talker.second.write("/nick talker\n");
        // Two Python readers at once. Loopback's receive buffers grow to megabytes for a fast
        // reader, so how far one falls behind (and whether a server without backpressure drops
        // it) depends on the load of the machine: reader1 has a fixed 64 KiB buffer (a client
        // across a real network has less in flight than loopback) and Python's usual
        // recv(4096); reader2 takes up to 1 MiB at a time from a buffer the system sizes.
        std::unique_ptr<child> reader1 = start_fast_reader(s.port, "reader1", count, size, {64 * 1024, 4096});
        std::unique_ptr<child> reader2 = start_fast_reader(s.port, "reader2", count, size, {0, 1 << 20});
        // The readers' hellos reach the talker: every handler is in the room (the talker's
        // started first).
        std::set<std::string> hellos;
        for (int i = 0; i < 2; ++i) hellos.insert(co_await read_line_within(talker.first, 10s));
        CHECK(hellos == std::set<std::string>{"reader1: hello\n", "reader2: hello\n"});

        auto start = steady::now();
        co_await send_numbered_lines(talker.second, 0, count, size);
        auto sent = steady::now() - start;
        bool all_received = true;
        for (child* reader : {reader1.get(), reader2.get()}) {
            std::optional<int> status = co_await ringio::to_thread([&] { return reader->wait(60s); });
            INFO("reader's stderr: ", reader->stderr_text());
            INFO("server's stderr: ", s.proc.stderr_text());
            CHECK_MESSAGE(exited_with(status, 0), describe_status(status));
            std::string out = reader->read_all(5s).value_or("");
            CHECK(out == fmt::format("received {} lines\n", count));
            all_received = all_received && exited_with(status, 0);
        }
        auto received = steady::now() - start;
        REQUIRE(all_received);
        // Still connected after all of it: their "done" comes through.
        std::set<std::string> dones;
        for (int i = 0; i < 2; ++i) dones.insert(co_await read_line_within(talker.first, 5s));
        CHECK(dones == std::set<std::string>{"reader1: done\n", "reader2: done\n"});
        MESSAGE(fmt::format("{} lines of {} bytes: sent in {:.2f} s, all received in {:.2f} s", count, size,
                            seconds(sent), seconds(received)));
        co_await close_connection(talker);
    }(srv));
    srv.stop_with(SIGTERM);
}

TEST_CASE("chat_server: a client that stops reading is disconnected after the stall limit, holding up nobody longer; memory stays bounded") {
    server_process srv(RINGIO_CHAT_SERVER);
    ringio::run([](server_process& s) -> ringio::task<> {
        std::vector<connection> cs = co_await join_chat(s.port, 3);
        connection& talker = cs[0];
        connection& stalled = cs[1];  // read the sync line, and reads nothing more
        connection& reader = cs[2];   // reads as fast as it can
        std::string name_talker = name_of(talker);
        std::string name_stalled = name_of(stalled);
        // 64 MiB: far more than the stalled client's socket buffers take before it stalls.
        constexpr std::size_t count = 4096;
        constexpr std::size_t size = 16 * 1024;

        const pid_t pid = s.proc.pid();
        const std::size_t rss_before = stress::rss_bytes(pid);
        std::size_t rss_peak = rss_before;
        bool done = false;
        auto sampler = ringio::create_task(sample_peak_memory(pid, rss_peak, done));
        auto receiving = ringio::create_task(receive_numbered_lines(reader.first, name_talker + ": ", count, size));
        auto start = steady::now();
        co_await send_numbered_lines(talker.second, 0, count, size);
        auto sent = steady::now() - start;
        receipt got = co_await receiving;
        done = true;
        co_await sampler;

        INFO("server's stderr: ", s.proc.stderr_text());
        CHECK_MESSAGE(got.in_order == count, got.trouble);
        // The talker could send it all only because the stalled client was disconnected...
        CHECK(disconnected_as_stalled(s.proc, name_stalled));
        // ... after it had taken nothing for the stall limit: meanwhile the talker was held up
        // (the reader waited), and for not much longer than that.
        CHECK(got.longest_wait > stall_limit - 1s);
        CHECK(got.longest_wait < stall_limit + 2s);
        // Bounded memory: a server keeping what the stalled client did not take would grow by
        // tens of MiB. (Not under ASan, whose quarantine keeps freed memory resident.)
        if (!stress::sanitized) CHECK(rss_peak < rss_before + (24u << 20));
        MESSAGE(fmt::format("64 MiB sent in {:.2f} s; the reader's longest wait {:.2f} s; server RSS {} KiB before, "
                            "{} KiB at most",
                            seconds(sent), seconds(got.longest_wait), rss_before >> 10, rss_peak >> 10));

        // The stalled client finds its connection ended: what was sent before, then EOF or a reset.
        bool ended = false;
        try {
            std::string rest = co_await read_to_eof(stalled.first, 10s);
            ended = true;
            CHECK(rest.size() < 64u << 20);
        } catch (const std::system_error& e) {
            ended = e.code().value() == ECONNRESET;
        }
        CHECK(ended);
        stalled.second.abort();

        // The others go on.
        talker.second.write("still talking\n");
        CHECK(co_await read_line_within(reader.first) == name_talker + ": still talking\n");
        co_await close_connection(talker);
        co_await close_connection(reader);
    }(srv));
    srv.stop_with(SIGTERM);
}

TEST_CASE("chat_server: SIGINT while a stalled client holds up a talker exits with status 0 within a second") {
    server_process srv(RINGIO_CHAT_SERVER);
    ringio::run([](server_process& s) -> ringio::task<> {
        std::vector<connection> cs = co_await join_chat(s.port, 2);
        connection& talker = cs[0];
        connection& stalled = cs[1];  // never reads
        // The talker sends until the server stops taking its lines: the stalled client's
        // buffers and outbox are full, and the talker's handler waits for room in it.
        constexpr std::size_t size = 16 * 1024;
        const std::size_t batch = 64;
        bool held = false;
        for (std::size_t i = 0; i < 4096 && !held; i += batch) {  // 64 MiB at most
            talker.second.write(numbered_lines(i, batch, size));
            try {
                co_await ringio::wait_for(talker.second.drain(), 300ms);
            } catch (const ringio::timeout_error&) {
                held = true;
            }
        }
        REQUIRE(held);
        CHECK_FALSE(disconnected_as_stalled(s.proc, name_of(stalled)));  // within the stall limit

        auto start = steady::now();
        s.proc.signal(SIGINT);
        std::optional<int> status = co_await ringio::to_thread([&] { return s.proc.wait(1s); });
        auto took = steady::now() - start;
        INFO("stderr: ", s.proc.stderr_text());
        CHECK_MESSAGE(exited_with(status, 0), describe_status(status));
        CHECK(took < 1s);
        MESSAGE(fmt::format("exited {:.3f} s after SIGINT", seconds(took)));
        talker.second.abort();
        stalled.second.abort();
    }(srv));
}

// ---- --threads N: several loops behind one port ----------------------------------------------

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

TEST_CASE("chat_server --threads 2: backpressure across loops: fast readers get every line, stalled clients are disconnected") {
    threaded_server srv(RINGIO_CHAT_SERVER, 2);
    // A talker, fast readers, and two clients that never read. With 12 readers, some are on the
    // other loop than the talker but for a 1 in 2^12 chance.
    constexpr std::size_t clients = 1 + 12 + 2;
    ringio::run([](threaded_server& s, std::size_t n) -> ringio::task<> {
        const std::size_t readers = n - 3;
        // 12 MB to each reader: more than a stalled client's socket buffers take before it stalls.
        constexpr std::size_t count = 6000;
        constexpr std::size_t size = 2048;
        std::vector<std::unique_ptr<chat_client>> cs = co_await connect_chat_clients(s.port, n);
        bool synced = co_await sync_chat(cs);
        REQUIRE(synced);
        // From here on the readers' streams are read by receive_numbered_lines, the stalled
        // clients' by nobody.
        for (auto& cl : cs) {
            cl->reader.cancel();
            co_await ringio::wait_for(cl->reader, 5s);
        }
        chat_client& talker = *cs[0];
        std::string prefix = name_of(talker.c) + ": ";
        std::vector<ringio::task<receipt>> receiving;
        for (std::size_t k = 1; k <= readers; ++k)
            receiving.push_back(receive_numbered_lines(cs[k]->c.first, prefix, count, size));
        auto all_received = ringio::create_task(ringio::gather(std::move(receiving)));
        auto start = steady::now();
        co_await send_numbered_lines(talker.c.second, 0, count, size);
        auto sent = steady::now() - start;
        std::vector<receipt> got = co_await all_received;

        INFO("server's stderr: ", s.proc.stderr_text());
        steady::duration longest{};
        for (std::size_t k = 0; k < readers; ++k) {
            CHECK_MESSAGE(got[k].in_order == count, "reader ", k + 1, ": ", got[k].trouble);
            longest = std::max(longest, got[k].longest_wait);
        }
        // The two stalls overlapped: the talker was held up about one stall limit, not two.
        CHECK(longest < stall_limit + 2s);
        for (std::size_t k = readers + 1; k < n; ++k) CHECK(disconnected_as_stalled(s.proc, name_of(cs[k]->c)));
        MESSAGE(fmt::format("{} x {} lines of {} bytes sent in {:.2f} s; a reader's longest wait {:.2f} s", readers,
                            count, size, seconds(sent), seconds(longest)));
        for (std::size_t k = 0; k <= readers; ++k) co_await close_connection(cs[k]->c);
        for (std::size_t k = readers + 1; k < n; ++k) cs[k]->c.second.abort();
    }(srv, clients));
    test::stop_with(srv.proc, SIGTERM);
    std::vector<std::size_t> per_loop = srv.connections_per_loop();
    REQUIRE(per_loop.size() == 2);
    CHECK(per_loop[0] + per_loop[1] == clients);
    MESSAGE("connections per loop: ", per_loop[0], " ", per_loop[1]);
}

#endif
