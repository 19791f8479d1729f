// Streams at their edges: transfers past 32-bit lengths, the transport accessor, a read
// cancelled while its data arrives, read timeouts that start nothing before they are awaited,
// close() with a pending read, read() to EOF. Each case was a confirmed defect (issue 13).
#include <doctest/doctest.h>

#include <ringio/detail/buffer_ring.hpp>
#include <ringio/ringio.hpp>

#include <sys/mman.h>

#include <cstddef>
#include <string>
#include <type_traits>

#include "helpers.hpp"
#include "net_helpers.hpp"

using namespace std::chrono_literals;
using test::close_both;
using test::run_bounded;
using test::tcp_pair;
using test::thrown;

namespace {

/// `n` bytes of address space that read as zeros and cost no memory until written.
struct zero_mapping {
    std::size_t n;
    std::byte* p;
    explicit zero_mapping(std::size_t size) : n(size) {
        void* m = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        REQUIRE(m != MAP_FAILED);
        p = static_cast<std::byte*>(m);
    }
    ~zero_mapping() { ::munmap(p, n); }
    zero_mapping(const zero_mapping&) = delete;
    zero_mapping& operator=(const zero_mapping&) = delete;
    [[nodiscard]] std::span<std::byte> span() const noexcept { return {p, n}; }
};

constexpr std::size_t four_gib = std::size_t{4} << 30;

/// Both ends of a TCP connection on 127.0.0.1 as plain sockets.
ringio::task<std::pair<ringio::socket, ringio::socket>> socket_pair() {
    auto lst = ringio::socket::create(AF_INET, SOCK_STREAM);
    lst.bind(ringio::endpoint(ringio::ip_address::loopback_v4(), 0));
    lst.listen(4);
    auto cli = ringio::socket::create(AF_INET, SOCK_STREAM);
    co_await cli.connect(lst.local_endpoint());
    auto accepted = co_await lst.accept();
    co_return std::pair<ringio::socket, ringio::socket>{std::move(cli), std::move(accepted.first)};
}

ringio::loop_options no_ring() {
    ringio::loop_options o;
    o.stream_buffers = 0;
    return o;
}

}  // namespace

// ---- 9: lengths past 32 bits ----

TEST_CASE("socket send_some and recv of 4 GiB spans are capped, never truncated to 0 bytes") {
    zero_mapping big(four_gib);
    run_bounded([](std::span<std::byte> span) -> ringio::task<> {
        auto [cli, srv] = co_await socket_pair();
        // A send of exactly 4 GiB used to go out as a 0-byte send (and send() looped forever).
        std::size_t sent = co_await cli.send_some(span);
        CHECK(sent > 0);
        CHECK(sent <= std::size_t{1} << 30);
        // A receive into 4 GiB used to ask for 0 bytes and look like EOF.
        std::size_t got = co_await srv.recv(span);
        CHECK(got > 0);
        co_await cli.close();
        co_await srv.close();
    }(big.span()));
}

TEST_CASE("a stream read_some into a 4 GiB span gets the data, not a false EOF (without the buffer ring)") {
    zero_mapping big(four_gib);
    run_bounded(
        [](std::span<std::byte> span) -> ringio::task<> {
            auto [a, b] = co_await tcp_pair();
            b.w.write("hello");
            std::size_t n = co_await a.r.read_some(span);
            CHECK(n == 5);
            CHECK(std::string(reinterpret_cast<const char*>(span.data()), n) == "hello");
            co_await close_both(a, b);
        }(big.span()),
        15s, no_ring());
}

TEST_CASE("a stream write of more than 2 GiB arrives whole, then EOF") {
    const std::size_t n = (std::size_t{2} << 30) + 4097;
    zero_mapping src(n);
    src.p[n - 1] = std::byte{'!'};  // the last byte tells the tail arrived
    run_bounded(
        [](std::span<std::byte> data) -> ringio::task<> {
            auto [a, b] = co_await tcp_pair();
            a.w.write(data);
            a.w.close();
            std::vector<std::byte> buf(1 << 20);
            std::size_t total = 0;
            std::byte last{};
            for (std::size_t i = 0; i < (std::size_t{1} << 20); ++i) {  // bounded: 2 GiB / 4 KiB reads at worst
                std::size_t got = co_await b.r.read_some(buf);
                if (got == 0) break;
                total += got;
                last = buf[got - 1];
            }
            CHECK(total == data.size());
            CHECK(last == std::byte{'!'});
            co_await a.w.wait_closed();
            b.w.close();
            co_await b.w.wait_closed();
        }(src.span()),
        120s);
}

// ---- 10: the transport accessor ----

TEST_CASE("writer.transport() gives options and addresses, never ownership of the stream's socket") {
    static_assert(std::is_const_v<std::remove_reference_t<decltype(std::declval<ringio::stream_writer&>().transport())>>,
                  "transport() must not let user code close, move or release the stream's socket");
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        const ringio::socket& t = a.w.transport();
        t.set_keepalive(true);
        CHECK(t.get_option<int>(SOL_SOCKET, SO_KEEPALIVE) == 1);
        CHECK(t.local_endpoint() == a.w.sockname());
        a.w.write("still works");
        CHECK(co_await b.r.read(100) == "still works");
        co_await close_both(a, b);
    }());
}

// ---- 11: a read cancelled while its data arrives ----

TEST_CASE("a read cancelled while its data arrives pins no shared ring buffer, and loses nothing") {
    ringio::loop_options o;
    o.stream_buffers = 2;  // so few that two pinned buffers would starve every other stream
    run_bounded(
        []() -> ringio::task<> {
            const auto& ring = ringio::detail::loop_core::running().stream_buffers();
            if (!ring) {
                MESSAGE("no provided buffer rings here; skipped");
                co_return;
            }
            auto [a, b] = co_await tcp_pair();
            auto reader = ringio::create_task(a.r.read(100));
            co_await ringio::yield_now();  // the reader waits, its receive armed
            b.w.write("first");
            reader.cancel();  // before it runs again; the data completes its receive meanwhile
            CHECK(co_await thrown<ringio::cancelled_error>(std::move(reader)));
            for (int i = 0; i < 3; ++i) co_await ringio::yield_now();
            CHECK(ring->in_use() == 0);  // what arrived moved to the stream's own buffer
            CHECK(co_await a.r.read(100) == "first");  // and is read next
            // Another connection still gets both buffers.
            auto [c, d] = co_await tcp_pair();
            d.w.write("other");
            CHECK(co_await ringio::wait_for(c.r.read(100), 5s) == "other");
            co_await close_both(c, d);
            co_await close_both(a, b);
        }(),
        15s, o);
}

// ---- 13: a read with a timeout starts nothing before it is awaited ----

TEST_CASE("with read_timeout, a read that is made but never awaited consumes nothing") {
    run_bounded([]() -> ringio::task<> {
        auto [cli, srv] = co_await socket_pair();
        ringio::stream_options opts;
        opts.read_timeout = 5s;
        auto streams = ringio::make_streams(std::move(cli), opts);
        ringio::stream_reader r = std::move(streams.first);
        ringio::stream_writer w = std::move(streams.second);
        {
            auto never_awaited = r.read(10);
        }
        auto also_never = r.read_line();
        co_await srv.send(std::as_bytes(std::span(std::string_view("abc\n"))));
        for (int i = 0; i < 5; ++i) co_await ringio::yield_now();
        CHECK(co_await ringio::wait_for(r.read_line(), 5s) == "abc\n");
        w.close();
        co_await w.wait_closed();
        co_await srv.close();
    }());
}

TEST_CASE("wait_for made but never awaited takes nothing from a queue") {
    ringio::run([]() -> ringio::task<> {
        ringio::queue<int> q;
        {
            auto t = ringio::wait_for(q.get(), 1s);
            q.put_nowait(7);
            co_await ringio::yield_now();
            co_await ringio::yield_now();
        }
        CHECK(q.size() == 1);
        CHECK(co_await q.get() == 7);
    }());
}

// ---- 14: close() with a pending read ----

namespace {
// A pending read on `a`, a flush in progress (the peer does not read), then a.close(): the read
// ends at once with EOF.
ringio::task<> close_with_pending_read_and_flush() {
    auto [a, b] = co_await tcp_pair();
    a.w.transport().set_send_buffer_size(4096);
    b.w.transport().set_recv_buffer_size(4096);
    auto reader = ringio::create_task(a.r.read(100));
    co_await ringio::yield_now();
    a.w.write(std::string(8 << 20, 'x'));  // more than the socket buffers hold: the flush waits
    co_await ringio::yield_now();
    CHECK(a.w.buffered() > 0);
    CHECK_FALSE(reader.done());
    a.w.close();
    CHECK(co_await ringio::wait_for(reader, 2s) == "");  // EOF at once, the flush goes on
    a.w.abort();  // (the peer never reads)
    co_await a.w.wait_closed();
    b.w.close();
    co_await b.w.wait_closed();
}

// Data received and not read when close() is called is still read, then EOF.
ringio::task<> close_keeps_received_data() {
    auto [a, b] = co_await tcp_pair();
    b.w.write("unread");
    CHECK(co_await a.r.read(1) == "u");  // the rest has arrived too (one segment)
    a.w.close();
    CHECK(co_await a.r.read(100) == "nread");
    CHECK(co_await a.r.read(100) == "");
    co_await a.w.wait_closed();
    b.w.close();
    co_await b.w.wait_closed();
}
}  // namespace

TEST_CASE("close() with a pending read while a flush is in progress ends the read with EOF at once") {
    SUBCASE("shared receive buffers") { run_bounded(close_with_pending_read_and_flush()); }
    SUBCASE("a receive per read") { run_bounded(close_with_pending_read_and_flush(), 15s, no_ring()); }
}

TEST_CASE("data received before close() is read before EOF, with and without shared buffers") {
    SUBCASE("shared receive buffers") { run_bounded(close_keeps_received_data()); }
    SUBCASE("a receive per read") { run_bounded(close_keeps_received_data(), 15s, no_ring()); }
}

// ---- 16: read() to EOF ----

TEST_CASE("read() reads to EOF as asyncio's read(); read_all(max) stops past max with the data kept") {
    run_bounded([]() -> ringio::task<> {
        {
            auto [a, b] = co_await tcp_pair();
            std::string big(300'000, 'z');
            b.w.write(big);
            b.w.write("end");
            b.w.write_eof();
            CHECK(co_await a.r.read() == big + "end");
            CHECK(co_await a.r.read() == "");
            CHECK(a.r.at_eof());
            co_await close_both(a, b);
        }
        {
            auto [a, b] = co_await tcp_pair();
            b.w.write(std::string(5000, 'q'));
            b.w.write_eof();
            auto e = co_await thrown<ringio::limit_overrun_error>(a.r.read_all(1000));
            REQUIRE(e);
            CHECK(e->consumed() > 1000);
            CHECK(a.r.buffered() == e->consumed());  // nothing lost: still buffered
            CHECK(co_await a.r.read_all(10000) == std::string(5000, 'q'));
            co_await close_both(a, b);
        }
    }());
}
