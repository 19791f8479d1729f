// UDP datagram endpoints: exact echo of every size, truncation, ICMP errors, both receive paths.
#include <doctest/doctest.h>

#include <ringio/datagram.hpp>
#include <ringio/ringio.hpp>

#include <array>
#include <string>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;

namespace {

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 131 + seed) & 0xff);
    return v;
}

ringio::task<> echo_once_each(ringio::datagram_endpoint& ep, int count) {
    std::vector<std::byte> buf(65536);
    for (int i = 0; i < count; ++i) {
        ringio::datagram d = co_await ep.recv_from(buf);
        co_await ep.send_to(std::span(buf).first(d.size), d.sender);
    }
}

void echo_sizes(bool multishot, const char* addr) {
    ringio::run([](bool ms, std::string a) -> ringio::task<> {
        ringio::datagram_options o;
        o.multishot = ms;
        auto server = co_await ringio::create_datagram_endpoint(ringio::endpoint::parse(a), std::nullopt, o);
        CHECK(server.multishot() == (ms && ringio::event_loop::running().features().recv_multishot));
        auto client = co_await ringio::create_datagram_endpoint(std::nullopt, server.local_endpoint(), o);
        const std::size_t sizes[] = {0, 1, 1472, 9000, 65507};
        auto echoer = ringio::create_task(echo_once_each(server, 5));
        std::vector<std::byte> back(65536);
        unsigned seed = 0;
        for (std::size_t n : sizes) {
            auto data = pattern(n, ++seed);
            co_await client.send(data);
            ringio::datagram d = co_await ringio::wait_for(client.recv(back), 5s);
            CHECK(d.size == n);
            CHECK_FALSE(d.truncated);
            CHECK(std::equal(data.begin(), data.end(), back.begin()));
            CHECK(d.sender == server.local_endpoint());
        }
        co_await echoer;
    }(multishot, addr));
}

}  // namespace

TEST_CASE("datagrams of 0, 1, 1472, 9000 and 65507 bytes are echoed exactly (multishot ring)") {
    echo_sizes(true, "127.0.0.1:0");
}

TEST_CASE("datagrams echoed exactly with one recvmsg per receive") { echo_sizes(false, "127.0.0.1:0"); }

TEST_CASE("datagrams over IPv6") { echo_sizes(true, "[::1]:0"); }

TEST_CASE("a datagram larger than the buffer is reported as truncated") {
    for (bool ms : {true, false}) {
        ringio::run([](bool multishot) -> ringio::task<> {
            ringio::datagram_options o;
            o.multishot = multishot;
            auto a = co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("127.0.0.1:0"), std::nullopt, o);
            auto b = co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("127.0.0.1:0"), std::nullopt, o);
            auto data = pattern(1000, 7);
            co_await b.send_to(data, a.local_endpoint());
            std::array<std::byte, 100> small{};
            ringio::datagram d = co_await ringio::wait_for(a.recv_from(small), 5s);
            CHECK(d.truncated);
            CHECK(d.size == 100);
            CHECK(std::equal(small.begin(), small.end(), data.begin()));
        }(ms));
    }
}

TEST_CASE("ECONNREFUSED on a connected endpoint to a closed port; the endpoint stays usable") {
    ringio::run([]() -> ringio::task<> {
        // A port that nobody listens on: bind, learn the port, close.
        ringio::endpoint closed_port;
        {
            auto tmp = co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("127.0.0.1:0"), std::nullopt);
            closed_port = tmp.local_endpoint();
            co_await tmp.close();
        }
        auto c = co_await ringio::create_datagram_endpoint(std::nullopt, closed_port);
        std::array<std::byte, 16> buf{};
        co_await c.send("ping");
        bool refused = false;
        try {
            (void)co_await ringio::wait_for(c.recv(buf), 5s);
        } catch (const std::system_error& e) {
            refused = e.code().value() == ECONNREFUSED;
        }
        CHECK(refused);
        // Still usable: once something listens on that port, the same endpoint talks to it.
        auto server = co_await ringio::create_datagram_endpoint(closed_port, std::nullopt);
        auto echoer = ringio::create_task(echo_once_each(server, 1));
        co_await c.send("hello");
        ringio::datagram d = co_await ringio::wait_for(c.recv(buf), 5s);
        CHECK(std::string(reinterpret_cast<const char*>(buf.data()), d.size) == "hello");
        co_await echoer;
    }());
}
