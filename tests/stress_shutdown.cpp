// Shutdown under load: examples/echo_server as a child process with 1,000 connections that are
// mid-transfer (each client sends continuously, at most 64 KiB ahead of the echo it read back), then SIGTERM. The
// process must exit with status 0 within a second, and every client must see the end of its
// connection, a clean EOF or a reset, never a hang: every client read is bounded (5 s) and one
// that times out fails the test.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "child_process.hpp"
#include "helpers.hpp"
#include "net_helpers.hpp"
#include "stress_helpers.hpp"

using namespace std::chrono_literals;

namespace {

struct shutdown_state {
    std::uint16_t port = 0;
    std::size_t next = 0;      // connections handed out to the connecting workers
    std::size_t connected = 0;
    std::size_t flowing = 0;   // clients that got at least one byte echoed
    std::size_t eofs = 0;
    std::size_t resets = 0;
    std::size_t hangs = 0;     // a read that did not finish within 5 s
    std::size_t corrupt = 0;
    std::size_t other = 0;
    std::size_t ended = 0;
    bool signalled = false;
    std::string first_other;
    ringio::event all_connected;
};

constexpr std::size_t n_clients = 1000;

// What a client may have sent and not yet read back. Without a bound, 1,000 clients that send
// as fast as they can fill both directions' socket buffers (autotuned to megabytes each) and drive
// the kernel's TCP memory to its global limit (tcp_mem): it then drops segments (TcpExtTCPRcvQDrop,
// TCPMemoryPressures in nstat), and a connection waiting for a retransmission after several
// backoffs stays silent for more than the clients' 5 s bound, which the test would count as a
// hang of the server's. 64 KiB each keeps every connection busy both ways, in 64 MiB in all.
constexpr std::uint64_t window = 64 * 1024;

struct flow {
    std::uint64_t sent = 0;
    std::uint64_t got = 0;
    bool stop = false;
    ringio::event room;  // set when the reader took bytes back (or the client stops)
};

ringio::task<> send_forever(ringio::stream_writer& w, flow& f, std::uint64_t id) {
    std::vector<unsigned char> buf(4096);
    try {
        while (!f.stop) {
            if (f.sent - f.got + buf.size() > window) {
                f.room.clear();
                co_await f.room.wait();
                continue;
            }
            stress::fill_pattern(id, f.sent, buf.data(), buf.size());
            w.write(std::as_bytes(std::span(buf)));
            f.sent += buf.size();
            co_await w.drain();
        }
    } catch (const std::system_error&) {
        // the server went away (EPIPE / ECONNRESET)
    } catch (const ringio::invalid_state_error&) {
        // the reader closed the stream
    }
}

ringio::task<> client(shutdown_state& st, std::pair<ringio::stream_reader, ringio::stream_writer> conn, std::uint64_t id) {
    flow f;
    auto sender = ringio::create_task(send_forever(conn.second, f, id));
    std::vector<std::byte> in(8192);
    try {
        while (true) {
            std::size_t n = co_await ringio::wait_for(conn.first.read_some(in), 5s);
            if (n == 0) {
                ++st.eofs;
                break;
            }
            if (f.got == 0) ++st.flowing;
            if (stress::check_pattern(id, f.got, reinterpret_cast<const unsigned char*>(in.data()), n) != n) ++st.corrupt;
            f.got += n;
            f.room.set();
        }
    } catch (const ringio::timeout_error&) {
        ++st.hangs;
    } catch (const std::system_error& e) {
        if (e.code().value() == ECONNRESET) {
            ++st.resets;
        } else {
            ++st.other;
            if (st.first_other.empty()) st.first_other = e.what();
        }
    }
    // Stop sending: a reset connection fails the sender by itself; otherwise abort it.
    f.stop = true;
    f.room.set();
    conn.second.abort();
    co_await sender;
    ++st.ended;
}

// Connects 64 at a time, so that the server's accept backlog (100) never overflows.
ringio::task<> connector(shutdown_state& st, std::vector<ringio::task_handle<>>& clients) {
    while (st.next < n_clients) {
        std::uint64_t id = st.next++;
        std::pair<ringio::stream_reader, ringio::stream_writer> c =
            co_await ringio::wait_for(ringio::open_connection("127.0.0.1", st.port), 10s);
        clients.push_back(ringio::create_task(client(st, std::move(c), id)));
        if (++st.connected == n_clients) st.all_connected.set();
    }
}

}  // namespace

TEST_CASE("SIGTERM to echo_server with 1,000 connections mid-transfer: exit 0 within a second, every client sees EOF or a reset") {
#ifndef RINGIO_ECHO_SERVER
    MESSAGE("SKIPPED: built without the examples (RINGIO_BUILD_EXAMPLES=OFF)");
#else
    stress::raise_fd_limit();  // 1,000 connections on each side; the child inherits the limit
    test::child server({RINGIO_ECHO_SERVER, "--port", "0"});
    std::size_t fds = test::open_fds();
    shutdown_state st;
    st.port = test::read_announced_port(server, "listening on 127.0.0.1:");
    std::optional<int> status;
    std::chrono::milliseconds exit_took{};
    test::run_bounded([](shutdown_state& s, test::child& proc, std::optional<int>& stat,
                         std::chrono::milliseconds& took) -> ringio::task<> {
        std::vector<ringio::task_handle<>> clients;
        std::vector<ringio::task<>> connectors;
        for (int i = 0; i < 64; ++i) connectors.push_back(connector(s, clients));
        co_await ringio::gather(std::move(connectors));
        REQUIRE(s.connected == n_clients);
        // Every connection carries data both ways before the signal.
        CHECK(co_await test::eventually([&] { return s.flowing == n_clients; }, 30000ms));
        REQUIRE(s.ended == 0);

        auto start = std::chrono::steady_clock::now();
        proc.signal(SIGTERM);
        s.signalled = true;
        // Wait for the process on a pool thread, while this loop keeps every client reading.
        stat = co_await ringio::to_thread([&proc] { return proc.wait(3000ms); });
        took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
        for (auto& c : clients) co_await c;  // each ends by itself: EOF, a reset, or a 5 s timeout
    }(st, server, status, exit_took), 90s);

    INFO("echo_server's stderr: ", server.stderr_text());
    MESSAGE("echo_server exited (" << test::describe_status(status) << ") " << exit_took.count() << " ms after SIGTERM; clients saw "
                                   << st.eofs << " EOFs, " << st.resets << " resets, " << st.hangs << " hangs, " << st.other
                                   << " other errors");
    CHECK(test::exited_with(status, 0));
#ifdef RINGIO_STRESS_ASAN
    // Under ASan the child is slow, and slower to exit (LeakSanitizer scans the heap of 1,000
    // connections): measured 0.7-1.15 s in all, 0.6 s without the leak check. The one-second
    // promise is checked by the Release build (CI stage a); here the server must still end
    // well before the clients' 5 s read bound, with every client seeing its EOF or reset.
    CHECK(exit_took < 3000ms);
#else
    CHECK(exit_took < 1000ms);
#endif
    CHECK(st.ended == n_clients);
    CHECK(st.hangs == 0);
    INFO("first other error: ", st.first_other);
    CHECK(st.other == 0);
    CHECK(st.eofs + st.resets == n_clients);
    CHECK(st.corrupt == 0);
    CHECK(test::open_fds() == fds);
#endif
}
