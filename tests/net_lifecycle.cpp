// Connection lifetimes: abandoned streams, shutdown of a loop with unflushed data.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>
#include <ringio/server.hpp>
#include <ringio/stream.hpp>

#include <string>

#include "helpers.hpp"

using namespace std::chrono_literals;

TEST_CASE("an abandoned writer is flushed and closed, not leaked") {
    std::size_t fds = test::open_fds();
    ringio::run([]() -> ringio::task<> {
        std::string payload(256 * 1024, 'z');
        // The handler writes, then drops both halves without close().
        auto srv = co_await ringio::start_server(
            [&payload](ringio::stream_reader, ringio::stream_writer w) -> ringio::task<> {
                w.write(payload);
                co_return;
            },
            "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        std::string got;
        while (true) {
            std::string chunk = co_await ringio::wait_for(r.read(65536), 10s);
            if (chunk.empty()) break;
            got += chunk;
        }
        CHECK(got == payload);  // every byte, then EOF
        srv.close();
        co_await ringio::wait_for(srv.wait_closed(), 10s);
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("run() returns even when a writer still holds data for a peer that never reads") {
    std::size_t fds = test::open_fds();
    ringio::run([]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(
            [](ringio::stream_reader, ringio::stream_writer w) -> ringio::task<> {
                std::string chunk(64 * 1024, 'q');
                for (int i = 0; i < 256; ++i) w.write(chunk);  // 16 MiB: more than the socket buffers
                co_return;
            },
            "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        std::string first = co_await ringio::wait_for(r.read(1), 10s);
        CHECK(first == "q");
        // Return with the server, the connection and its unsent megabytes still alive.
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("reads after close() see EOF instead of spinning") {
    ringio::run([]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(
            [](ringio::stream_reader r, ringio::stream_writer) -> ringio::task<> { (void)co_await r.read(65536); }, "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        w.close();  // nothing in flight: closed at once
        CHECK(co_await ringio::wait_for(r.read_line(), 1s) == "");
        CHECK_THROWS_AS(co_await ringio::wait_for(r.read_until("x"), 1s), ringio::incomplete_read_error);
        CHECK(co_await ringio::wait_for(r.read(10), 1s) == "");
        CHECK(r.at_eof());
        srv.close();
        co_await srv.wait_closed();
    }());
}
