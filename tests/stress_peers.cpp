// Slow and hostile peers against start_server, over loopback:
//   - a client that never reads while the server writes with drain(): the server's write buffer
//     stays within the high-water mark plus one write, its heap stays flat, and other clients
//     are served meanwhile;
//   - slowloris (one byte every 50-100 ms, never a newline) and an idle client against a
//     read_line server with server_options::read_timeout: both are closed, a well-behaved slow
//     client on the same server is not;
//   - a 1 GiB line streamed at a read_line server: limit_overrun_error, the connection is closed,
//     the client sees it long before the GiB is sent, the server's heap stays within twice the
//     limit plus buffers, and the next client is served.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "net_helpers.hpp"
#include "stress_helpers.hpp"

using namespace std::chrono_literals;

namespace {

/// One line to the server and its echo back, on a new connection.
ringio::task<bool> echo_line(std::uint16_t port, std::string line) {
    std::pair<ringio::stream_reader, ringio::stream_writer> c = co_await ringio::open_connection("127.0.0.1", port);
    c.second.write(line);
    std::string back = co_await ringio::wait_for(c.first.read_line(), 5s);
    c.second.close();
    co_await c.second.wait_closed();
    co_return back == line;
}

/// Echoes lines until EOF.
ringio::task<> line_echo(ringio::stream_reader r, ringio::stream_writer w) {
    while (true) {
        std::string line = co_await r.read_line();
        if (line.empty()) break;
        w.write(line);
        co_await w.drain();
    }
}

}  // namespace

TEST_CASE("a client that never reads: the server's write buffer stays bounded, others are served") {
    struct flood_state {
        std::size_t written = 0;
        std::size_t max_buffered = 0;
        std::size_t high = 64 * 1024;
        std::size_t chunk = 16 * 1024;
        bool ended = false;
        int error = 0;
    } fs;
    std::size_t fds = test::open_fds();
    test::run_bounded([](flood_state& f) -> ringio::task<> {
        // "flood\n" makes the handler write forever (with drain()); anything else is echoed.
        auto srv = co_await ringio::start_server(
            [&f](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                std::string first = co_await r.read_line();
                if (first != "flood\n") {
                    w.write(first);
                    co_await line_echo(std::move(r), std::move(w));
                    co_return;
                }
                std::string chunk(f.chunk, 'f');
                w.set_write_buffer_limits(f.high);
                try {
                    while (true) {
                        w.write(chunk);
                        f.written += chunk.size();
                        f.max_buffered = std::max(f.max_buffered, w.buffered());
                        co_await w.drain();
                        f.max_buffered = std::max(f.max_buffered, w.buffered());
                    }
                } catch (const std::system_error& e) {
                    f.error = e.code().value();
                }
                f.ended = true;
            },
            "127.0.0.1", 0);

        stress::trim_heap();
        const std::size_t heap0 = stress::heap_in_use();
        std::pair<ringio::stream_reader, ringio::stream_writer> slow = co_await ringio::open_connection("127.0.0.1", srv.port());
        slow.second.write("flood\n");  // and never read

        // Wait until the server is stuck in drain(): `written` stops growing (the kernel's
        // buffers on both sides are full).
        std::size_t last = 0;
        int still = 0;
        std::size_t heap_peak = 0;
        for (int i = 0; i < 400 && still < 10; ++i) {
            co_await ringio::sleep(20ms);
            heap_peak = std::max(heap_peak, stress::heap_in_use());
            still = (f.written == last && f.written > 0) ? still + 1 : 0;
            last = f.written;
        }
        REQUIRE(still >= 10);  // stuck, not writing on forever
        CHECK_FALSE(f.ended);

        // Meanwhile 32 other clients are served, 8 line round trips each.
        std::vector<ringio::task<>> others;
        int served = 0;
        for (int c = 0; c < 32; ++c)
            others.push_back([](std::uint16_t port, int id, int& ok) -> ringio::task<> {
                for (int k = 0; k < 8; ++k) {
                    bool same = co_await echo_line(port, "client " + std::to_string(id) + " line " + std::to_string(k) + "\n");
                    if (same) ++ok;
                }
            }(srv.port(), c, served));
        co_await ringio::gather(std::move(others));
        CHECK(served == 32 * 8);
        heap_peak = std::max(heap_peak, stress::heap_in_use());
        CHECK(f.written == last);  // still stuck: the slow client read nothing
        CHECK_FALSE(f.ended);

        MESSAGE("the server wrote " << f.written << " bytes before drain() held it; write buffer at most " << f.max_buffered
                                    << " bytes (high-water mark " << f.high << " + one write of " << f.chunk
                                    << "); heap grew by at most " << (heap_peak > heap0 ? heap_peak - heap0 : 0) << " bytes");
        CHECK(f.max_buffered <= f.high + f.chunk);
        CHECK(heap_peak <= heap0 + 1024 * 1024);  // the write buffers (twice high + chunk at most) and the clients'

        // The slow client resets: the handler's drain() fails and its connection goes away.
        slow.second.abort();
        CHECK(co_await test::eventually([&] { return f.ended; }, 5000ms));
        CHECK((f.error == ECONNRESET || f.error == EPIPE));
        CHECK(co_await test::eventually([&] { return srv.connections() == 0; }, 5000ms));
        srv.close();
        co_await srv.wait_closed();
    }(fs), 60s);
    CHECK(test::open_fds() == fds);
}

TEST_CASE("a 1 GiB line: limit_overrun_error, the connection is closed early, memory stays bounded, the next client is served") {
    struct line_state {
        std::size_t limit = 1024 * 1024;
        int overruns = 0;
        int lines = 0;
        std::size_t sent = 0;
        int client_error = 0;
        bool client_eof = false;
    } ls;
    std::size_t fds = test::open_fds();
    test::run_bounded([](line_state& s) -> ringio::task<> {
        ringio::server_options o;
        o.limit = s.limit;
        auto srv = co_await ringio::start_server(
            [&s](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                try {
                    while (true) {
                        std::string line = co_await r.read_line();
                        if (line.empty()) break;
                        ++s.lines;
                        w.write(line);
                        co_await w.drain();
                    }
                } catch (const ringio::limit_overrun_error&) {
                    ++s.overruns;  // returning closes the connection (with unread data: a reset)
                }
            },
            "127.0.0.1", 0, o);

        // The client streams 'x' without a newline, 256 KiB at a time, up to 1 GiB, from one
        // buffer (the GiB is never allocated), until a send fails.
        const std::size_t gib = std::size_t{1} << 30;
        std::vector<std::byte> chunk(256 * 1024, std::byte{'x'});
        stress::trim_heap();
        const std::size_t heap0 = stress::heap_in_use();
        std::size_t heap_peak = heap0;
        bool sending = true;
        auto sampler = ringio::create_task([](std::size_t& peak, bool& on) -> ringio::task<> {
            while (on) {
                peak = std::max(peak, stress::heap_in_use());
                co_await ringio::sleep(1ms);
            }
        }(heap_peak, sending));

        auto start = std::chrono::steady_clock::now();
        ringio::socket c = ringio::socket::create(AF_INET, SOCK_STREAM);
        co_await c.connect(ringio::endpoint(ringio::ip_address::loopback_v4(), srv.port()));
        try {
            while (s.sent < gib) {
                s.sent += co_await ringio::wait_for(c.send_some(chunk), 5s);
            }
        } catch (const std::system_error& e) {
            s.client_error = e.code().value();
        }
        if (s.client_error == 0) {
            // Everything went out (it must not): at least the close must show.
            std::byte b[1];
            std::size_t n = co_await ringio::wait_for(c.recv(b), 5s);
            s.client_eof = n == 0;
        }
        auto took = std::chrono::steady_clock::now() - start;
        sending = false;
        co_await sampler;
        co_await c.close();

        MESSAGE("the client sent " << s.sent << " bytes before the server's close showed (" << s.client_error << "), in "
                                   << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                                   << " ms; the heap grew by at most " << heap_peak - heap0 << " bytes (limit " << s.limit << ")");
        CHECK(s.overruns == 1);
        CHECK((s.client_error == ECONNRESET || s.client_error == EPIPE));
        CHECK(s.sent < 64 * s.limit);  // the close came long before the GiB was sent
        CHECK(took < 10s);
        CHECK(heap_peak - heap0 < 2 * s.limit + 1024 * 1024);  // twice the limit + buffers

        // The server goes on.
        bool ok = co_await echo_line(srv.port(), "after the flood\n");
        CHECK(ok);
        CHECK(s.lines == 1);
        CHECK(co_await test::eventually([&] { return srv.connections() == 0; }, 5000ms));
        srv.close();
        co_await srv.wait_closed();
    }(ls), 60s);
    CHECK(test::open_fds() == fds);
}

namespace {

template <class Options>
concept has_read_timeout = requires(Options o) { o.read_timeout = std::chrono::nanoseconds(1); };

// A template so that it compiles before server_options::read_timeout exists (and is skipped).
template <class Options>
void slowloris_test() {
    struct slow_state {
        int handlers_done = 0;
        int lines = 0;
    } ss;
    std::size_t fds = test::open_fds();
    test::log_capture logs;
    std::mt19937_64 rng(stress::seed("stress_peers slowloris"));
    test::run_bounded([](slow_state& s, std::mt19937_64& rnd) -> ringio::task<> {
        Options o;
        o.read_timeout = 300ms;  // each read_line() must finish within 300 ms
        auto srv = co_await ringio::start_server(
            [&s](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                struct done_counter {
                    int& n;
                    ~done_counter() { ++n; }
                } dc{s.handlers_done};
                while (true) {
                    std::string line = co_await r.read_line();  // timeout_error escapes: start_server closes
                    if (line.empty()) break;
                    ++s.lines;
                    w.write(line);
                    co_await w.drain();
                }
            },
            "127.0.0.1", 0, o);
        const ringio::endpoint ep(ringio::ip_address::loopback_v4(), srv.port());

        // Slowloris: one byte every 50-100 ms, never a newline, until the server closes.
        auto slowloris = ringio::create_task([](ringio::endpoint to, std::mt19937_64& g) -> ringio::task<std::size_t> {
            ringio::socket c = ringio::socket::create(AF_INET, SOCK_STREAM);
            co_await c.connect(to);
            std::size_t bytes = 0;
            std::byte one[1] = {std::byte{'a'}};
            auto start = std::chrono::steady_clock::now();
            try {
                // The server's close shows as a failed send (EPIPE/ECONNRESET) once the RST
                // came back, or as EOF on a read; poll for the latter between bytes.
                while (std::chrono::steady_clock::now() - start < 5s) {
                    co_await c.send(one);
                    ++bytes;
                    std::byte in[16];
                    std::size_t n = 1;
                    try {
                        n = co_await ringio::wait_for(c.recv(in), std::chrono::milliseconds(50 + g() % 51));
                    } catch (const ringio::timeout_error&) {
                    }
                    if (n == 0) break;  // EOF: closed
                }
            } catch (const std::system_error&) {
                // reset: closed
            }
            auto took = std::chrono::steady_clock::now() - start;
            CHECK(took < 2s);  // 300 ms, and some slack for a loaded machine
            co_await c.close();
            co_return bytes;
        }(ep, rnd));

        // Idle: connects and sends nothing.
        auto idle = ringio::create_task([](ringio::endpoint to) -> ringio::task<bool> {
            ringio::socket c = ringio::socket::create(AF_INET, SOCK_STREAM);
            co_await c.connect(to);
            std::byte in[16];
            bool closed = false;
            try {
                closed = co_await ringio::wait_for(c.recv(in), 3s) == 0;
            } catch (const std::system_error&) {
                closed = true;  // reset
            }
            co_await c.close();
            co_return closed;
        }(ep));

        // Honest but slow: a whole line every 50-100 ms, 20 lines; every read_line() is quick.
        auto honest = ringio::create_task([](std::uint16_t port, std::mt19937_64& g) -> ringio::task<int> {
            std::pair<ringio::stream_reader, ringio::stream_writer> c = co_await ringio::open_connection("127.0.0.1", port);
            int echoed = 0;
            for (int i = 0; i < 20; ++i) {
                co_await ringio::sleep(std::chrono::milliseconds(50 + g() % 51));
                std::string line = "line " + std::to_string(i) + "\n";
                c.second.write(line);
                std::string back = co_await ringio::wait_for(c.first.read_line(), 2s);
                if (back == line) ++echoed;
            }
            c.second.close();
            co_await c.second.wait_closed();
            co_return echoed;
        }(srv.port(), rnd));

        std::size_t loris_bytes = co_await slowloris;
        bool idle_closed = co_await idle;
        int honest_lines = co_await honest;
        MESSAGE("slowloris sent " << loris_bytes << " bytes before it was closed");
        CHECK(loris_bytes < 30);
        CHECK(idle_closed);
        CHECK(honest_lines == 20);
        CHECK(co_await test::eventually([&] { return srv.connections() == 0; }, 5000ms));
        CHECK(s.handlers_done == 3);
        srv.close();
        co_await srv.wait_closed();
    }(ss, rng), 30s);
    CHECK(logs.lines.empty());  // a timed-out client is not a server error
    CHECK(test::open_fds() == fds);
}

}  // namespace

TEST_CASE("slowloris and idle clients are closed by server_options::read_timeout; a slow honest client is not") {
    if constexpr (has_read_timeout<ringio::server_options>)
        slowloris_test<ringio::server_options>();
    else
        MESSAGE("SKIPPED: server_options::read_timeout does not exist yet");
}
