// UDP datagram endpoints: exact echo of every size, truncation, ICMP errors, both receive paths.
#include <doctest/doctest.h>

#include <ringio/datagram.hpp>
#include <ringio/ringio.hpp>

#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <system_error>
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

// ---------------------------------------------------------------------------------------------
// Many datagrams, broadcast, multicast, cancellation, close, concurrent receivers, buffer-ring
// exhaustion, Unix datagram sockets, and the send errors. Every wait is bounded (wait_for), so a
// lost datagram fails a check instead of hanging the test.

namespace {

using test::counted;

ringio::endpoint loopback4() { return *ringio::endpoint::parse("127.0.0.1:0"); }

ringio::datagram_options mode(bool multishot) {
    ringio::datagram_options o;
    o.multishot = multishot;
    return o;
}

std::string text(std::span<const std::byte> buf, const ringio::datagram& d) {
    return std::string(reinterpret_cast<const char*>(buf.data()), d.size);
}

/// The errno of the std::system_error `t` ends with (0 when it succeeds, -1 for another exception).
template <class T>
ringio::task<int> error_of(ringio::task<T> t) {
    try {
        co_await std::move(t);
    } catch (const std::system_error& e) {
        co_return e.code().value();
    } catch (...) {
        co_return -1;
    }
    co_return 0;
}

// ---- 100,000 datagrams: a sequence number and a payload derived from it ----

constexpr std::size_t flow_size = 40;

void fill_flow(std::span<std::byte> p, std::uint64_t seq) {
    std::memcpy(p.data(), &seq, sizeof seq);
    for (std::size_t i = sizeof seq; i < p.size(); ++i) p[i] = static_cast<std::byte>((seq * 7 + i) & 0xff);
}

/// The sequence number of a well-formed flow datagram, or nullopt.
std::optional<std::uint64_t> check_flow(std::span<const std::byte> p) {
    if (p.size() != flow_size) return std::nullopt;
    std::uint64_t seq = 0;
    std::memcpy(&seq, p.data(), sizeof seq);
    for (std::size_t i = sizeof seq; i < p.size(); ++i)
        if (p[i] != static_cast<std::byte>((seq * 7 + i) & 0xff)) return std::nullopt;
    return seq;
}

struct flow_count {
    std::size_t received = 0;    // distinct, well-formed datagrams
    std::size_t duplicates = 0;
    std::size_t corrupt = 0;     // wrong size or payload, or a sequence number never sent
    std::size_t truncated = 0;
    std::size_t wrong_sender = 0;
    std::vector<bool> seen;
    explicit flow_count(std::size_t n) : seen(n) {}

    void add(std::span<const std::byte> buf, const ringio::datagram& d, const ringio::endpoint& sender) {
        if (d.truncated) ++truncated;
        if (!(d.sender == sender)) ++wrong_sender;
        auto seq = check_flow(buf.first(d.size));
        if (!seq || *seq >= seen.size()) {
            ++corrupt;
        } else if (seen[*seq]) {
            ++duplicates;
        } else {
            seen[*seq] = true;
            ++received;
        }
    }
};

/// Receives the flow on `ep` until `n` arrived or nothing came for `idle`. With `ack_every`,
/// sends the sender the count received so far (8 bytes) every `ack_every` datagrams.
ringio::task<> count_flow(ringio::datagram_endpoint& ep, flow_count& c, std::size_t n, ringio::endpoint sender,
                          std::size_t ack_every, std::chrono::milliseconds idle) {
    std::vector<std::byte> buf(2048);
    while (c.received < n) {
        ringio::datagram d;
        try {
            d = co_await ringio::wait_for(ep.recv_from(buf), idle);
        } catch (const ringio::timeout_error&) {
            break;
        }
        c.add(buf, d, sender);
        if (ack_every != 0 && (c.received % ack_every == 0 || c.received == n)) {
            std::uint64_t count = c.received;
            co_await ep.send_to(std::as_bytes(std::span(&count, 1)), d.sender);
        }
    }
}

/// Sends datagrams 0..n-1 with at most `window` not yet acknowledged by count_flow. Returns how
/// many were sent (fewer than n only if the acknowledgements stopped coming).
ringio::task<std::size_t> send_flow_windowed(ringio::datagram_endpoint& ep, ringio::endpoint to, std::size_t n,
                                             std::size_t window) {
    std::array<std::byte, flow_size> out{};
    std::array<std::byte, 64> ack{};
    std::uint64_t acked = 0;
    for (std::uint64_t seq = 0; seq < n; ++seq) {
        while (seq - acked >= window) {
            try {
                ringio::datagram d = co_await ringio::wait_for(ep.recv_from(ack), 2s);
                std::uint64_t count = 0;
                if (d.size == sizeof count) std::memcpy(&count, ack.data(), sizeof count);
                acked = std::max(acked, count);
            } catch (const ringio::timeout_error&) {
                co_return seq;  // acknowledgements stopped: give up, the receiver reports its count
            }
        }
        fill_flow(out, seq);
        co_await ep.send_to(out, to);
    }
    co_return n;
}

void windowed_flow(bool multishot, std::size_t n) {
    ringio::run([](bool ms, std::size_t total) -> ringio::task<> {
        auto rx = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt, mode(ms));
        auto tx = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt, mode(ms));
        flow_count c(total);
        auto receiver = ringio::create_task(count_flow(rx, c, total, tx.local_endpoint(), 16, 2s));
        std::size_t sent = co_await send_flow_windowed(tx, rx.local_endpoint(), total, 64);
        co_await receiver;
        MESSAGE("windowed (multishot=" << ms << "): sent " << sent << ", received " << c.received << " of "
                                       << total);
        CHECK(sent == total);
        CHECK(c.received == total);  // paced by a window: loopback loses none
        CHECK(c.duplicates == 0);
        CHECK(c.corrupt == 0);
        CHECK(c.truncated == 0);
        CHECK(c.wrong_sender == 0);
    }(multishot, n));
}

}  // namespace

TEST_CASE("100,000 datagrams through one endpoint, paced by a window of 64: every one arrives") {
    SUBCASE("multishot ring") { windowed_flow(true, 100'000); }
    SUBCASE("one recvmsg per receive") { windowed_flow(false, 100'000); }
}

namespace {

/// Receives the flow with plain recv_from calls (no timer per datagram: a ready datagram is taken
/// without suspending) until `n` arrived; stops when cancelled.
ringio::task<> drain_flow(ringio::datagram_endpoint& ep, flow_count& c, std::size_t n, ringio::endpoint sender) {
    std::vector<std::byte> buf(2048);
    try {
        while (c.received < n) {
            ringio::datagram d = co_await ep.recv_from(buf);
            c.add(buf, d, sender);
        }
    } catch (const ringio::cancelled_error&) {
    }
}

/// Waits for `h` while it makes progress: cancels it once `c.received` stays the same for `idle`.
ringio::task<> watch_progress(ringio::task_handle<> h, const flow_count& c, std::chrono::milliseconds idle) {
    std::size_t last = c.received;
    while (!h.done()) {
        co_await ringio::sleep(idle);
        if (c.received == last) h.cancel();
        last = c.received;
    }
    co_await h;
}

}  // namespace

TEST_CASE("100,000 datagrams sent back to back: a count of what arrived, all intact") {
    ringio::run([]() -> ringio::task<> {
        constexpr std::size_t total = 100'000;
        auto rx = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt);
        auto tx = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt);
        flow_count c(total);
        auto receiver = ringio::create_task(drain_flow(rx, c, total, tx.local_endpoint()));
        auto watchdog = ringio::create_task(watch_progress(receiver, c, 500ms));
        std::array<std::byte, flow_size> out{};
        for (std::uint64_t seq = 0; seq < total; ++seq) {
            fill_flow(out, seq);
            co_await tx.send_to(out, rx.local_endpoint());  // no pacing but the loop's own passes
        }
        co_await watchdog;
        MESSAGE("back to back: received " << c.received << " of " << total << " ("
                                          << (total - c.received) << " lost)");
        CHECK(c.received > total / 2);  // a clear majority, even unpaced
        CHECK(c.duplicates == 0);
        CHECK(c.corrupt == 0);
        CHECK(c.truncated == 0);
        CHECK(c.wrong_sender == 0);
    }());
}

TEST_CASE("broadcast is refused (EACCES) without allow_broadcast and accepted with it") {
    ringio::run([]() -> ringio::task<> {
        auto rx = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt);
        ringio::endpoint bcast(ringio::ip_address::v4({255, 255, 255, 255}), rx.local_endpoint().port());
        // Bound to 127.0.0.1, so the limited broadcast is routed out of the loopback interface.
        auto plain = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt);
        CHECK(co_await error_of(plain.send_to("to everyone", bcast)) == EACCES);
        CHECK_FALSE(plain.is_closing());  // still usable
        co_await plain.send_to("unicast", rx.local_endpoint());
        std::array<std::byte, 64> buf{};
        ringio::datagram d = co_await ringio::wait_for(rx.recv_from(buf), 5s);
        CHECK(text(buf, d) == "unicast");

        ringio::datagram_options o;
        o.allow_broadcast = true;
        auto allowed = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt, o);
        CHECK(co_await error_of(allowed.send_to("to everyone", bcast)) == 0);
        // Whether the loopback interface delivers it is not asserted.
    }());
}

namespace {

bool multicast_unavailable(int err) {
    return err == ENODEV || err == ENETUNREACH || err == EADDRNOTAVAIL || err == EHOSTUNREACH || err == ENOBUFS;
}

struct mcast_case {
    bool multishot;
    bool by_index;  // interface given by index (if_nametoindex("lo")) instead of 127.0.0.1
};

ringio::task<> multicast_v4(mcast_case mc) {
    const ringio::ip_address group = ringio::ip_address::v4({239, 255, 77, static_cast<std::uint8_t>(mc.by_index ? 2 : 1)});
    const ringio::ip_address lo_addr = ringio::ip_address::loopback_v4();
    const unsigned lo_index = ::if_nametoindex("lo");
    REQUIRE(lo_index != 0);
    // A member binds the wildcard address (a socket bound to 127.0.0.1 would not take datagrams
    // addressed to the group).
    auto rx = co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("0.0.0.0:0"), std::nullopt,
                                                        mode(mc.multishot));
    try {
        if (mc.by_index)
            rx.join_group(group, lo_index);
        else
            rx.join_group(group, lo_addr);
    } catch (const std::system_error& e) {
        if (!multicast_unavailable(e.code().value())) throw;
        MESSAGE("no IPv4 multicast on lo here (join: " << e.what() << "): skipped");
        co_return;
    }
    auto tx = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt);
    if (mc.by_index)
        tx.set_multicast_interface(lo_index);
    else
        tx.set_multicast_interface(lo_addr);
    tx.set_multicast_loopback(true);
    tx.set_multicast_ttl(1);
    ringio::endpoint to(group, rx.local_endpoint().port());
    int err = co_await error_of(tx.send_to("to the group", to));
    if (multicast_unavailable(err)) {
        MESSAGE("no IPv4 multicast on lo here (send: errno " << err << "): skipped");
        co_return;
    }
    REQUIRE(err == 0);
    std::array<std::byte, 64> buf{};
    ringio::datagram d = co_await ringio::wait_for(rx.recv_from(buf), 5s);
    CHECK(text(buf, d) == "to the group");
    CHECK(d.sender == tx.local_endpoint());

    // After leaving, nothing more is delivered (a bounded wait that times out).
    if (mc.by_index)
        rx.leave_group(group, lo_index);
    else
        rx.leave_group(group, lo_addr);
    co_await tx.send_to("after leaving", to);
    CHECK_THROWS_AS(co_await ringio::wait_for(rx.recv_from(buf), 300ms), ringio::timeout_error);
    // The endpoint still works (the timed-out receive took nothing): unicast reaches it.
    co_await tx.send_to("unicast", ringio::endpoint(lo_addr, rx.local_endpoint().port()));
    d = co_await ringio::wait_for(rx.recv_from(buf), 5s);
    CHECK(text(buf, d) == "unicast");
}

ringio::task<> multicast_v6(bool multishot) {
    const unsigned lo_index = ::if_nametoindex("lo");
    REQUIRE(lo_index != 0);
    const ringio::ip_address group = *ringio::ip_address::parse("ff02::1:3");
    auto rx = co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("[::]:0"), std::nullopt,
                                                        mode(multishot));
    try {
        rx.join_group(group, lo_index);
    } catch (const std::system_error& e) {
        if (!multicast_unavailable(e.code().value())) throw;
        MESSAGE("no IPv6 multicast on lo here (join: " << e.what() << "): skipped");
        co_return;
    }
    auto tx = co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("[::1]:0"), std::nullopt);
    tx.set_multicast_interface(lo_index);
    tx.set_multicast_loopback(true);
    tx.set_multicast_ttl(1);
    ringio::endpoint to(ringio::ip_address::v6(group.bytes(), lo_index), rx.local_endpoint().port());
    int err = co_await error_of(tx.send_to("to the v6 group", to));
    if (multicast_unavailable(err)) {
        MESSAGE("no IPv6 multicast on lo here (send: errno " << err << ", lo lacks the MULTICAST flag?): skipped");
        co_return;
    }
    REQUIRE(err == 0);
    std::array<std::byte, 64> buf{};
    ringio::datagram d = co_await ringio::wait_for(rx.recv_from(buf), 5s);
    CHECK(text(buf, d) == "to the v6 group");
    rx.leave_group(group, lo_index);
    co_await tx.send_to("after leaving", to);
    CHECK_THROWS_AS(co_await ringio::wait_for(rx.recv_from(buf), 300ms), ringio::timeout_error);
}

}  // namespace

TEST_CASE("multicast on loopback: a member receives, after leave_group nothing arrives") {
    SUBCASE("interface by address, multishot") { ringio::run(multicast_v4({true, false})); }
    SUBCASE("interface by address, one recvmsg per receive") { ringio::run(multicast_v4({false, false})); }
    SUBCASE("interface by index") { ringio::run(multicast_v4({true, true})); }
    SUBCASE("IPv6 (skipped where lo has no IPv6 multicast)") {
        ringio::run(multicast_v6(true));
        ringio::run(multicast_v6(false));
    }
}

namespace {

/// Receives one datagram as text; records whether it was cancelled. Holds a counted in its frame.
ringio::task<> recv_text(ringio::datagram_endpoint& ep, std::string& out, bool& cancelled) {
    counted c;
    std::array<std::byte, 256> buf{};
    try {
        ringio::datagram d = co_await ep.recv_from(buf);
        out = text(buf, d);
    } catch (const ringio::cancelled_error&) {
        cancelled = true;
        throw;
    }
}

ringio::task<> cancel_recv_case(bool multishot) {
    auto a = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt, mode(multishot));
    auto b = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt, mode(multishot));
    CHECK(a.multishot() == (multishot && ringio::event_loop::running().features().recv_multishot));
    std::array<std::byte, 256> buf{};

    // 1. Cancelled while parked: cancelled_error, nothing taken; a datagram sent afterwards goes
    //    to the next receiver.
    {
        std::string got;
        bool cancelled = false;
        auto h = ringio::create_task(recv_text(a, got, cancelled));
        co_await ringio::sleep(2ms);
        CHECK_FALSE(h.done());
        CHECK(h.cancel());
        CHECK_THROWS_AS(co_await h, ringio::cancelled_error);
        CHECK(cancelled);
        CHECK(got.empty());
        CHECK(counted::live == 0);
        co_await b.send_to("after the cancel", a.local_endpoint());
        ringio::datagram d = co_await ringio::wait_for(a.recv_from(buf), 5s);
        CHECK(text(buf, d) == "after the cancel");
    }
    // 2. Cancelled in the same pass as a datagram is sent: exactly one receiver gets it.
    {
        std::string got;
        bool cancelled = false;
        auto h = ringio::create_task(recv_text(a, got, cancelled));
        co_await ringio::sleep(2ms);
        h.cancel();
        co_await b.send_to("raced", a.local_endpoint());
        try {
            co_await h;
        } catch (const ringio::cancelled_error&) {
        }
        if (got.empty()) {
            ringio::datagram d = co_await ringio::wait_for(a.recv_from(buf), 5s);
            CHECK(text(buf, d) == "raced");
        } else {
            CHECK(got == "raced");
        }
        CHECK(counted::live == 0);
    }
    // 3. A timed-out receive (wait_for cancels it) takes nothing either.
    CHECK_THROWS_AS(co_await ringio::wait_for(a.recv_from(buf), 20ms), ringio::timeout_error);
    co_await b.send_to("after the timeout", a.local_endpoint());
    ringio::datagram d = co_await ringio::wait_for(a.recv_from(buf), 5s);
    CHECK(text(buf, d) == "after the timeout");
    // Nothing else is queued.
    CHECK_THROWS_AS(co_await ringio::wait_for(a.recv_from(buf), 20ms), ringio::timeout_error);
}

/// Runs `t` on a loop of its own, then checks that no frame and no fd outlived the loop.
void run_isolated(ringio::task<> t) {
    std::size_t fds = test::open_fds();
    {
        ringio::event_loop loop;
        loop.run_until_complete(std::move(t));
    }
    CHECK(counted::live == 0);
    CHECK(test::open_fds() == fds);
}

}  // namespace

TEST_CASE("cancelling a task blocked in recv_from: cancelled_error, endpoint usable, nothing lost, no leak") {
    SUBCASE("multishot ring") { run_isolated(cancel_recv_case(true)); }
    SUBCASE("one recvmsg per receive") { run_isolated(cancel_recv_case(false)); }
}

namespace {

ringio::task<> recv_error(ringio::datagram_endpoint& ep, int& err) {
    counted c;
    std::array<std::byte, 64> buf{};
    try {
        (void)co_await ep.recv_from(buf);
        err = 0;
    } catch (const std::system_error& e) {
        err = e.code().value();
    }
}

ringio::task<> close_while_receiving(bool multishot) {
    std::size_t fds_before = test::open_fds();
    auto a = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt, mode(multishot));
    CHECK(test::open_fds() == fds_before + 1);
    int err1 = -1, err2 = -1;
    auto h1 = ringio::create_task(recv_error(a, err1));
    auto h2 = ringio::create_task(recv_error(a, err2));
    co_await ringio::sleep(2ms);
    CHECK_FALSE(h1.done());
    CHECK_FALSE(h2.done());
    co_await ringio::wait_for(a.close(), 5s);
    CHECK(a.is_closing());
    co_await ringio::wait_for(h1, 5s);
    co_await ringio::wait_for(h2, 5s);
    CHECK(err1 == EBADF);
    CHECK(err2 == EBADF);
    CHECK(counted::live == 0);
    CHECK(test::open_fds() == fds_before);  // the socket is closed by the time close() returns
    co_await a.close();                     // idempotent
    std::array<std::byte, 16> buf{};
    CHECK_THROWS(co_await a.recv_from(buf));  // no use after close
}

}  // namespace

TEST_CASE("close() while tasks wait in recv_from: they get EBADF, the fd is closed") {
    SUBCASE("multishot ring") { run_isolated(close_while_receiving(true)); }
    SUBCASE("one recvmsg per receive") { run_isolated(close_while_receiving(false)); }
}

namespace {

ringio::task<> destroy_while_receiving(bool multishot) {
    std::size_t fds_before = test::open_fds();
    std::optional<ringio::datagram_endpoint> a =
        co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt, mode(multishot));
    int err1 = -1, err2 = -1;
    auto h1 = ringio::create_task(recv_error(*a, err1));
    auto h2 = ringio::create_task(recv_error(*a, err2));
    co_await ringio::sleep(2ms);
    a.reset();  // no close(): the destructor ends the receives; the state outlives them
    co_await ringio::wait_for(h1, 5s);
    co_await ringio::wait_for(h2, 5s);
    CHECK(err1 == EBADF);
    CHECK(err2 == EBADF);
    CHECK(counted::live == 0);
    for (int i = 0; i < 100 && test::open_fds() != fds_before; ++i) co_await ringio::sleep(1ms);
    CHECK(test::open_fds() == fds_before);  // closed once the last operation completed
}

}  // namespace

TEST_CASE("destroying the endpoint while tasks wait in recv_from: they get EBADF, nothing leaks") {
    SUBCASE("multishot ring") { run_isolated(destroy_while_receiving(true)); }
    SUBCASE("one recvmsg per receive") { run_isolated(destroy_while_receiving(false)); }
}

namespace {

ringio::task<> concurrent_receivers(bool multishot) {
    auto a = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt, mode(multishot));
    auto b = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt, mode(multishot));
    constexpr int n = 4;
    std::array<std::string, n> got;
    std::array<bool, n> cancelled{};
    std::vector<ringio::task_handle<>> hs;
    for (int i = 0; i < n; ++i) {
        hs.push_back(ringio::create_task(recv_text(a, got[i], cancelled[i])));
        co_await ringio::sleep(1ms);  // each receiver waits before the next one starts
    }
    for (int i = 0; i < n; ++i) co_await b.send_to(std::to_string(i), a.local_endpoint());
    for (auto& h : hs) co_await ringio::wait_for(h, 5s);
    for (int i = 0; i < n; ++i) {
        CAPTURE(i);
        CHECK(got[i] == std::to_string(i));  // one each, in the order they started waiting
    }

    // A receiver cancelled while others wait before and behind it: it takes nothing, the others
    // keep their order.
    std::array<std::string, 3> got2;
    std::array<bool, 3> cancelled2{};
    std::vector<ringio::task_handle<>> hs2;
    for (std::size_t i = 0; i < 3; ++i) {
        hs2.push_back(ringio::create_task(recv_text(a, got2[i], cancelled2[i])));
        co_await ringio::sleep(1ms);
    }
    hs2[1].cancel();
    co_await b.send_to("first", a.local_endpoint());
    co_await b.send_to("second", a.local_endpoint());
    for (auto& h : hs2) {
        try {
            co_await ringio::wait_for(h, 5s);
        } catch (const ringio::cancelled_error&) {
        }
    }
    CHECK(got2[0] == "first");
    CHECK(cancelled2[1]);
    CHECK(got2[1].empty());
    CHECK(got2[2] == "second");
    CHECK(counted::live == 0);
}

}  // namespace

TEST_CASE("several concurrent receivers each get one datagram, first come first served") {
    SUBCASE("multishot ring") { ringio::run(concurrent_receivers(true)); }
    SUBCASE("one recvmsg per receive") { ringio::run(concurrent_receivers(false)); }
}

TEST_CASE("buffer ring exhaustion: 50 datagrams queued with a ring of 2 buffers all arrive intact") {
    ringio::run([]() -> ringio::task<> {
        ringio::datagram_options o;
        o.ring_buffers = 2;
        auto a = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt, o);
        auto b = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt);
        if (!a.multishot()) MESSAGE("this kernel has no multishot recvmsg: the plain path is tested");
        constexpr int n = 50;
        for (int i = 0; i < n; ++i) co_await b.send_to(pattern(100 + static_cast<std::size_t>(i), static_cast<unsigned>(i)), a.local_endpoint());
        std::vector<std::byte> buf(65536);
        int intact = 0;
        for (int i = 0; i < n; ++i) {
            ringio::datagram d = co_await ringio::wait_for(a.recv_from(buf), 5s);
            auto want = pattern(100 + static_cast<std::size_t>(i), static_cast<unsigned>(i));
            if (d.size == want.size() && std::equal(want.begin(), want.end(), buf.begin()) && !d.truncated) ++intact;
        }
        CHECK(intact == n);  // in order: one socket on loopback keeps the order
        CHECK_THROWS_AS(co_await ringio::wait_for(a.recv_from(buf), 20ms), ringio::timeout_error);
    }());
}

namespace {

ringio::task<> recv_bounded(ringio::datagram_endpoint& ep, std::string& out) {
    std::array<std::byte, 256> buf{};
    try {
        ringio::datagram d = co_await ringio::wait_for(ep.recv_from(buf), 2s);
        out = text(buf, d);
    } catch (const ringio::timeout_error&) {
        out = "<timed out>";
    }
}

}  // namespace

// A burst that exhausts the ring while several receivers wait: the multishot receive ends with
// ENOBUFS after its buffers went to waiters, and must be re-armed for the others.
TEST_CASE("buffer ring exhaustion with several receivers waiting: each still gets a datagram") {
    ringio::run([]() -> ringio::task<> {
        ringio::datagram_options o;
        o.ring_buffers = 2;
        auto a = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt, o);
        constexpr int n = 8;
        std::array<std::string, n> got;
        std::vector<ringio::task_handle<>> hs;
        for (int i = 0; i < n; ++i) hs.push_back(ringio::create_task(recv_bounded(a, got[i])));
        co_await ringio::sleep(2ms);  // all waiting, the multishot receive armed
        // A burst that arrives all at once (plain blocking sends, no loop pass in between): the
        // kernel fills both ring buffers and ends the multishot receive with ENOBUFS.
        int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        ringio::endpoint to = a.local_endpoint();
        for (int i = 0; i < n; ++i) {
            std::string s = std::to_string(i);
            CHECK(::sendto(fd, s.data(), s.size(), 0, to.data(), to.size()) == static_cast<ssize_t>(s.size()));
        }
        ::close(fd);
        for (auto& h : hs) co_await h;
        std::vector<std::string> sorted(got.begin(), got.end());
        std::sort(sorted.begin(), sorted.end());
        for (int i = 0; i < n; ++i) {
            CAPTURE(i);
            CHECK(sorted[static_cast<std::size_t>(i)] == std::to_string(i));
        }
    }());
}

namespace {

struct temp_dir {
    std::string path;
    temp_dir() {
        char tmpl[] = "/tmp/ringio-dgram-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~temp_dir() {
        for (const char* f : {"/a.sock", "/b.sock"}) ::unlink((path + f).c_str());
        ::rmdir(path.c_str());
    }
};

ringio::task<> unix_exchange(std::string a_name, std::string b_name, bool multishot) {
    auto a = co_await ringio::create_datagram_endpoint(ringio::endpoint::unix_path(a_name), std::nullopt,
                                                       mode(multishot));
    auto b = co_await ringio::create_datagram_endpoint(ringio::endpoint::unix_path(b_name), std::nullopt,
                                                       mode(multishot));
    CHECK(a.local_endpoint().is_unix());
    CHECK(a.local_endpoint().path() == a_name);
    std::vector<std::byte> buf(65536);
    co_await b.send_to("hello over unix", a.local_endpoint());
    ringio::datagram d = co_await ringio::wait_for(a.recv_from(buf), 5s);
    CHECK(text(buf, d) == "hello over unix");
    CHECK(d.sender.is_unix());
    CHECK(d.sender.path() == b_name);
    co_await a.send_to("and back", d.sender);
    d = co_await ringio::wait_for(b.recv_from(buf), 5s);
    CHECK(text(buf, d) == "and back");
    CHECK(d.sender.path() == a_name);
    // A big one (Unix datagrams are not limited to 65507 bytes, but that is what we echo).
    auto big = pattern(60000, 3);
    co_await b.send_to(big, a.local_endpoint());
    d = co_await ringio::wait_for(a.recv_from(buf), 5s);
    CHECK(d.size == big.size());
    CHECK_FALSE(d.truncated);
    CHECK(std::equal(big.begin(), big.end(), buf.begin()));
}

ringio::task<> unix_unnamed_sender(std::string a_name, bool multishot) {
    auto a = co_await ringio::create_datagram_endpoint(ringio::endpoint::unix_path(a_name), std::nullopt,
                                                       mode(multishot));
    ringio::datagram_options o;
    o.family = AF_UNIX;
    auto c = co_await ringio::create_datagram_endpoint(std::nullopt, std::nullopt, o);  // not bound
    co_await c.send_to("from nobody", a.local_endpoint());
    std::array<std::byte, 64> buf{};
    ringio::datagram d = co_await ringio::wait_for(a.recv_from(buf), 5s);
    CHECK(text(buf, d) == "from nobody");
    // The sender has no name: an unnamed Unix endpoint (path ""), not an IP address.
    CHECK(d.sender.is_unix());
    CHECK(d.sender.path().empty());
}

}  // namespace

TEST_CASE("Unix datagram sockets: a path in a temporary directory") {
    for (bool ms : {true, false}) {
        CAPTURE(ms);
        temp_dir dir;
        ringio::run(unix_exchange(dir.path + "/a.sock", dir.path + "/b.sock", ms));
    }
}

TEST_CASE("Unix datagram sockets: abstract names") {
    for (bool ms : {true, false}) {
        CAPTURE(ms);
        std::string base = "@ringio-dgram-" + std::to_string(::getpid()) + (ms ? "-ms" : "-one");
        ringio::run(unix_exchange(base + "-a", base + "-b", ms));
    }
}

TEST_CASE("Unix datagram sockets: an unbound sender is reported as an unnamed Unix endpoint") {
    for (bool ms : {true, false}) {
        CAPTURE(ms);
        temp_dir dir;
        ringio::run(unix_unnamed_sender(dir.path + "/a.sock", ms));
    }
}

TEST_CASE("send on an unconnected endpoint is EDESTADDRREQ; a datagram too big is EMSGSIZE") {
    ringio::run([]() -> ringio::task<> {
        auto a = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt);
        auto b = co_await ringio::create_datagram_endpoint(loopback4(), std::nullopt);
        CHECK(co_await error_of(a.send("nowhere")) == EDESTADDRREQ);
        std::vector<std::byte> huge(70000);
        CHECK(co_await error_of(a.send_to(huge, b.local_endpoint())) == EMSGSIZE);
        auto connected = co_await ringio::create_datagram_endpoint(std::nullopt, b.local_endpoint());
        CHECK(co_await error_of(connected.send(huge)) == EMSGSIZE);
        // 65507 is the largest UDP payload over IPv4; one byte more is too big.
        CHECK(co_await error_of(a.send_to(std::span(huge).first(65508), b.local_endpoint())) == EMSGSIZE);
        // Both endpoints are still usable.
        co_await a.send_to(std::span(huge).first(65507), b.local_endpoint());
        co_await connected.send("small");
        std::vector<std::byte> buf(65536);
        ringio::datagram d = co_await ringio::wait_for(b.recv_from(buf), 5s);
        CHECK(d.size == 65507);
        d = co_await ringio::wait_for(b.recv_from(buf), 5s);
        CHECK(text(buf, d) == "small");
    }());
}

TEST_CASE("destroying an endpoint whose receive is re-armed in the same pass frees it once (no use after free)") {
    // The multishot receive ends with ENOBUFS (two buffers, four datagrams); a receive served
    // from what is queued gives a buffer back and re-arms it; the endpoint then goes in the same
    // pass, while that receive still waits to be submitted. Its cancel completes it at once, and
    // that completion used to free the state under the destructor (seen by ASan).
    std::size_t fds = test::open_fds();
    ringio::run([]() -> ringio::task<> {
        ringio::datagram_options o;
        o.ring_buffers = 2;
        o.max_datagram = 2000;
        std::optional<ringio::datagram_endpoint> a(
            co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("127.0.0.1:0"), std::nullopt, o));
        if (!a->multishot()) {
            MESSAGE("no multishot receive here; skipped");
            co_return;
        }
        auto b = co_await ringio::create_datagram_endpoint(std::nullopt, a->local_endpoint(), {});
        std::array<std::byte, 2000> buf{};
        std::string msg = "hello";
        co_await b.send(msg);
        CHECK((co_await a->recv_from(buf)).size == 5);  // armed
        for (int i = 0; i < 4; ++i) co_await b.send(msg);
        for (int i = 0; i < 5; ++i) co_await ringio::yield_now();  // the completions are reaped
        CHECK((co_await a->recv_from(buf)).size == 5);  // from the queue: re-arms
        a.reset();
        co_await b.close();
    }());
    CHECK(test::open_fds() == fds);
}
