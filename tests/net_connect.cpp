// open_connection: trying several addresses, and its error messages, over real loopback sockets.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>
#include <ringio/server.hpp>
#include <ringio/stream.hpp>

#include <cerrno>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "helpers.hpp"
#include "net_helpers.hpp"

using namespace std::chrono_literals;

namespace {

using test::contains;
using test::echo;
using test::run_bounded;
using test::thrown;

/// A TCP port on `address` that nothing listens on (bound, then closed).
std::uint16_t closed_port(const ringio::ip_address& address) {
    auto s = ringio::socket::create(address.family(), SOCK_STREAM);
    s.bind(ringio::endpoint(address, 0));
    return s.local_endpoint().port();
}

ringio::endpoint v4(std::uint16_t port) { return ringio::endpoint(ringio::ip_address::loopback_v4(), port); }

/// Sends a line through an echoing connection and checks it comes back; then closes.
ringio::task<> echo_check(std::pair<ringio::stream_reader, ringio::stream_writer> conn) {
    auto& [r, w] = conn;
    w.write("ping\n");
    CHECK(co_await r.read_line() == "ping\n");
    w.close();
    co_await w.wait_closed();
}

/// How many times `needle` occurs in `haystack`.
std::size_t occurrences(std::string_view haystack, std::string_view needle) {
    std::size_t n = 0;
    for (auto at = haystack.find(needle); at != std::string_view::npos; at = haystack.find(needle, at + needle.size())) ++n;
    return n;
}

/// An address where a connect hangs: a listener with backlog 0 whose accept queue is full (one
/// connection nobody accepts), so the kernel drops further SYNs and a connect waits for the
/// SYN retries (over two minutes with the default tcp_syn_retries = 6).
struct hanging_address {
    ringio::socket listener;
    ringio::socket filler;
    ringio::endpoint where;
};
ringio::task<hanging_address> make_hanging(ringio::ip_address address) {
    hanging_address h;
    h.listener = ringio::socket::create(address.family(), SOCK_STREAM);
    h.listener.bind(ringio::endpoint(address, 0));
    h.listener.listen(0);
    h.where = h.listener.local_endpoint();
    h.filler = ringio::socket::create(address.family(), SOCK_STREAM);
    co_await h.filler.connect(h.where);
    co_return h;
}

}  // namespace

TEST_CASE("open_connection over a list of endpoints: tried in order, the first that accepts wins") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0);
        std::uint16_t refused = closed_port(ringio::ip_address::loopback_v4());
        std::vector<ringio::endpoint> eps;
        eps.push_back(v4(refused));
        eps.push_back(v4(srv.port()));
        auto conn = co_await ringio::open_connection(eps);
        CHECK(conn.second.peername() == v4(srv.port()));
        co_await echo_check(std::move(conn));

        // An empty list is the caller's mistake.
        auto e = co_await thrown<std::invalid_argument>(ringio::open_connection(std::vector<ringio::endpoint>{}));
        CHECK(e);
        srv.close();
        co_await srv.wait_closed();
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("a failed open_connection names every attempt once and the errno text once") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        const std::string refused_text = std::system_category().message(ECONNREFUSED);
        std::uint16_t port = closed_port(ringio::ip_address::loopback_v4());
        {  // one address
            auto e = co_await thrown<std::system_error>(ringio::open_connection("127.0.0.1", port));
            REQUIRE(e);
            MESSAGE("one address refused: ", std::string(e->what()));
            CHECK(e->code().value() == ECONNREFUSED);
            CHECK(std::string(e->what()) == "ringio: connect to 127.0.0.1:" + std::to_string(port) + ": " + refused_text);
        }
        {  // two addresses failing alike: both named, the errno text once
            std::uint16_t port6 = closed_port(ringio::ip_address::loopback_v6());
            std::vector<ringio::endpoint> eps;
            eps.push_back(v4(port));
            eps.push_back(ringio::endpoint(ringio::ip_address::loopback_v6(), port6));
            auto e = co_await thrown<std::system_error>(ringio::open_connection(eps));
            REQUIRE(e);
            MESSAGE("two addresses refused: ", std::string(e->what()));
            CHECK(e->code().value() == ECONNREFUSED);
            CHECK(std::string(e->what()) == fmt::format("ringio: connect to {}, {}: {}", eps[0], eps[1], refused_text));
        }
        {  // different errors: each address once, each errno text once, the last one's errno
            hanging_address hang = co_await make_hanging(ringio::ip_address::loopback_v4());
            std::vector<ringio::endpoint> eps;
            eps.push_back(v4(port));
            eps.push_back(hang.where);
            eps.push_back(v4(port));  // the same address twice is tried twice
            ringio::connect_options o;
            o.timeout = 50ms;
            auto e = co_await thrown<std::system_error>(ringio::open_connection(eps, o));
            REQUIRE(e);
            std::string what = e->what();
            MESSAGE("refused, timed out, refused: ", what);
            CHECK(e->code().value() == ECONNREFUSED);
            CHECK(occurrences(what, refused_text) == 1);
            CHECK(occurrences(what, std::system_category().message(ETIMEDOUT)) == 1);
            CHECK(occurrences(what, hang.where.to_string()) == 1);
            CHECK(occurrences(what, v4(port).to_string()) == 2);
            CHECK(what == fmt::format("ringio: connect to {}: {}; {}, {}: {}", hang.where,
                                      std::system_category().message(ETIMEDOUT), eps[0], eps[2], refused_text));
        }
    }());
    CHECK(test::open_fds() == fds);
}
