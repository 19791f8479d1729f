// Streams and start_server over real loopback sockets.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>
#include <ringio/server.hpp>
#include <ringio/stream.hpp>

#include <string>

#include "helpers.hpp"

using namespace std::chrono_literals;

namespace {
ringio::task<> echo(ringio::stream_reader r, ringio::stream_writer w) {
    while (true) {
        std::string data = co_await r.read(65536);
        if (data.empty()) break;
        w.write(data);
        co_await w.drain();
    }
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
