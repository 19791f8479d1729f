// Streams receiving into the loop's shared buffer ring: exhaustion (ENOBUFS) with many
// connections and few buffers, pausing a peer that floods a reader that does not read, idle
// connections holding no buffer, the fallback without a ring, and read timeouts.
#include <doctest/doctest.h>

#include <ringio/detail/buffer_ring.hpp>
#include <ringio/detail/frame_cache.hpp>
#include <ringio/ringio.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <random>

#include "helpers.hpp"
#include "net_helpers.hpp"
#include "stress_helpers.hpp"  // heap_in_use()

using namespace std::chrono_literals;
using test::run_bounded;

namespace {

/// Bytes that differ per connection and position, so misrouted or reordered data shows.
std::string pattern(std::size_t conn, std::size_t n) {
    std::string s(n, '\0');
    std::mt19937 gen(static_cast<unsigned>(conn * 7919 + 1));
    for (char& c : s) c = static_cast<char>(gen());
    return s;
}

/// One client: sends `total` bytes in pieces of up to `piece`, reads the echo back, checks it.
ringio::task<bool> echo_client(std::uint16_t port, std::size_t id, std::size_t total, std::size_t piece) {
    auto [r, w] = co_await ringio::open_connection("127.0.0.1", port);
    std::string data = pattern(id, total);
    auto sender = ringio::create_task([](ringio::stream_writer& wr, const std::string& d, std::size_t p) -> ringio::task<> {
        for (std::size_t off = 0; off < d.size(); off += p) {
            wr.write(std::string_view(d).substr(off, p));
            co_await wr.drain();
        }
        wr.write_eof();
    }(w, data, piece));
    std::string got = co_await test::read_to_eof(r);
    co_await sender;
    w.close();
    co_await w.wait_closed();
    co_return got == data;
}

ringio::task<> echo_read(ringio::stream_reader r, ringio::stream_writer w) {
    while (true) {
        std::string s = co_await r.read(65536);
        if (s.empty()) break;
        w.write(s);
        co_await w.drain();
    }
}

/// `conns` clients at once against an echo server; returns how many got every byte back.
ringio::task<std::size_t> echo_storm(std::size_t conns, std::size_t total, std::size_t piece) {
    ringio::server_options o;
    o.backlog = 1024;  // every client connects at once
    auto srv = co_await ringio::start_server(echo_read, "127.0.0.1", 0, o);
    std::vector<ringio::task_handle<bool>> clients;
    for (std::size_t i = 0; i < conns; ++i) clients.push_back(ringio::create_task(echo_client(srv.port(), i, total, piece)));
    std::size_t ok = 0;
    for (auto& c : clients) ok += (co_await c) ? 1 : 0;
    srv.close();
    co_await srv.wait_closed();
    co_return ok;
}

/// A size that a write(std::string&&) adopts rather than copies.
std::size_t adopt_size() { return 64 * 1024; }

}  // namespace

TEST_CASE("200 connections through 4 shared receive buffers: the ring runs dry, nothing is lost") {
    std::size_t fds = test::open_fds();
    ringio::loop_options options;
    options.stream_buffers = 4;
    options.stream_buffer_size = 4096;
    run_bounded([]() -> ringio::task<> {
        auto& loop = ringio::detail::loop_core::running();
        auto& ring = loop.stream_buffers();
        if (loop.backend() == ringio::backend_kind::epoll) REQUIRE(ring);  // in userspace: always there
        if (!ring) {
            MESSAGE("this kernel has no multishot receive into a buffer ring: testing the fallback");
        }
        std::size_t ok = co_await echo_storm(200, 64 * 1024, 5000);
        CHECK(ok == 200);
        if (ring) {
            CHECK(ring->exhausted() > 0);  // receives really found the ring dry (ENOBUFS)
            CHECK(ring->in_use() == 0);     // and every buffer went back
        }
    }(), 60s, options);
    CHECK(test::open_fds() == fds);
}

TEST_CASE("without a shared buffer ring (stream_buffers = 0) streams receive into their own memory") {
    ringio::loop_options options;
    options.stream_buffers = 0;
    run_bounded([]() -> ringio::task<> {
        CHECK(ringio::detail::loop_core::running().stream_buffers() == nullptr);
        CHECK(co_await echo_storm(50, 32 * 1024, 3000) == 50);
    }(), 60s, options);
}

TEST_CASE("idle connections hold no receive buffer and no write side, and a server's read() waiting on one is no coroutine frame") {
    run_bounded([]() -> ringio::task<> {
        auto& ring = ringio::detail::loop_core::running().stream_buffers();
        if (!ring) co_return;
        auto srv = co_await ringio::start_server(echo_read, "127.0.0.1", 0);
        std::vector<std::pair<ringio::stream_reader, ringio::stream_writer>> conns;
        const std::size_t frames_before = ringio::detail::live_frames();
        for (int i = 0; i < 100; ++i) {
            conns.push_back(co_await ringio::open_connection("127.0.0.1", srv.port()));
            conns.back().second.write("ping\n");
            CHECK(co_await conns.back().first.read_line() == "ping\n");
        }
        // Every connection's receive is armed on both sides, and no buffer is held.
        CHECK(ring->in_use() == 0);
        // Each idle server connection keeps its Task and its handler's frame, waiting in
        // read(n): the read itself is an awaiter in that frame (a coroutine would be a third).
        // Neither side keeps a write side (from the frame cache) once its writes have gone.
        CHECK(ringio::detail::live_frames() - frames_before <= 2 * 100 + 5);  // (+ the server's own)
        CHECK(srv.connections() == 100);
        for (auto& [r, w] : conns) w.close();
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("a connection whose writes have all gone keeps no write buffer") {
    // Each server connection writes 192 KiB at once, sees it all sent, then stays open and idle.
    // It must keep no write buffer: kept, 20 connections would hold 3.75 MiB or more.
    constexpr std::size_t conns = 20;
    constexpr std::size_t size = 192 * 1024;
    run_bounded([]() -> ringio::task<> {
        ringio::event idle_done;
        std::size_t drained = 0;
        const std::string block = pattern(7, size);
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader, ringio::stream_writer w) -> ringio::task<> {
                w.set_write_buffer_limits(0);  // drain() returns when everything is sent
                w.write(block);
                co_await w.drain();
                ++drained;
                co_await idle_done.wait();
            },
            "127.0.0.1", 0);
        std::size_t before = stress::heap_in_use();
        // Plain sockets as clients, reading into one fixed buffer: only the server holds memory.
        std::vector<ringio::socket> clients;
        std::vector<std::byte> buf(64 * 1024);
        for (std::size_t i = 0; i < conns; ++i) {
            clients.push_back(ringio::socket::create(AF_INET, SOCK_STREAM));
            co_await clients.back().connect(ringio::endpoint(ringio::ip_address::loopback_v4(), srv.port()));
        }
        for (auto& c : clients) {
            std::size_t got = 0;
            while (got < size) {
                std::size_t n = co_await c.recv(buf);
                REQUIRE(n > 0);
                got += n;
            }
        }
        CHECK(co_await test::eventually([&] { return drained == conns; }, 10s));
        // The buffers may wait in the thread's pool of spare write buffers (bounded), for the
        // next write of any connection; none stays with its connection.
        std::size_t spare = ringio::detail::spare_write_buffer_bytes();
        std::size_t after = stress::heap_in_use();
        CAPTURE(before);
        CAPTURE(after);
        CAPTURE(spare);
        CHECK(spare <= 8 * 1024 * 1024);
        CHECK(after - spare < before + conns * size / 4);
        idle_done.set();
        for (auto& c : clients) co_await c.close();
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("a connection that read a long line keeps no read buffer while it waits for the next") {
    // Each server connection reads one 192 KiB line (its stream's own buffer grows to hold it),
    // then waits for the next line. Waiting, it must hold no read buffer: kept, 20 connections
    // would hold 3.75 MiB or more.
    constexpr std::size_t conns = 20;
    constexpr std::size_t size = 192 * 1024;
    run_bounded([]() -> ringio::task<> {
        std::size_t lines = 0;
        ringio::event all_read;
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader r, ringio::stream_writer) -> ringio::task<> {
                {
                    std::string line = co_await r.read_line();
                    CHECK(line.size() == size + 1);
                }
                if (++lines == conns) all_read.set();
                (void)co_await r.read_line();  // waits: the client sends nothing more, then EOF
            },
            "127.0.0.1", 0, ringio::server_options{.limit = 2 * size});
        std::string line = pattern(3, size);
        std::replace(line.begin(), line.end(), '\n', ' ');
        line += '\n';
        std::size_t before = stress::heap_in_use();
        // Plain sockets as clients: only the server holds memory for the connections.
        std::vector<ringio::socket> clients;
        for (std::size_t i = 0; i < conns; ++i) {
            clients.push_back(ringio::socket::create(AF_INET, SOCK_STREAM));
            co_await clients.back().connect(ringio::endpoint(ringio::ip_address::loopback_v4(), srv.port()));
            co_await clients.back().send(std::as_bytes(std::span(line)));
        }
        CHECK(co_await test::eventually([&] { return all_read.is_set(); }, 10s));
        std::size_t after = stress::heap_in_use();
        CAPTURE(before);
        CAPTURE(after);
        CHECK(after < before + conns * size / 4);
        for (auto& c : clients) co_await c.close();
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("a peer flooding a reader that does not read: the reader takes nothing, its buffer stays bounded") {
    run_bounded([]() -> ringio::task<> {
        ringio::event ready;
        ringio::event go;
        std::size_t peak = 0;
        std::string received;
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader r, ringio::stream_writer) -> ringio::task<> {
                (void)co_await r.read(1);  // arms the receive
                ready.set();
                co_await go.wait();
                peak = r.buffered();
                received = co_await test::read_to_eof(r);
            },
            "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        std::string data = pattern(1, 8 * 1024 * 1024);
        w.write("x");
        co_await ready.wait();
        // Send until the kernel buffers are full too: the writer's buffer stops draining.
        std::size_t sent = 0;
        while (sent < data.size()) {
            w.write(std::string_view(data).substr(sent, 64 * 1024));
            sent += 64 * 1024;
            auto drained = co_await test::thrown<ringio::timeout_error>(ringio::wait_for(w.drain(), 300ms));
            if (drained) break;
        }
        CHECK(sent < data.size());  // the server stopped taking data
        go.set();
        w.write(std::string_view(data).substr(sent));
        w.write_eof();
        co_await w.drain();
        CHECK(co_await test::eventually([&] { return received.size() == data.size(); }, 10s));
        // Data is taken only when the reader asks: what the kernel buffers stays in the kernel.
        CHECK(peak <= 2 * ringio::default_stream_limit + 256 * 1024);
        CHECK(received == data);
        w.close();
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("read_timeout: a read that does not finish in time throws timeout_error and keeps the data") {
    run_bounded([]() -> ringio::task<> {
        auto lst = co_await ringio::start_server(
            [](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                w.write("abc");
                co_await w.drain();
                (void)co_await r.read(65536);  // wait for the client's signal
                w.write("def\n");
                co_await w.drain();
                (void)co_await r.read(65536);
            },
            "127.0.0.1", 0);
        ringio::connect_options o;
        o.read_timeout = 100ms;
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", lst.port(), o);
        auto start = ringio::clock::now();
        CHECK(co_await test::thrown<ringio::timeout_error>(r.read_line()));
        CHECK(ringio::clock::now() - start >= 100ms);
        CHECK(r.buffered() == 3);  // "abc" stays
        w.write("go");
        CHECK(co_await r.read_line() == "abcdef\n");
        w.close();
        lst.close();
        co_await lst.wait_closed();
    }());
}

TEST_CASE("server read_timeout closes a slowloris client and goes on serving others") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        ringio::server_options o;
        o.read_timeout = 300ms;
        auto srv = co_await ringio::start_server(
            [](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                while (true) {
                    std::string line = co_await r.read_line();
                    if (line.empty()) break;
                    w.write(line);
                    co_await w.drain();
                }
            },
            "127.0.0.1", 0, o);
        // The slow client: a byte every 50 ms, never a whole line within 300 ms.
        auto [sr, sw] = co_await ringio::open_connection("127.0.0.1", srv.port());
        auto slow = ringio::create_task([](ringio::stream_writer& w) -> ringio::task<int> {
            for (int i = 0; i < 100; ++i) {
                try {
                    w.write("a");
                    co_await w.drain();
                } catch (const std::system_error&) {
                    co_return i;
                }
                co_await ringio::sleep(50ms);
            }
            co_return -1;
        }(sw));
        // Meanwhile a normal client is served.
        {
            auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
            w.write("hello\n");
            CHECK(co_await r.read_line() == "hello\n");
            w.close();
        }
        // The server closed the slow one: it reads EOF, well before its 100 bytes are out.
        std::string rest = co_await ringio::wait_for(test::read_to_eof(sr), 5s);
        CHECK(rest == "");
        CHECK(co_await test::eventually([&] { return srv.connections() == 0; }));
        slow.cancel();
        (void)co_await test::thrown<ringio::cancelled_error>(std::move(slow));
        sw.close();
        // And it goes on serving.
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        w.write("still\n");
        CHECK(co_await r.read_line() == "still\n");
        w.close();
        srv.close();
        co_await srv.wait_closed();
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("bulk reads with the ring: read_some and read_exactly into large buffers receive straight into them") {
    constexpr std::size_t total = 4 * 1024 * 1024;
    run_bounded([]() -> ringio::task<> {
        auto& ring = ringio::detail::loop_core::running().stream_buffers();
        if (!ring) co_return;  // (stream_buffers = 0: every read is direct anyway)
        const std::string data = pattern(3, total);
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader, ringio::stream_writer w) -> ringio::task<> {
                for (int round = 0; round < 2; ++round) {
                    w.write(data);
                    co_await w.drain();
                }
                w.close();
            },
            "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        // read_some: a receive that is not bounded by a ring buffer returns more than one holds
        // (whatever the kernel has queued, up to the caller's size).
        std::vector<std::byte> buf(1024 * 1024);
        std::string got;
        std::size_t reads = 0;
        std::size_t largest = 0;
        while (got.size() < total) {
            std::size_t n = co_await r.read_some(std::span(buf).first(std::min(buf.size(), total - got.size())));
            REQUIRE(n > 0);
            got.append(reinterpret_cast<const char*>(buf.data()), n);
            largest = std::max(largest, n);
            ++reads;
        }
        CAPTURE(reads);
        CHECK(largest > ring->buffer_size());
        CHECK(got == data);
        CHECK(ring->in_use() == 0);
        // read_exactly into a span: the same, and exact.
        got.clear();
        while (got.size() < total) {
            co_await r.read_exactly(buf);
            got.append(reinterpret_cast<const char*>(buf.data()), buf.size());
        }
        CHECK(got == data);
        CHECK(co_await r.read_some(buf) == 0);  // EOF
        CHECK(r.at_eof());
        CHECK(ring->in_use() == 0);
        w.close();
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("a bulk read cancelled while it waits loses nothing; one waiting when its stream closes returns EOF") {
    run_bounded([]() -> ringio::task<> {
        ringio::event go;
        ringio::event sent;
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                co_await go.wait();
                w.write("hello");
                co_await w.drain();
                sent.set();
                (void)co_await test::read_to_eof(r);
            },
            "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        std::vector<std::byte> buf(256 * 1024);
        // Nothing has come: the read waits in the kernel, then is cancelled by its timeout.
        CHECK((co_await test::thrown<ringio::timeout_error>(ringio::wait_for(r.read_some(buf), 50ms))).has_value());
        go.set();
        co_await sent.wait();
        std::size_t n = co_await ringio::wait_for(r.read_some(buf), 5s);
        CHECK(std::string_view(reinterpret_cast<const char*>(buf.data()), n) == "hello");
        // A read waiting when this side closes: EOF (asyncio: the transport stops reading).
        auto pending = ringio::create_task(r.read_some(buf));
        co_await ringio::sleep(0ms);  // (the read is now waiting for data)
        w.close();
        CHECK(co_await ringio::wait_for(std::move(pending), 5s) == 0);
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("writes that hand over their buffer: mixed with copied writes, every byte arrives in order; large ones are not copied") {
    run_bounded([]() -> ringio::task<> {
        std::string got;
        ringio::event done;
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader r, ringio::stream_writer) -> ringio::task<> {
                got = co_await test::read_to_eof(r);
                done.set();
            },
            "127.0.0.1", 0);
        auto conn = co_await ringio::open_connection("127.0.0.1", srv.port());
        ringio::stream_writer& w = conn.second;  // (clang 14: a lambda cannot capture a structured binding)
        std::string expected;
        auto copy = [&](std::string_view s) {
            w.write(s);
            expected += s;
        };
        copy("head-");
        std::string big1 = pattern(1, 1024 * 1024);
        expected += big1;
        std::size_t before = stress::heap_in_use();
        w.write(std::move(big1));
        std::size_t after = stress::heap_in_use();
        CAPTURE(before);
        CAPTURE(after);
        CHECK(after < before + 64 * 1024);  // a copy would have taken 1 MiB more
        CHECK(big1.empty());
        CHECK(w.buffered() == 5 + 1024 * 1024);
        copy("mid-");
        std::string b2 = pattern(2, 512 * 1024);
        expected += b2;
        std::vector<std::byte> big2(reinterpret_cast<const std::byte*>(b2.data()), reinterpret_cast<const std::byte*>(b2.data()) + b2.size());
        w.write(std::move(big2));
        std::vector<std::string> lines{"a", pattern(3, 100 * 1024), "b", std::string(100, 'c')};
        for (const auto& l : lines) expected += l;
        w.writelines(std::move(lines));
        copy("tail");
        co_await w.drain();
        // The queue emptied: plain writes again, then one more adopted buffer, twice over.
        for (int round = 0; round < 2; ++round) {
            copy("again-");
            std::string big3 = pattern(4 + static_cast<std::size_t>(round), 300 * 1024);
            expected += big3;
            w.write(std::move(big3));
            co_await w.drain();
        }
        w.write_eof();
        co_await ringio::wait_for(done.wait(), 10s);
        CHECK(got.size() == expected.size());
        CHECK(got == expected);
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("an adopted buffer the peer does not read: abort() frees it, close() after write_eof() still sends it whole") {
    run_bounded([]() -> ringio::task<> {
        ringio::event go;
        std::string got;
        ringio::event done;
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader r, ringio::stream_writer) -> ringio::task<> {
                co_await go.wait();
                try {
                    got = co_await test::read_to_eof(r);
                    done.set();
                } catch (const std::system_error&) {  // the aborted connection: reset
                }
            },
            "127.0.0.1", 0);
        std::size_t before = stress::heap_in_use();
        {
            // More than the kernel buffers hold: part of it stays with the stream, part in flight.
            auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
            w.write(pattern(5, 16 * 1024 * 1024));
            CHECK_THROWS_AS(co_await ringio::wait_for(w.drain(), 200ms), ringio::timeout_error);
            w.abort();
            co_await w.wait_closed();
            CHECK_THROWS(w.write(std::string(adopt_size(), 'x')));  // (EPIPE: its send was cut short)
        }
        std::size_t after = stress::heap_in_use();
        CAPTURE(before);
        CAPTURE(after);
        CHECK(after < before + 1024 * 1024);  // the 16 MiB buffer is gone
        // The same, but closed gracefully: every byte reaches the peer once it reads.
        auto [r2, w2] = co_await ringio::open_connection("127.0.0.1", srv.port());
        std::string data = pattern(6, 8 * 1024 * 1024);
        w2.write(std::string(data));
        w2.write_eof();
        w2.close();
        go.set();
        co_await ringio::wait_for(done.wait(), 10s);
        co_await w2.wait_closed();
        CHECK(got.size() == data.size());
        CHECK(got == data);
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("a writer that keeps its adopted-write queue busy for hundreds of buffers: every byte arrives in order") {
    // The queue never empties (drain() returns above the low water mark, the kernel's buffers
    // are small, the peer reads in small pieces), so what was sent is dropped from its front
    // while new buffers join its back.
    run_bounded([]() -> ringio::task<> {
        std::string got;
        ringio::event done;
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader r, ringio::stream_writer sw) -> ringio::task<> {
                sw.transport().set_option(SOL_SOCKET, SO_RCVBUF, 16 * 1024);
                while (true) {
                    std::string s = co_await r.read(4096);
                    if (s.empty()) break;
                    got += s;
                }
                done.set();
            },
            "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        w.set_write_buffer_limits(512 * 1024, 256 * 1024);
        w.transport().set_option(SOL_SOCKET, SO_SNDBUF, 32 * 1024);  // the kernel takes little per send
        std::string expected;
        std::size_t most_queued = 0;
        for (std::size_t i = 0; i < 600; ++i) {
            std::string big = pattern(100 + i, 16 * 1024 + i);  // adopted (at least 16 KiB)
            expected += big;
            w.write(std::move(big));
            if (i % 3 == 0) {  // a small write joins the queue as a copy
                std::string small = fmt::format("<{}>", i);
                expected += small;
                w.write(small);
            }
            most_queued = std::max(most_queued, w.buffered());
            if (i % 8 == 7) co_await w.drain();
        }
        w.write_eof();
        co_await ringio::wait_for(done.wait(), 30s);
        CHECK(most_queued >= 256 * 1024);  // (the queue did stay busy)
        CHECK(got.size() == expected.size());
        CHECK(got == expected);
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("multishot receive: peers send and close while their readers do not read and the ring is dry; every byte and every EOF arrives") {
    // The multishot receive's hard case (../shared/tools/multishot-eof, -H): a receive that
    // finds the ring dry ends with ENOBUFS, the FIN arrives meanwhile, and only a receive armed
    // again sees it. Here 200 connections share 8 buffers, and no reader reads until every peer
    // has sent 20 KiB and its FIN.
    constexpr std::size_t conns = 200;
    constexpr std::size_t size = 20 * 1024;
    ringio::loop_options options;
    options.stream_buffers = 8;
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        ringio::event all_sent;
        std::size_t complete = 0;
        std::size_t handlers = 0;
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader r, ringio::stream_writer) -> ringio::task<> {
                std::string first = co_await r.read_exactly(8);  // arms the receive; the id
                ++handlers;
                co_await all_sent.wait();
                std::string rest = co_await test::read_to_eof(r);
                std::size_t id = std::stoul(first);
                if (rest == pattern(id, size)) ++complete;
            },
            "127.0.0.1", 0, ringio::server_options{.backlog = 1024});
        std::vector<std::pair<ringio::stream_reader, ringio::stream_writer>> clients;
        for (std::size_t i = 0; i < conns; ++i) {
            auto c = co_await ringio::open_connection("127.0.0.1", srv.port());
            c.second.write(fmt::format("{:08}", i));
            clients.push_back(std::move(c));
        }
        CHECK(co_await test::eventually([&] { return handlers == conns; }, 10s));
        for (std::size_t i = 0; i < conns; ++i) {
            clients[i].second.write(pattern(i, size));
            clients[i].second.write_eof();
        }
        for (auto& c : clients) co_await c.second.drain();
        co_await ringio::sleep(0ms);
        all_sent.set();
        CHECK(co_await test::eventually([&] { return complete == conns; }, 20s));
        for (auto& c : clients) c.second.close();
        srv.close();
        co_await srv.wait_closed();
    }(), 60s, options);
    CHECK(test::open_fds() == fds);
}

TEST_CASE("multishot receive: readers that lag behind are paused and resumed many times; data and FIN arriving in the pause lose nothing") {
    run_bounded([]() -> ringio::task<> {
        constexpr std::size_t conns = 50;
        constexpr std::size_t size = 1024 * 1024;
        std::size_t complete = 0;
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader r, ringio::stream_writer) -> ringio::task<> {
                std::string id = co_await r.read_exactly(8);
                std::string all;
                // Small reads, and other work between them: the peer outruns the reader, whose
                // receive is paused whenever more than the pause mark waits, and resumed by the
                // next read that finds nothing.
                for (int i = 0; i < 1'000'000; ++i) {
                    std::string chunk = co_await r.read(1000);
                    if (chunk.empty()) break;
                    all += chunk;
                    if (i % 8 == 0) co_await ringio::sleep(0ms);
                }
                if (all == pattern(std::stoul(id), size)) ++complete;
            },
            "127.0.0.1", 0);
        std::vector<ringio::task_handle<>> senders;
        for (std::size_t i = 0; i < conns; ++i)
            senders.push_back(ringio::create_task([](std::uint16_t port, std::size_t id) -> ringio::task<> {
                auto [r, w] = co_await ringio::open_connection("127.0.0.1", port);
                w.write(fmt::format("{:08}", id));
                w.write(pattern(id, size));  // all at once, the FIN right behind it
                w.write_eof();
                co_await w.drain();
                (void)co_await test::read_to_eof(r);  // until the server closes
                w.close();
                co_await w.wait_closed();
            }(srv.port(), i)));
        for (auto& s : senders) co_await ringio::wait_for(std::move(s), 30s);
        CHECK(complete == conns);
        srv.close();
        co_await srv.wait_closed();
    }(), 60s);
}

TEST_CASE("a peer that resets with data still queued for a reader: the reader gets the data, then the reset or EOF, never a hang") {
    // The reset arrives while no receive is armed (the reader has not read yet, or its receive
    // is paused); the receive armed afterwards must still end once the queued data is read.
    for (bool read_first : {false, true}) {
        CAPTURE(read_first);
        run_bounded([](bool first) -> ringio::task<> {
            ringio::event aborted;
            constexpr std::size_t total = 2 * 1024 * 1024;
            auto srv = co_await ringio::start_server(
                [&](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                    co_await r.read(1);  // the client's go
                    w.write(pattern(9, total));
                    // As much as the client's socket takes; the rest stays here.
                    try {
                        co_await ringio::wait_for(w.drain(), 300ms);
                    } catch (const ringio::timeout_error&) {
                    }
                    w.abort();
                    aborted.set();
                },
                "127.0.0.1", 0);
            auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
            std::string got;
            w.write("g");
            if (first) got = co_await r.read(1000);  // arms the receive; it pauses as data piles up
            co_await ringio::wait_for(aborted.wait(), 10s);
            bool reset = false;
            try {
                while (true) {
                    std::string s = co_await ringio::wait_for(r.read(65536), 10s);
                    if (s.empty()) break;
                    got += s;
                }
            } catch (const std::system_error& e) {
                CHECK_MESSAGE(e.code().value() == ECONNRESET, e.what());
                reset = true;
            }
            MESSAGE(fmt::format("{} bytes, then {}", got.size(), reset ? "the reset" : "EOF"));
            CHECK(got.size() > 64 * 1024);
            CHECK(got == pattern(9, total).substr(0, got.size()));
            w.close();
            co_await w.wait_closed();
            srv.close();
            co_await srv.wait_closed();
        }(read_first));
    }
}

TEST_CASE("a read served from the stream's own buffer leaves no shared buffer taken while its caller runs") {
    // Several buffers may arrive in one batch of completions for a reader that was woken by the
    // first: some go to the stream's buffer, the last stay in ring buffers. A read that serves
    // the stream's buffer must not leave those taken (other connections need them). (This run
    // does not always produce such a batch; it checks the property on whatever batches come.)
    ringio::loop_options options;
    options.stream_buffers = 16;
    run_bounded([]() -> ringio::task<> {
        auto& ring = ringio::detail::loop_core::running().stream_buffers();
        if (!ring) co_return;
        ringio::event go;
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader, ringio::stream_writer w) -> ringio::task<> {
                co_await go.wait();
                w.write(pattern(9, 48 * 1024));
                co_await w.drain();
                co_await go.wait();
            },
            "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        auto first = ringio::create_task(r.read(100));
        co_await ringio::sleep(0ms);  // (the read waits: the receive is armed)
        go.set();
        std::string got = co_await ringio::wait_for(std::move(first), 5s);
        CHECK(got.size() == 100);
        CHECK(ring->in_use() == 0);
        for (int i = 0; i < 3; ++i) {
            got += co_await r.read(100);
            CHECK(ring->in_use() == 0);
        }
        CHECK(got == pattern(9, 48 * 1024).substr(0, got.size()));
        w.close();
        srv.close();
        co_await srv.wait_closed();
    }(), 15s, options);
}
