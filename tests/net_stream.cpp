// Streams and start_server over real loopback sockets.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>
#include <ringio/server.hpp>
#include <ringio/stream.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <system_error>
#include <tuple>
#include <vector>

#include "helpers.hpp"
#include "net_helpers.hpp"

using namespace std::chrono_literals;

namespace {

// ---- helpers ----

using test::echo;
using test::eventually;
using test::log_capture;
using test::read_to_eof;
using test::run_bounded;
using test::thrown;
using test::conn;
using test::tcp_pair;
using test::close_both;

/// A deterministic, non-periodic byte pattern; byte i of a stream.
char pattern_at(std::size_t i) { return static_cast<char>((i * 131 + (i >> 11) * 7 + 13) & 0xff); }
std::string pattern(std::size_t n, std::size_t from = 0) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) s[i] = pattern_at(from + i);
    return s;
}
/// Index of the first byte of `got` that differs from the pattern (npos: none).
std::size_t mismatch(const std::string& got, std::size_t from = 0) {
    for (std::size_t i = 0; i < got.size(); ++i)
        if (got[i] != pattern_at(from + i)) return i;
    return std::string::npos;
}

bool is_reset_or_pipe(const std::system_error& e) {
    return e.code().value() == ECONNRESET || e.code().value() == EPIPE;
}

ringio::task<> send_pattern(ringio::stream_writer& w, std::size_t n, std::size_t chunk) {
    for (std::size_t off = 0; off < n; off += chunk) {
        w.write(pattern(std::min(chunk, n - off), off));
        co_await w.drain();
    }
    w.write_eof();
}

}  // namespace

TEST_CASE("echo round trip over TCP with start_server and open_connection") {
    std::size_t fds = test::open_fds();
    ringio::run([]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0);
        std::uint16_t port = srv.port();
        REQUIRE(port != 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", port);
        w.write("hello\n");
        co_await w.drain();
        CHECK(co_await r.read_line() == "hello\n");
        std::string big(1 << 20, 'x');
        for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
        w.write(big);
        co_await w.drain();
        CHECK(co_await r.read_exactly(big.size()) == big);
        w.write_eof();
        CHECK(co_await r.read() == "");
        CHECK(r.at_eof());
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
    CHECK(test::open_fds() == fds);
}

// ---- round trips ----

TEST_CASE("echo round trips of 0 B, 1 B, 1000 B, 64 KiB, 1 MiB and 16 MiB keep every byte") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0);
        const std::array<std::size_t, 6> sizes{0, 1, 1000, 64 * 1024, 1 << 20, 16 << 20};
        for (std::size_t n : sizes) {
            CAPTURE(n);
            auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
            auto sender = ringio::create_task(send_pattern(w, n, 256 * 1024));
            std::string got = co_await r.read_exactly(n);
            CHECK(got.size() == n);
            CHECK(mismatch(got) == std::string::npos);
            CHECK(co_await r.read() == "");  // the server closes after our EOF
            CHECK(r.at_eof());
            co_await sender;
            w.close();
            co_await w.wait_closed();
        }
        srv.close();
        co_await srv.wait_closed();
    }(), 30s);
    CHECK(test::open_fds() == fds);
}

// ---- reading ----

TEST_CASE("read(n) returns up to n bytes, then \"\" at EOF") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        b.w.write("hello world");
        CHECK(co_await a.r.read(5) == "hello");
        CHECK(a.r.buffered() == 6);
        CHECK(co_await a.r.read(100) == " world");
        CHECK(co_await a.r.read(0) == "");
        CHECK_FALSE(a.r.at_eof());
        b.w.write_eof();
        CHECK(co_await a.r.read() == "");
        CHECK(a.r.at_eof());
        CHECK(co_await a.r.read() == "");  // EOF stays EOF
        co_await close_both(a, b);
    }());
}

TEST_CASE("read_some copies from the buffer first, then reads straight into the span") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        b.w.write("abcdef");
        CHECK(co_await a.r.read(2) == "ab");
        std::array<std::byte, 3> small{};
        std::size_t n = co_await a.r.read_some(small);
        CHECK(n == 3);
        CHECK(std::string(reinterpret_cast<const char*>(small.data()), n) == "cde");
        std::array<std::byte, 16> buf{};
        n = co_await a.r.read_some(buf);
        CHECK(std::string(reinterpret_cast<const char*>(buf.data()), n) == "f");
        CHECK(a.r.buffered() == 0);
        b.w.write("xyz");
        n = co_await a.r.read_some(buf);  // direct: the internal buffer is empty
        CHECK(std::string(reinterpret_cast<const char*>(buf.data()), n) == "xyz");
        CHECK(co_await a.r.read_some(std::span<std::byte>()) == 0);
        b.w.write_eof();
        CHECK(co_await a.r.read_some(buf) == 0);
        CHECK(a.r.at_eof());
        co_await close_both(a, b);
    }());
}

TEST_CASE("read_exactly, string and span forms, small and large") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        const std::size_t big = 300 * 1024;
        auto sender = ringio::create_task([](ringio::stream_writer& w, std::size_t n) -> ringio::task<> {
            w.write(pattern(10));
            co_await w.drain();
            w.write(pattern(n, 10));
            co_await w.drain();
            w.write(pattern(n, 10 + n));
            co_await w.drain();
            w.write(pattern(5, 10 + 2 * n));
            co_await w.drain();
        }(b.w, big));
        CHECK(co_await a.r.read_exactly(0) == "");
        std::string first = co_await a.r.read_exactly(4);
        CHECK(mismatch(first) == std::string::npos);
        std::array<std::byte, 6> six{};
        co_await a.r.read_exactly(six);
        CHECK(mismatch(std::string(reinterpret_cast<const char*>(six.data()), six.size()), 4) == std::string::npos);
        std::string large = co_await a.r.read_exactly(big);
        CHECK(large.size() == big);
        CHECK(mismatch(large, 10) == std::string::npos);
        std::vector<std::byte> span_big(big);
        co_await a.r.read_exactly(span_big);
        CHECK(mismatch(std::string(reinterpret_cast<const char*>(span_big.data()), big), 10 + big) ==
              std::string::npos);
        std::string tail = co_await a.r.read_exactly(5);
        CHECK(mismatch(tail, 10 + 2 * big) == std::string::npos);
        co_await sender;
        co_await close_both(a, b);
    }());
}

TEST_CASE("read_exactly at EOF throws incomplete_read_error with the partial bytes") {
    run_bounded([]() -> ringio::task<> {
        {
            auto [a, b] = co_await tcp_pair();
            b.w.write("abc");
            b.w.write_eof();
            auto e = co_await thrown<ringio::incomplete_read_error>(a.r.read_exactly(10));
            REQUIRE(e);
            CHECK(e->partial() == "abc");
            CHECK(e->expected() == 10);
            CHECK(a.r.at_eof());
            CHECK(co_await a.r.read() == "");
            co_await close_both(a, b);
        }
        {  // span form
            auto [a, b] = co_await tcp_pair();
            b.w.write("abcd");
            b.w.write_eof();
            std::array<std::byte, 8> buf{};
            auto e = co_await thrown<ringio::incomplete_read_error>(a.r.read_exactly(buf));
            REQUIRE(e);
            CHECK(e->partial() == "abcd");
            CHECK(e->expected() == 8);
            co_await close_both(a, b);
        }
        {  // large (read straight into the result), string form
            auto [a, b] = co_await tcp_pair();
            const std::size_t n = 200 * 1024;
            auto sender = ringio::create_task(send_pattern(b.w, n, 64 * 1024));
            auto e = co_await thrown<ringio::incomplete_read_error>(a.r.read_exactly(3 * n));
            REQUIRE(e);
            CHECK(e->partial().size() == n);
            CHECK(mismatch(e->partial()) == std::string::npos);
            CHECK(e->expected() == 3 * n);
            co_await sender;
            co_await close_both(a, b);
        }
        {  // large, span form
            auto [a, b] = co_await tcp_pair();
            const std::size_t n = 200 * 1024;
            auto sender = ringio::create_task(send_pattern(b.w, n, 64 * 1024));
            std::vector<std::byte> buf(2 * n);
            auto e = co_await thrown<ringio::incomplete_read_error>(a.r.read_exactly(buf));
            REQUIRE(e);
            CHECK(e->partial().size() == n);
            CHECK(mismatch(e->partial()) == std::string::npos);
            CHECK(e->expected() == 2 * n);
            co_await sender;
            co_await close_both(a, b);
        }
    }());
}

TEST_CASE("read_until finds the separator; data past it stays buffered") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        b.w.write("abc||def||tail");
        CHECK(co_await a.r.read_until("||") == "abc||");
        CHECK(co_await a.r.read_until("||") == "def||");
        CHECK(a.r.buffered() == 4);
        CHECK(co_await a.r.read(100) == "tail");
        co_await close_both(a, b);
    }());
}

TEST_CASE("read_until with an empty separator is invalid_argument") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        CHECK(co_await thrown<std::invalid_argument>(a.r.read_until("")));
        // The stream is still usable.
        b.w.write("x\n");
        CHECK(co_await a.r.read_until("\n") == "x\n");
        co_await close_both(a, b);
    }());
}

TEST_CASE("read_until past the limit throws limit_overrun_error and leaves the data in the buffer") {
    run_bounded([]() -> ringio::task<> {
        {  // separator not found within the limit
            auto [a, b] = co_await tcp_pair(16);
            CHECK(a.r.limit() == 16);
            const std::string data = "0123456789abcdefghijXYZ";  // 23 bytes, no separator
            b.w.write(data);
            auto e = co_await thrown<ringio::limit_overrun_error>(a.r.read_until("\n"));
            REQUIRE(e);
            CHECK(e->consumed() > 16);
            CHECK(a.r.buffered() == data.size());
            CHECK(co_await a.r.read_exactly(data.size()) == data);
            b.w.write("ok\n");
            CHECK(co_await a.r.read_until("\n") == "ok\n");
            co_await close_both(a, b);
        }
        {  // separator found, but past the limit
            auto [a, b] = co_await tcp_pair(16);
            const std::string data = std::string(25, 'a') + "\nrest";
            b.w.write(data);
            auto e = co_await thrown<ringio::limit_overrun_error>(a.r.read_until("\n"));
            REQUIRE(e);
            CHECK(e->consumed() == 25);
            CHECK(a.r.buffered() == data.size());
            CHECK(co_await a.r.read(100) == data);
            co_await close_both(a, b);
        }
        {  // the boundary, as asyncio: the separator may start exactly at offset `limit`
            auto [a, b] = co_await tcp_pair(16);
            b.w.write(std::string(16, 'b') + "\n" + std::string(17, 'c') + "\n");
            CHECK(co_await a.r.read_until("\n") == std::string(16, 'b') + "\n");
            CHECK(co_await thrown<ringio::limit_overrun_error>(a.r.read_until("\n")));
            CHECK(co_await a.r.read_exactly(18) == std::string(17, 'c') + "\n");
            co_await close_both(a, b);
        }
    }());
}

TEST_CASE("read_until at EOF without the separator throws incomplete_read_error with everything") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        b.w.write("line\nno separator here");
        b.w.write_eof();
        CHECK(co_await a.r.read_until("\n") == "line\n");
        auto e = co_await thrown<ringio::incomplete_read_error>(a.r.read_until("\n"));
        REQUIRE(e);
        CHECK(e->partial() == "no separator here");
        CHECK(e->expected() == 0);
        CHECK(a.r.buffered() == 0);
        CHECK(a.r.at_eof());
        co_await close_both(a, b);
    }());
}

TEST_CASE("read_until finds a multi-byte separator split across TCP segments") {
    run_bounded([]() -> ringio::task<> {
        const std::string sep = "\r\n\r\n";
        for (std::size_t cut = 1; cut < sep.size(); ++cut) {
            CAPTURE(cut);
            auto [a, b] = co_await tcp_pair();
            auto reader = ringio::create_task(
                [](ringio::stream_reader& r, std::string s) -> ringio::task<std::string> {
                    co_return co_await r.read_until(s);
                }(a.r, sep));
            std::string first = "GET / HTTP/1.1" + sep.substr(0, cut);
            b.w.write(first);
            co_await b.w.drain();
            // The first part has arrived and was searched before the rest is sent.
            CHECK(co_await eventually([&, &ar = a.r] { return ar.buffered() == first.size(); }));
            CHECK_FALSE(reader.done());
            b.w.write(sep.substr(cut) + "body");
            CHECK(co_await reader == "GET / HTTP/1.1" + sep);
            CHECK(co_await a.r.read(100) == "body");
            co_await close_both(a, b);
        }
        {  // one byte per segment
            auto [a, b] = co_await tcp_pair();
            auto reader = ringio::create_task(
                [](ringio::stream_reader& r, std::string s) -> ringio::task<std::string> {
                    co_return co_await r.read_until(s);
                }(a.r, "<END>"));
            const std::string msg = "x<EN<<END>";
            for (std::size_t i = 0; i < msg.size(); ++i) {
                b.w.write(msg.substr(i, 1));
                co_await b.w.drain();
                CHECK(co_await eventually([&, &ar = a.r] { return reader.done() || ar.buffered() == i + 1; }));
            }
            CHECK(co_await reader == msg);
            co_await close_both(a, b);
        }
    }());
}

// ---- read_line ----

TEST_CASE("read_line: lines, then the last line without newline at EOF, then \"\"") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        b.w.write("one\ntwo\n\nthree");
        b.w.write_eof();
        CHECK(co_await a.r.read_line() == "one\n");
        CHECK(co_await a.r.read_line() == "two\n");
        CHECK(co_await a.r.read_line() == "\n");
        CHECK(co_await a.r.read_line() == "three");
        CHECK(co_await a.r.read_line() == "");
        CHECK(co_await a.r.read_line() == "");
        CHECK(a.r.at_eof());
        co_await close_both(a, b);
    }());
}

TEST_CASE("read_line past the limit throws limit_overrun_error and skips the over-long line") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair(16);
        // Sent in one piece, so the long line's newline is buffered when the limit is hit.
        b.w.write("short\n" + std::string(40, 'x') + "\nnext\n" + std::string(16, 'y') + "\n" +
                  std::string(17, 'z') + "\nlast\n");
        CHECK(co_await a.r.read_line() == "short\n");
        auto e = co_await thrown<ringio::limit_overrun_error>(a.r.read_line());
        CHECK(e);
        CHECK(co_await a.r.read_line() == "next\n");
        CHECK(co_await a.r.read_line() == std::string(16, 'y') + "\n");  // exactly at the limit
        CHECK(co_await thrown<ringio::limit_overrun_error>(a.r.read_line()));
        CHECK(co_await a.r.read_line() == "last\n");
        co_await close_both(a, b);
    }());
}

TEST_CASE("a server with limit 16 applies it to its readers") {
    run_bounded([]() -> ringio::task<> {
        std::vector<std::string> seen;
        auto srv = co_await ringio::start_server(
            [&seen](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                seen.push_back(std::to_string(r.limit()));
                for (int i = 0; i < 10; ++i) {
                    try {
                        std::string line = co_await r.read_line();
                        if (line.empty()) break;
                        seen.push_back(line);
                    } catch (const ringio::limit_overrun_error&) {
                        seen.push_back("overrun");
                    }
                }
                w.write("done\n");
            },
            "127.0.0.1", 0, ringio::server_options{.limit = 16});
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        w.write("a\n" + std::string(30, 'l') + "\nb\n");
        w.write_eof();
        CHECK(co_await r.read_line() == "done\n");
        CHECK(seen == std::vector<std::string>{"16", "a\n", "overrun", "b\n"});
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
}

// ---- half-close ----

TEST_CASE("half-close: the client's write_eof reaches the server, which can still answer") {
    run_bounded([]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(
            [](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                std::string all;
                for (int i = 0; i < 1000; ++i) {
                    std::string chunk = co_await r.read(65536);
                    if (chunk.empty()) break;
                    all += chunk;
                }
                // EOF seen; the way back is still open.
                w.write("got " + std::to_string(all.size()) + ": " + all);
                co_await w.drain();
            },
            "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        w.write("question");
        w.write_eof();
        CHECK_FALSE(w.is_closing());
        CHECK_THROWS_AS(w.write("more"), ringio::invalid_state_error);
        CHECK(co_await read_to_eof(r) == "got 8: question");
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("half-close: the server's write_eof reaches the client, which can still send") {
    run_bounded([]() -> ringio::task<> {
        std::string server_got;
        auto srv = co_await ringio::start_server(
            [&server_got](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                w.write("bye");
                w.write_eof();
                server_got = co_await read_to_eof(r);
            },
            "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        CHECK(co_await read_to_eof(r) == "bye");
        CHECK(r.at_eof());
        w.write("late reply");
        co_await w.drain();
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();  // the handler has finished
        CHECK(server_got == "late reply");
    }());
}

// ---- resets ----

TEST_CASE("a peer reset during a read is std::system_error ECONNRESET") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        auto reader = ringio::create_task(thrown<std::system_error>(a.r.read(65536)));
        co_await ringio::yield_now();
        co_await ringio::yield_now();
        CHECK_FALSE(reader.done());
        b.w.abort();  // SO_LINGER 0 + close: RST
        CHECK(b.w.is_closing());
        co_await b.w.wait_closed();
        auto e = co_await reader;
        REQUIRE(e);
        CHECK(e->code().value() == ECONNRESET);
        a.w.close();
        co_await a.w.wait_closed();
    }());
}

TEST_CASE("writing to a peer that reset fails with ECONNRESET or EPIPE, never SIGPIPE") {
    test::require_default_sigpipe();
    run_bounded([]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(
            [](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                (void)co_await r.read(1);
                w.abort();
            },
            "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        std::string chunk(64 * 1024, 'w');
        std::optional<std::system_error> err;
        for (int i = 0; i < 10000 && !err; ++i) {
            try {
                w.write(chunk);
                co_await w.drain();
            } catch (const std::system_error& e) {
                err = e;
            }
            if (i % 16 == 0) co_await ringio::sleep(1ms);  // let the RST arrive
        }
        REQUIRE(err);
        CHECK(is_reset_or_pipe(*err));
        // Later writes keep failing the same way.
        CHECK_THROWS_AS(w.write("x"), std::system_error);
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("a drain blocked when the peer resets ends with ECONNRESET or EPIPE") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        a.w.transport().set_send_buffer_size(16 * 1024);
        std::string chunk(1 << 20, 'd');
        for (int i = 0; i < 4; ++i) a.w.write(chunk);  // far more than the socket buffers hold
        auto drainer = ringio::create_task(thrown<std::system_error>(a.w.drain()));
        CHECK(co_await eventually([&aw = a.w] { return aw.buffered() < 4u << 20; }));  // sending began
        co_await ringio::sleep(20ms);
        CHECK_FALSE(drainer.done());
        b.w.abort();
        co_await b.w.wait_closed();
        auto e = co_await drainer;
        REQUIRE(e);
        CHECK(is_reset_or_pipe(*e));
        CHECK_THROWS_AS(a.w.write("x"), std::system_error);
        a.w.close();
        co_await a.w.wait_closed();
    }());
}

// ---- connect errors ----

TEST_CASE("connecting to a closed port is ECONNREFUSED naming the address") {
    run_bounded([]() -> ringio::task<> {
        std::uint16_t port = 0;
        {
            auto s = ringio::socket::create(AF_INET, SOCK_STREAM);
            s.bind(ringio::endpoint(ringio::ip_address::loopback_v4(), 0));
            port = s.local_endpoint().port();
        }  // closed: nothing listens there
        auto e = co_await thrown<std::system_error>(ringio::open_connection("127.0.0.1", port));
        REQUIRE(e);
        CHECK(e->code().value() == ECONNREFUSED);
        CHECK(std::string(e->what()).find("127.0.0.1:" + std::to_string(port)) != std::string::npos);
        auto e6 = co_await thrown<std::system_error>(ringio::open_connection("::1", port));
        REQUIRE(e6);
        CHECK(e6->code().value() == ECONNREFUSED);
        CHECK(std::string(e6->what()).find("[::1]:" + std::to_string(port)) != std::string::npos);
    }());
}

TEST_CASE("open_connection to a name that does not resolve is resolve_error naming the host") {
    run_bounded([]() -> ringio::task<> {
        auto e = co_await thrown<ringio::resolve_error>(ringio::open_connection("nosuchhost.invalid", 80));
        REQUIRE(e);
        CHECK(e->host() == "nosuchhost.invalid");
        CHECK(std::string(e->what()).find("nosuchhost.invalid") != std::string::npos);
    }(), 30s);
}

// ---- backpressure ----

TEST_CASE("a client that never reads: the handler's drain blocks and its buffer stays bounded") {
    run_bounded([]() -> ringio::task<> {
        struct stats {
            std::size_t written = 0;
            std::size_t max_buffered = 0;
            bool in_drain = false;
            bool drain_waited = false;    // buffered was above high when drain was called
            bool low_after_wait = true;   // ... and at most low when it returned
            bool done = false;
        } st;
        constexpr std::size_t chunk = 64 * 1024;
        constexpr std::size_t total = 8u << 20;
        constexpr std::size_t high = 64 * 1024;  // the default
        auto srv = co_await ringio::start_server(
            [&st](ringio::stream_reader, ringio::stream_writer w) -> ringio::task<> {
                while (st.written < total) {
                    w.write(pattern(chunk, st.written));
                    st.written += chunk;
                    st.max_buffered = std::max(st.max_buffered, w.buffered());
                    bool above = w.buffered() > high;
                    st.in_drain = true;
                    co_await w.drain();
                    st.in_drain = false;
                    if (above) {
                        st.drain_waited = true;
                        if (w.buffered() > high / 4) st.low_after_wait = false;
                    }
                }
                st.done = true;
            },
            "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        // Wait until the handler sits in drain() and makes no progress.
        std::size_t last = 0;
        bool stuck = false;
        for (int i = 0; i < 200 && !stuck; ++i) {
            last = st.written;
            co_await ringio::sleep(20ms);
            stuck = st.in_drain && st.written == last && st.written > 0;
        }
        CHECK(stuck);
        CHECK_FALSE(st.done);
        CHECK(st.written < total);
        CHECK(st.max_buffered <= high + chunk);
        // Now read everything.
        std::string got = co_await r.read_exactly(total);
        CHECK(mismatch(got) == std::string::npos);
        CHECK(co_await r.read() == "");
        CHECK(st.done);
        CHECK(st.drain_waited);
        CHECK(st.low_after_wait);
        CHECK(st.max_buffered <= high + chunk);
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }(), 30s);
}

TEST_CASE("set_write_buffer_limits changes when drain() waits") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        CHECK_THROWS_AS(a.w.set_write_buffer_limits(10, 20), std::invalid_argument);
        a.w.set_write_buffer_limits(1024 * 1024);
        a.w.write(std::string(512 * 1024, 'p'));
        co_await a.w.drain();  // below the high mark: returns at once even though nothing was read
        CHECK(a.w.buffered() > 0);
        std::string got = co_await b.r.read_exactly(512 * 1024);
        CHECK(got == std::string(512 * 1024, 'p'));
        co_await close_both(a, b);
    }());
}

// ---- one reader, one drainer ----

TEST_CASE("two concurrent readers: the second is invalid_state_error, the first still works") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        auto first = ringio::create_task([](ringio::stream_reader& r) -> ringio::task<std::string> {
            co_return co_await r.read_line();
        }(a.r));
        co_await ringio::yield_now();
        co_await ringio::yield_now();
        CHECK_FALSE(first.done());
        CHECK(co_await thrown<ringio::invalid_state_error>(a.r.read(65536)));
        CHECK(co_await thrown<ringio::invalid_state_error>(a.r.read_line()));
        CHECK(co_await thrown<ringio::invalid_state_error>(a.r.read_until("x")));
        CHECK(co_await thrown<ringio::invalid_state_error>(a.r.read_exactly(1)));
        std::array<std::byte, 4> buf{};
        CHECK(co_await thrown<ringio::invalid_state_error>(a.r.read_some(buf)));
        CHECK(co_await thrown<ringio::invalid_state_error>(a.r.read_exactly(buf)));
        b.w.write("line\nafter\n");
        CHECK(co_await first == "line\n");
        CHECK(co_await a.r.read_line() == "after\n");  // reading is free again
        co_await close_both(a, b);
    }());
}

TEST_CASE("two concurrent drain() calls: the second is invalid_state_error") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        a.w.transport().set_send_buffer_size(16 * 1024);
        const std::size_t n = 4u << 20;
        a.w.write(pattern(n));
        auto first = ringio::create_task(a.w.drain());
        co_await ringio::yield_now();
        co_await ringio::yield_now();
        CHECK_FALSE(first.done());
        CHECK(co_await thrown<ringio::invalid_state_error>(a.w.drain()));
        a.w.transport().set_send_buffer_size(4 << 20);  // small buffers make loopback slow
        std::string got = co_await b.r.read_exactly(n);
        CHECK(mismatch(got) == std::string::npos);
        co_await first;
        co_await a.w.drain();  // free again
        co_await close_both(a, b);
    }());
}

// ---- close ----

TEST_CASE("write after close() is invalid_state_error") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        a.w.close();
        CHECK(a.w.is_closing());
        CHECK_THROWS_AS(a.w.write("x"), ringio::invalid_state_error);
        co_await a.w.wait_closed();
        CHECK_THROWS_AS(a.w.write("x"), ringio::invalid_state_error);
        a.w.close();  // idempotent
        co_await a.w.wait_closed();
        CHECK(co_await b.r.read() == "");
        b.w.close();
        co_await b.w.wait_closed();
    }());
}

TEST_CASE("close() + wait_closed() flushes everything written before") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        {  // more than the socket buffers: the peer reads while we wait
            auto [a, b] = co_await tcp_pair();
            const std::size_t n = 4u << 20;
            for (std::size_t off = 0; off < n; off += 1 << 20) a.w.write(pattern(1 << 20, off));
            a.w.close();
            auto reader = ringio::create_task(read_to_eof(b.r));
            co_await a.w.wait_closed();
            std::string got = co_await reader;
            CHECK(got.size() == n);
            CHECK(mismatch(got) == std::string::npos);
            b.w.close();
            co_await b.w.wait_closed();
        }
        {  // small: closed before the peer reads anything
            auto [a, b] = co_await tcp_pair();
            a.w.write("all of it");
            a.w.close();
            co_await a.w.wait_closed();
            CHECK(co_await read_to_eof(b.r) == "all of it");
            b.w.close();
            co_await b.w.wait_closed();
        }
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("streams over a socketpair: the peer is an unnamed Unix address, also after a reset") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        int fd[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fd) == 0);
        auto a = ringio::make_streams(ringio::socket(fd[0]));  // not a structured binding: GCC 12
        auto b = ringio::make_streams(ringio::socket(fd[1]));
        CHECK(a.second.peername().is_unix());
        CHECK(a.second.peername().path().empty());
        CHECK(a.second.peername() == b.second.sockname());
        a.second.write("ping");
        CHECK(co_await b.first.read_exactly(4) == "ping");
        b.second.abort();
        co_await b.second.wait_closed();
        // The error names the peer as recorded when the stream was made.
        auto e = co_await test::thrown<std::system_error>([](ringio::stream_writer& w) -> ringio::task<> {
            for (int i = 0; i < 100; ++i) {  // until the kernel reports the peer gone
                w.write(std::string(64 * 1024, 'x'));
                co_await w.drain();
            }
        }(a.second));
        REQUIRE(e);
        CHECK(a.second.peername().is_unix());
        a.second.close();
        co_await a.second.wait_closed();
    }());
    CHECK(test::open_fds() == fds);
}

// A stream records its peer's address when it is made (a short one in the stream state, a long
// one on the heap), so that peername() and error messages still name it after a reset.
TEST_CASE("peername() is recorded for every kind of peer: IPv4, IPv6, unnamed, abstract and named Unix, also after a reset") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        // A connected pair whose client is bound to `client` (nothing: the kernel picks).
        auto pair = [](const ringio::endpoint& server, std::optional<ringio::endpoint> client) {
            ringio::socket l = ringio::socket::create(server.family(), SOCK_STREAM);
            l.bind(server);
            l.listen(1);
            ringio::socket c = ringio::socket::create(server.family(), SOCK_STREAM);
            if (client) c.bind(*client);
            ringio::endpoint at = l.local_endpoint();
            REQUIRE(::connect(c.fd(), at.data(), at.size()) == 0);  // (completes in the backlog)
            int a = ::accept4(l.fd(), nullptr, nullptr, SOCK_CLOEXEC);
            REQUIRE(a >= 0);
            ringio::endpoint client_at = c.local_endpoint();
            return std::make_tuple(ringio::make_streams(ringio::socket(a)), ringio::make_streams(std::move(c)), client_at);
        };
        char tmpl[] = "/tmp/ringio-peer-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        const std::string dir = tmpl;
        std::vector<std::pair<ringio::endpoint, std::optional<ringio::endpoint>>> cases = {
            {*ringio::endpoint::parse("127.0.0.1:0"), std::nullopt},
            {*ringio::endpoint::parse("[::1]:0"), std::nullopt},
            {ringio::endpoint::unix_path(dir + "/s1"), std::nullopt},                               // unnamed peer
            {ringio::endpoint::unix_path(dir + "/s2"), ringio::endpoint::unix_path("@ringio-p" + std::to_string(::getpid()))},  // abstract
            {ringio::endpoint::unix_path(dir + "/s3"), ringio::endpoint::unix_path(dir + "/client")},  // named
        };
        for (const auto& c : cases) {  // (no structured bindings: GCC 12 in coroutines)
            const ringio::endpoint& server = c.first;
            const std::optional<ringio::endpoint>& client = c.second;
            auto made = pair(server, client);
            auto& accepted = std::get<0>(made);
            auto& connecting = std::get<1>(made);
            const ringio::endpoint& client_at = std::get<2>(made);
            INFO("server at ", server.to_string(), ", client at ", client_at.to_string());
            CHECK(accepted.second.peername() == client_at);
            CHECK(accepted.second.peername().to_string() == client_at.to_string());
            if (client) CHECK(accepted.second.peername() == *client);
            connecting.second.abort();
            co_await connecting.second.wait_closed();
            CHECK(accepted.second.peername() == client_at);  // recorded, not asked again
            accepted.second.close();
            co_await accepted.second.wait_closed();
        }
        for (const char* f : {"/s1", "/s2", "/s3", "/client"}) ::unlink((dir + f).c_str());
        ::rmdir(dir.c_str());
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("peername() and sockname() of both ends agree") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        CHECK(a.w.peername() == b.w.sockname());
        CHECK(a.w.sockname() == b.w.peername());
        CHECK(a.w.peername().address() == ringio::ip_address::loopback_v4());
        co_await close_both(a, b);
        auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        CHECK(w.transport().get_option<int>(IPPROTO_TCP, TCP_NODELAY) != 0);  // as asyncio
        CHECK(w.peername().port() == srv.port());
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
}

// ---- cancellation ----

TEST_CASE("cancelling a read or a drain leaks no fd and loses no data") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        {  // read
            auto [a, b] = co_await tcp_pair();
            auto reader = ringio::create_task(a.r.read(65536));
            co_await ringio::yield_now();
            co_await ringio::yield_now();
            CHECK_FALSE(reader.done());
            reader.cancel();
            CHECK(co_await thrown<ringio::cancelled_error>(std::move(reader)));
            b.w.write("after");
            CHECK(co_await a.r.read(65536) == "after");  // the stream still works
            co_await close_both(a, b);
        }
        {  // drain with a peer that does not read
            auto [a, b] = co_await tcp_pair();
            a.w.transport().set_send_buffer_size(16 * 1024);
            const std::size_t n = 4u << 20;
            a.w.write(pattern(n));
            auto drainer = ringio::create_task(a.w.drain());
            co_await ringio::yield_now();
            co_await ringio::yield_now();
            CHECK_FALSE(drainer.done());
            drainer.cancel();
            CHECK(co_await thrown<ringio::cancelled_error>(std::move(drainer)));
            // The buffered data is still sent.
            a.w.transport().set_send_buffer_size(4 << 20);  // small buffers make loopback slow
            std::string got = co_await b.r.read_exactly(n);
            CHECK(mismatch(got) == std::string::npos);
            co_await close_both(a, b);
        }
        {  // open_connection cancelled before it connects
            auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0);
            auto h = ringio::create_task(ringio::open_connection("127.0.0.1", srv.port()));
            h.cancel();
            CHECK(co_await thrown<ringio::cancelled_error>(std::move(h)));
            srv.close();
            co_await srv.wait_closed();
        }
    }());
    CHECK(test::open_fds() == fds);
}

/// Bytes the kernel holds for `s`, not yet received (FIONREAD).
int kernel_queued(const ringio::socket& s) {
    int n = -1;
    ::ioctl(s.fd(), FIONREAD, &n);
    return n;
}

TEST_CASE("cancelling read_exactly with part of the data there loses nothing") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        // 6 and 4 KiB: gathered in the buffer; 200 KiB: received straight into the result.
        const std::array<std::size_t, 3> wants{6, 4096, 200 * 1024};
        for (int form = 0; form < 2; ++form) {
            for (std::size_t want : wants) {
                CAPTURE(form);
                CAPTURE(want);
                auto [a, b] = co_await tcp_pair();
                b.w.write("abc");
                // The three bytes are in the kernel before the read starts ...
                CHECK(co_await eventually([&aw = a.w] { return kernel_queued(aw.transport()) == 3; }, 2000ms));
                std::vector<std::byte> buf(want);
                auto reader = form == 0 ? ringio::create_task([](ringio::stream_reader& r, std::size_t n) -> ringio::task<> {
                    (void)co_await r.read_exactly(n);
                }(a.r, want))
                                        : ringio::create_task(a.r.read_exactly(buf));
                // ... and the read has taken them and waits for more.
                CHECK(co_await eventually([&aw = a.w] { return kernel_queued(aw.transport()) == 0; }, 2000ms));
                co_await ringio::yield_now();
                co_await ringio::yield_now();
                CHECK_FALSE(reader.done());
                reader.cancel();
                CHECK(co_await thrown<ringio::cancelled_error>(std::move(reader)));
                CHECK(a.r.buffered() == 3);  // back in the buffer
                b.w.write("def");
                CHECK(co_await ringio::wait_for(a.r.read_exactly(6), 2s) == "abcdef");
                co_await close_both(a, b);
            }
        }
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("a connection dropped mid-read with its loop leaks no fd") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        // A read left pending when the streams go away: the socket is closed once it ends.
        auto reader = ringio::create_task([](conn c) -> ringio::task<> { (void)co_await c.r.read(65536); }(std::move(a)));
        co_await ringio::yield_now();
        co_await ringio::yield_now();
        reader.cancel();
        CHECK(co_await thrown<ringio::cancelled_error>(std::move(reader)));
        CHECK(co_await b.r.read() == "");  // the peer sees the close
        b.w.close();
        co_await b.w.wait_closed();
    }());
    CHECK(test::open_fds() == fds);
}

// ---- IPv6 and Unix sockets ----

TEST_CASE("streams over IPv6 loopback") {
    run_bounded([]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(echo, "::1", 0);
        REQUIRE(srv.sockets().size() == 1);
        CHECK(srv.sockets().front().local_endpoint().family() == AF_INET6);
        auto [r, w] = co_await ringio::open_connection("::1", srv.port());
        CHECK(w.peername() == ringio::endpoint(ringio::ip_address::loopback_v6(), srv.port()));
        CHECK(w.sockname().address() == ringio::ip_address::loopback_v6());
        w.write(pattern(100000));
        w.write_eof();
        std::string got = co_await read_to_eof(r);
        CHECK(got.size() == 100000);
        CHECK(mismatch(got) == std::string::npos);
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("streams over a Unix socket path and an abstract name") {
    std::size_t fds = test::open_fds();
    char tmpl[] = "/tmp/ringio-test-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    const std::string dir = tmpl;
    const std::string path = dir + "/echo.sock";
    run_bounded([](std::string file) -> ringio::task<> {
        const std::vector<std::string> places{file, "@ringio-test-" + std::to_string(::getpid())};
        for (const std::string& where : places) {
            CAPTURE(where);
            auto srv = co_await ringio::start_unix_server(echo, where);
            CHECK(srv.port() == 0);
            REQUIRE(srv.sockets().size() == 1);
            CHECK(srv.sockets().front().local_endpoint().path() == where);
            auto [r, w] = co_await ringio::open_unix_connection(where);
            CHECK(w.peername().path() == where);
            CHECK(w.peername().is_unix());
            w.write("hello\n");
            CHECK(co_await r.read_line() == "hello\n");
            w.write(pattern(300000));
            w.write_eof();
            std::string got = co_await read_to_eof(r);
            CHECK(mismatch(got) == std::string::npos);
            CHECK(got.size() == 300000);
            w.close();
            co_await w.wait_closed();
            srv.close();
            co_await srv.wait_closed();
            if (where[0] == '/') {
                struct stat sb {};
                CHECK(::stat(where.c_str(), &sb) != 0);  // the socket file is removed on close
            }
        }
        // Nothing listens any more.
        auto e = co_await thrown<std::system_error>(ringio::open_unix_connection(file));
        REQUIRE(e);
        CHECK(e->code().value() == ENOENT);
        CHECK(std::string(e->what()).find(file) != std::string::npos);
    }(path));
    ::unlink(path.c_str());
    ::rmdir(dir.c_str());
    CHECK(test::open_fds() == fds);
}

// ---- connect options ----

TEST_CASE("open_connection tries every address and lists every failure") {
    run_bounded([]() -> ringio::task<> {
        std::uint16_t port = 0;
        {
            auto s = ringio::socket::create(AF_INET6, SOCK_STREAM);
            s.set_v6only(false);
            s.bind(ringio::endpoint(ringio::ip_address::any_v6(), 0));  // reserves the port on both families
            port = s.local_endpoint().port();
        }
        // "" resolves to 127.0.0.1 and ::1.
        auto e = co_await thrown<std::system_error>(ringio::open_connection("", port));
        REQUIRE(e);
        CHECK(e->code().value() == ECONNREFUSED);
        std::string what = e->what();
        CHECK(what.find("127.0.0.1:" + std::to_string(port)) != std::string::npos);
        CHECK(what.find("[::1]:" + std::to_string(port)) != std::string::npos);
        // The first address that answers wins: only ::1 listens.
        auto srv = co_await ringio::start_server(echo, "::1", port);
        auto [r, w] = co_await ringio::open_connection("", port);
        CHECK(w.peername().address() == ringio::ip_address::loopback_v6());
        w.write("x\n");
        CHECK(co_await r.read_line() == "x\n");
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("connect_options: limit, local_address, nodelay and timeout") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0);
        {
            ringio::connect_options o;
            o.limit = 100;
            o.nodelay = false;
            o.local_address = ringio::endpoint(ringio::ip_address::loopback_v4(), 0);
            auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port(), o);
            CHECK(r.limit() == 100);
            CHECK(w.transport().get_option<int>(IPPROTO_TCP, TCP_NODELAY) == 0);
            CHECK(w.sockname().address() == ringio::ip_address::loopback_v4());
            w.close();
            co_await w.wait_closed();
        }
        {  // a fixed local port
            std::uint16_t local_port = 0;
            {
                auto s = ringio::socket::create(AF_INET, SOCK_STREAM);
                s.bind(ringio::endpoint(ringio::ip_address::loopback_v4(), 0));
                local_port = s.local_endpoint().port();
            }
            ringio::connect_options o;
            o.local_address = ringio::endpoint(ringio::ip_address::loopback_v4(), local_port);
            auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port(), o);
            CHECK(w.sockname().port() == local_port);
            w.write("y\n");
            CHECK(co_await r.read_line() == "y\n");
            w.close();
            co_await w.wait_closed();
        }
        srv.close();
        co_await srv.wait_closed();

        // A connect that cannot complete: the accept queue of a backlog-0 listener is full.
        auto lst = ringio::socket::create(AF_INET, SOCK_STREAM);
        lst.bind(ringio::endpoint(ringio::ip_address::loopback_v4(), 0));
        lst.listen(0);
        auto filler = ringio::socket::create(AF_INET, SOCK_STREAM);
        co_await filler.connect(lst.local_endpoint());
        std::uint16_t port = lst.local_endpoint().port();
        ringio::connect_options o;
        o.timeout = 100ms;
        auto t0 = std::chrono::steady_clock::now();
        auto e = co_await thrown<std::system_error>(ringio::open_connection("127.0.0.1", port, o));
        auto took = std::chrono::steady_clock::now() - t0;
        REQUIRE(e);
        CHECK(e->code().value() == ETIMEDOUT);
        CHECK(std::string(e->what()).find("127.0.0.1:" + std::to_string(port)) != std::string::npos);
        CHECK(took >= 100ms);
        CHECK(took < 2s);
        // Cancelled while connecting: cancelled_error, and no socket is left open.
        auto h = ringio::create_task(ringio::open_connection("127.0.0.1", port));
        co_await ringio::sleep(20ms);
        CHECK_FALSE(h.done());
        h.cancel();
        CHECK(co_await thrown<ringio::cancelled_error>(std::move(h)));
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("accepted connections have TCP_NODELAY on") {
    run_bounded([]() -> ringio::task<> {
        int nodelay = -1;
        auto srv = co_await ringio::start_server(
            [&nodelay](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                nodelay = w.transport().get_option<int>(IPPROTO_TCP, TCP_NODELAY);
                co_await echo(std::move(r), std::move(w));
            },
            "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        w.write("z\n");
        CHECK(co_await r.read_line() == "z\n");
        CHECK(nodelay != 0);
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("the peer's address survives a reset and a close") {
    run_bounded([]() -> ringio::task<> {
        {  // client side: the error of a read names the server
            auto srv = co_await ringio::start_server(
                [](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                    (void)co_await r.read(1);
                    w.abort();
                },
                "127.0.0.1", 0);
            std::string where = "127.0.0.1:" + std::to_string(srv.port());
            auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
            w.write("x");
            auto e = co_await thrown<std::system_error>(r.read(65536));
            REQUIRE(e);
            CHECK(e->code().value() == ECONNRESET);
            CHECK(std::string(e->what()).find(where) != std::string::npos);
            CHECK(w.peername().to_string() == where);
            w.close();
            co_await w.wait_closed();
            CHECK(w.peername().to_string() == where);  // as asyncio's cached 'peername'
            srv.close();
            co_await srv.wait_closed();
        }
        {  // server side: a handler failing after the reset is logged with the peer's address
            log_capture logs;
            std::string seen_peer;
            bool got_first = false;
            auto srv = co_await ringio::start_server(
                [&seen_peer, &got_first](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                    (void)co_await r.read(1);
                    got_first = true;
                    try {
                        (void)co_await r.read(1);  // the client resets meanwhile
                    } catch (const std::system_error&) {
                        seen_peer = w.peername().to_string();
                        throw;
                    }
                },
                "127.0.0.1", 0);
            auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
            std::string me = w.sockname().to_string();
            w.write("x");
            co_await w.drain();
            CHECK(co_await eventually([&] { return got_first; }));
            w.abort();
            co_await w.wait_closed();
            srv.close();
            co_await srv.wait_closed();
            CHECK(seen_peer == me);
            REQUIRE(logs.lines.size() == 1);
            CHECK(logs.lines[0].find(me) != std::string::npos);
        }
    }());
}

// ---- more writer lifecycles ----

TEST_CASE("write_eof() after a large unflushed write sends everything, then EOF") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        const std::size_t n = 4u << 20;
        a.w.write(pattern(n));
        a.w.write_eof();
        a.w.write_eof();  // idempotent
        CHECK(a.w.can_write_eof());
        CHECK_THROWS_AS(a.w.write("x"), ringio::invalid_state_error);
        std::string got = co_await read_to_eof(b.r);
        CHECK(got.size() == n);
        CHECK(mismatch(got) == std::string::npos);
        // The other direction still works.
        b.w.write("reply");
        b.w.write_eof();
        CHECK(co_await read_to_eof(a.r) == "reply");
        co_await close_both(a, b);
    }());
}

TEST_CASE("abort() ends a pending local read and a blocked drain") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        a.w.transport().set_send_buffer_size(16 * 1024);
        a.w.write(pattern(4u << 20));
        auto reader = ringio::create_task(a.r.read(65536));
        auto drainer = ringio::create_task(thrown<std::system_error>(a.w.drain()));
        co_await ringio::yield_now();
        co_await ringio::yield_now();
        CHECK_FALSE(reader.done());
        CHECK_FALSE(drainer.done());
        a.w.abort();
        CHECK(a.w.is_closing());
        CHECK(co_await reader == "");  // the reading side ends as EOF
        (void)co_await drainer;        // ends, with or without an error
        co_await a.w.wait_closed();
        CHECK(a.w.buffered() == 0);    // the rest was dropped
        // The peer sees a reset (or EOF once the reset was consumed), never the whole payload.
        std::string got;
        try {
            got = co_await read_to_eof(b.r);
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == ECONNRESET);
        }
        CHECK(got.size() < (4u << 20));
        b.w.close();
        co_await b.w.wait_closed();
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("close() while a drain is blocked: the data is flushed and the drain returns") {
    run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await tcp_pair();
        a.w.transport().set_send_buffer_size(16 * 1024);
        const std::size_t n = 2u << 20;
        a.w.write(pattern(n));
        auto drainer = ringio::create_task(a.w.drain());
        co_await ringio::yield_now();
        co_await ringio::yield_now();
        CHECK_FALSE(drainer.done());
        a.w.close();
        a.w.transport().set_send_buffer_size(4 << 20);  // small buffers make loopback slow
        std::string got = co_await read_to_eof(b.r);
        CHECK(got.size() == n);
        CHECK(mismatch(got) == std::string::npos);
        co_await drainer;
        co_await a.w.wait_closed();
        b.w.close();
        co_await b.w.wait_closed();
    }());
}

TEST_CASE("make_streams with limit 0 is invalid_argument and closes the socket") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        auto s = ringio::socket::create(AF_INET, SOCK_STREAM);
        CHECK_THROWS_AS(ringio::make_streams(std::move(s), ringio::stream_options{0}), std::invalid_argument);
        co_return;
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("half-close over a Unix socket") {
    run_bounded([]() -> ringio::task<> {
        std::string name = "@ringio-halfclose-" + std::to_string(::getpid());
        auto srv = co_await ringio::start_unix_server(
            [](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                std::string all = co_await read_to_eof(r);
                w.write("len " + std::to_string(all.size()));
            },
            name);
        auto [r, w] = co_await ringio::open_unix_connection(name);
        w.write(pattern(100000));
        w.write_eof();
        CHECK(co_await read_to_eof(r) == "len 100000");
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
}
