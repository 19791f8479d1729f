// open_connection: trying several addresses, over real loopback sockets.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>
#include <ringio/server.hpp>
#include <ringio/stream.hpp>


#include <cerrno>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
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
