// ringio::socket used directly: setup, options, ring operations, close and cancellation.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>
#include <ringio/socket.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "helpers.hpp"
#include "net_helpers.hpp"

using namespace std::chrono_literals;

namespace {

// ---- helpers ----

using test::contains;
using test::eventually;
using test::run_bounded;
using test::thrown;

std::span<const std::byte> bytes(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }
std::string text(std::span<const std::byte> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

bool fd_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

ringio::endpoint loopback(std::uint16_t port = 0) { return {ringio::ip_address::loopback_v4(), port}; }

ringio::socket listener(int backlog = 16) {
    auto s = ringio::socket::create(AF_INET, SOCK_STREAM);
    s.set_reuse_address(true);
    s.bind(loopback());
    s.listen(backlog);
    return s;
}

struct tcp_link {
    ringio::socket client;
    ringio::socket server;
};

ringio::task<tcp_link> connected_pair() {
    auto lst = listener();
    auto cli = ringio::socket::create(AF_INET, SOCK_STREAM);
    co_await cli.connect(lst.local_endpoint());
    auto [srv, peer] = co_await lst.accept();
    CHECK(peer == cli.local_endpoint());
    co_return tcp_link{std::move(cli), std::move(srv)};
}

ringio::task<std::string> recv_all(ringio::socket& s, std::size_t n) {
    std::string out;
    std::array<std::byte, 65536> buf{};
    for (int i = 0; i < 1'000'000 && out.size() < n; ++i) {
        std::size_t got = co_await s.recv(buf);
        if (got == 0) break;
        out += text(std::span(buf).first(got));
    }
    co_return out;
}

}  // namespace

TEST_CASE("socket: create, bind, listen, connect, accept, send, recv, shutdown, close") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        auto lst = ringio::socket::create(AF_INET, SOCK_STREAM);
        CHECK(lst.valid());
        CHECK(lst.fd() >= 0);
        CHECK((::fcntl(lst.fd(), F_GETFD) & FD_CLOEXEC) != 0);
        lst.set_reuse_address(true);
        lst.bind(loopback());
        lst.listen();
        ringio::endpoint where = lst.local_endpoint();
        CHECK(where.address() == ringio::ip_address::loopback_v4());
        CHECK(where.port() != 0);

        auto cli = ringio::socket::create(AF_INET, SOCK_STREAM);
        co_await cli.connect(where);
        CHECK(cli.remote_endpoint() == where);
        auto [srv, peer] = co_await lst.accept();
        CHECK(srv.valid());
        CHECK((::fcntl(srv.fd(), F_GETFD) & FD_CLOEXEC) != 0);
        CHECK(peer == cli.local_endpoint());
        CHECK(srv.remote_endpoint() == cli.local_endpoint());
        CHECK(srv.local_endpoint() == where);
        CHECK(cli.in_flight() == 0);

        co_await cli.send(bytes("hello"));
        std::array<std::byte, 64> buf{};
        std::size_t n = co_await srv.recv(buf);
        CHECK(text(std::span(buf).first(n)) == "hello");

        // send() sends everything, even more than the socket buffers hold at once.
        std::string big(2 << 20, '\0');
        for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7 + (i >> 12));
        auto receiver = ringio::create_task(recv_all(srv, big.size()));
        co_await cli.send(bytes(big));
        CHECK(co_await receiver == big);

        std::size_t some = co_await cli.send_some(bytes("xyz"));
        CHECK(some == 3);
        n = co_await srv.recv(buf);
        CHECK(text(std::span(buf).first(n)) == "xyz");

        // Half-close each way.
        co_await cli.shutdown(SHUT_WR);
        CHECK(co_await srv.recv(buf) == 0);
        co_await srv.send(bytes("back"));
        n = co_await cli.recv(buf);
        CHECK(text(std::span(buf).first(n)) == "back");
        co_await srv.shutdown(SHUT_WR);
        CHECK(co_await cli.recv(buf) == 0);

        int fd = cli.fd();
        co_await cli.close();
        CHECK_FALSE(cli.valid());
        CHECK(cli.fd() == -1);
        CHECK_FALSE(fd_open(fd));
        co_await cli.close();  // idempotent
        CHECK(co_await thrown<ringio::invalid_state_error>(cli.recv(buf)));
        CHECK_THROWS_AS((void)cli.local_endpoint(), ringio::invalid_state_error);
        co_await srv.close();
        co_await lst.close();
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("socket options") {
    run_bounded([]() -> ringio::task<> {
        auto s = ringio::socket::create(AF_INET, SOCK_STREAM);
        s.set_reuse_address(true);
        CHECK(s.get_option<int>(SOL_SOCKET, SO_REUSEADDR) != 0);
        s.set_reuse_address(false);
        CHECK(s.get_option<int>(SOL_SOCKET, SO_REUSEADDR) == 0);
        s.set_reuse_port(true);
        CHECK(s.get_option<int>(SOL_SOCKET, SO_REUSEPORT) != 0);
        s.set_nodelay(true);
        CHECK(s.get_option<int>(IPPROTO_TCP, TCP_NODELAY) != 0);
        s.set_nodelay(false);
        CHECK(s.get_option<int>(IPPROTO_TCP, TCP_NODELAY) == 0);
        s.set_keepalive(true);
        CHECK(s.get_option<int>(SOL_SOCKET, SO_KEEPALIVE) != 0);
        s.set_recv_buffer_size(64 * 1024);
        CHECK(s.get_option<int>(SOL_SOCKET, SO_RCVBUF) >= 64 * 1024);  // Linux doubles it
        s.set_send_buffer_size(32 * 1024);
        CHECK(s.get_option<int>(SOL_SOCKET, SO_SNDBUF) >= 32 * 1024);
        s.set_linger(std::chrono::seconds(5));
        auto l = s.get_option<linger>(SOL_SOCKET, SO_LINGER);
        CHECK(l.l_onoff != 0);
        CHECK(l.l_linger == 5);
        s.set_linger(std::chrono::seconds(0));
        l = s.get_option<linger>(SOL_SOCKET, SO_LINGER);
        CHECK(l.l_onoff != 0);
        CHECK(l.l_linger == 0);
        s.set_linger(std::nullopt);
        CHECK(s.get_option<linger>(SOL_SOCKET, SO_LINGER).l_onoff == 0);
        s.set_option<int>(SOL_SOCKET, SO_RCVLOWAT, 4);
        CHECK(s.get_option<int>(SOL_SOCKET, SO_RCVLOWAT) == 4);

        auto s6 = ringio::socket::create(AF_INET6, SOCK_STREAM);
        s6.set_v6only(true);
        CHECK(s6.get_option<int>(IPPROTO_IPV6, IPV6_V6ONLY) == 1);
        s6.set_v6only(false);
        CHECK(s6.get_option<int>(IPPROTO_IPV6, IPV6_V6ONLY) == 0);

        auto u = ringio::socket::create(AF_INET, SOCK_DGRAM);
        u.set_broadcast(true);
        CHECK(u.get_option<int>(SOL_SOCKET, SO_BROADCAST) != 0);
        CHECK(u.get_option<int>(SOL_SOCKET, SO_TYPE) == SOCK_DGRAM);

        // Errors are std::system_error naming the call.
        try {
            s.set_v6only(true);  // not an IPv6 socket
            FAIL("set_v6only on an IPv4 socket succeeded");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() != 0);
            CHECK(contains(e.what(), "setsockopt"));
        }
        try {
            (void)s.get_option<int>(SOL_SOCKET, 12345);
            FAIL("an unknown option succeeded");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == ENOPROTOOPT);
            CHECK(contains(e.what(), "getsockopt"));
        }
        co_return;
    }());
}

TEST_CASE("socket::create and bind errors") {
    CHECK_THROWS_AS(ringio::socket::create(12345, SOCK_STREAM), std::system_error);
    run_bounded([]() -> ringio::task<> {
        auto a = listener();
        auto b = ringio::socket::create(AF_INET, SOCK_STREAM);
        try {
            b.bind(a.local_endpoint());
            FAIL("binding a port in use succeeded");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == EADDRINUSE);
            CHECK(contains(e.what(), a.local_endpoint().to_string()));
        }
        // Not connected.
        try {
            (void)b.remote_endpoint();
            FAIL("remote_endpoint of an unconnected socket succeeded");
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == ENOTCONN);
        }
        co_return;
    }());
}

TEST_CASE("sendmsg and recvmsg with iovecs, over TCP and UDP") {
    run_bounded([]() -> ringio::task<> {
        auto [cli, srv] = co_await connected_pair();
        std::string p1 = "hel", p2 = "lo, world";
        std::array<iovec, 2> out{iovec{p1.data(), p1.size()}, iovec{p2.data(), p2.size()}};
        msghdr m{};
        m.msg_iov = out.data();
        m.msg_iovlen = out.size();
        CHECK(co_await cli.sendmsg(m) == 12);
        std::array<char, 5> in1{};
        std::array<char, 32> in2{};
        std::array<iovec, 2> in{iovec{in1.data(), in1.size()}, iovec{in2.data(), in2.size()}};
        msghdr r{};
        r.msg_iov = in.data();
        r.msg_iovlen = in.size();
        std::size_t n = co_await srv.recvmsg(r);
        CHECK(n == 12);
        CHECK(std::string(in1.data(), 5) == "hello");
        CHECK(std::string(in2.data(), 7) == ", world");

        // UDP: the sender's address comes back in msg_name.
        auto a = ringio::socket::create(AF_INET, SOCK_DGRAM);
        a.bind(loopback());
        auto b = ringio::socket::create(AF_INET, SOCK_DGRAM);
        b.bind(loopback());
        ringio::endpoint to = a.local_endpoint();
        std::string d1 = "data", d2 = "gram";
        std::array<iovec, 2> dv{iovec{d1.data(), d1.size()}, iovec{d2.data(), d2.size()}};
        msghdr dm{};
        dm.msg_name = const_cast<sockaddr*>(to.data());
        dm.msg_namelen = to.size();
        dm.msg_iov = dv.data();
        dm.msg_iovlen = dv.size();
        CHECK(co_await b.sendmsg(dm) == 8);
        ringio::endpoint from;
        std::array<char, 64> rb{};
        iovec rv{rb.data(), rb.size()};
        msghdr rm{};
        rm.msg_name = from.data();
        rm.msg_namelen = ringio::endpoint::capacity();
        rm.msg_iov = &rv;
        rm.msg_iovlen = 1;
        n = co_await a.recvmsg(rm);
        from.resize(rm.msg_namelen);
        CHECK(n == 8);
        CHECK(std::string(rb.data(), n) == "datagram");
        CHECK(from == b.local_endpoint());
        CHECK((rm.msg_flags & MSG_TRUNC) == 0);
    }());
}

TEST_CASE("socket over a Unix path: endpoints of both ends") {
    char tmpl[] = "/tmp/ringio-sock-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    const std::string dir = tmpl;
    const std::string path = dir + "/u.sock";
    run_bounded([](std::string file) -> ringio::task<> {
        auto lst = ringio::socket::create(AF_UNIX, SOCK_STREAM);
        lst.bind(ringio::endpoint::unix_path(file));
        lst.listen();
        CHECK(lst.local_endpoint().path() == file);
        auto cli = ringio::socket::create(AF_UNIX, SOCK_STREAM);
        co_await cli.connect(ringio::endpoint::unix_path(file));
        auto [srv, peer] = co_await lst.accept();
        CHECK(peer.is_unix());
        CHECK(peer.path() == "");  // an unbound client
        CHECK(cli.remote_endpoint().path() == file);
        co_await cli.send(bytes("over unix"));
        std::array<std::byte, 32> buf{};
        std::size_t n = co_await srv.recv(buf);
        CHECK(text(std::span(buf).first(n)) == "over unix");
    }(path));
    ::unlink(path.c_str());
    ::rmdir(dir.c_str());
}

TEST_CASE("socket: connect to a closed port is ECONNREFUSED naming the address") {
    run_bounded([]() -> ringio::task<> {
        std::uint16_t port = 0;
        {
            auto s = ringio::socket::create(AF_INET, SOCK_STREAM);
            s.bind(loopback());
            port = s.local_endpoint().port();
        }
        auto c = ringio::socket::create(AF_INET, SOCK_STREAM);
        auto e = co_await thrown<std::system_error>(c.connect(loopback(port)));
        REQUIRE(e);
        CHECK(e->code().value() == ECONNREFUSED);
        CHECK(contains(e->what(), "connect to 127.0.0.1:" + std::to_string(port)));
    }());
}

TEST_CASE("socket: sending to a peer that reset is an exception, never SIGPIPE") {
    test::require_default_sigpipe();
    run_bounded([]() -> ringio::task<> {
        auto [cli, srv] = co_await connected_pair();
        srv.set_linger(std::chrono::seconds(0));
        co_await srv.close();  // RST
        std::array<std::byte, 16> buf{};
        auto e = co_await thrown<std::system_error>(cli.recv(buf));
        REQUIRE(e);
        CHECK(e->code().value() == ECONNRESET);
        std::string chunk(64 * 1024, 's');
        std::optional<std::system_error> err;
        for (int i = 0; i < 100 && !err; ++i) err = co_await thrown<std::system_error>(cli.send(bytes(chunk)));
        REQUIRE(err);
        CHECK(err->code().value() == EPIPE);
        // sendmsg too.
        iovec v{chunk.data(), chunk.size()};
        msghdr m{};
        m.msg_iov = &v;
        m.msg_iovlen = 1;
        auto e2 = co_await thrown<std::system_error>(cli.sendmsg(m));
        REQUIRE(e2);
        CHECK(e2->code().value() == EPIPE);
    }());
}

TEST_CASE("close() while a recv is in flight in another task: the recv ends, then the fd is closed") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        auto [cli, srv] = co_await connected_pair();
        int fd = srv.fd();
        bool fd_open_when_recv_ended = false;
        auto reader = ringio::create_task([](ringio::socket& s, int raw, bool& open_then) -> ringio::task<int> {
            std::array<std::byte, 16> buf{};
            int outcome = 0;
            try {
                outcome = static_cast<int>(co_await s.recv(buf));  // 0: ended as EOF
            } catch (const std::system_error& e) {
                outcome = -e.code().value();
            }
            open_then = fd_open(raw);
            co_return outcome;
        }(srv, fd, fd_open_when_recv_ended));
        co_await ringio::yield_now();
        co_await ringio::yield_now();
        CHECK(srv.in_flight() == 1);
        CHECK_FALSE(reader.done());
        co_await srv.close();
        CHECK_FALSE(srv.valid());
        CHECK_FALSE(fd_open(fd));
        int outcome = co_await reader;
        CHECK((outcome == 0 || outcome == -EBADF));  // EOF (shutdown fallback) or "socket closed"
        CHECK(fd_open_when_recv_ended);
        // The peer sees the close.
        std::array<std::byte, 16> buf{};
        CHECK(co_await cli.recv(buf) == 0);
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("two tasks closing one socket while a recv is in flight both finish") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        auto [cli, srv] = co_await connected_pair();
        auto reader = ringio::create_task([](ringio::socket& s) -> ringio::task<> {
            std::array<std::byte, 16> buf{};
            try {
                (void)co_await s.recv(buf);
            } catch (const std::system_error&) {
            }
        }(srv));
        co_await ringio::yield_now();
        co_await ringio::yield_now();
        auto closer1 = ringio::create_task(srv.close());
        auto closer2 = ringio::create_task(srv.close());
        co_await ringio::wait_for(std::move(reader), 2s);
        // Polled, not awaited: a closer that is never resumed cannot be cancelled either.
        CHECK(co_await eventually([&] { return closer1.done() && closer2.done(); }, 2000ms));
        CHECK_FALSE(srv.valid());
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("close() ends a send() blocked in another task") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        auto [cli, srv] = co_await connected_pair();
        srv.set_send_buffer_size(16 * 1024);
        int fd = srv.fd();
        auto sender = ringio::create_task([](ringio::socket& s) -> ringio::task<bool> {
            std::string big(8 << 20, 'q');  // the peer never reads: the send blocks
            try {
                co_await s.send(bytes(big));
                co_return false;
            } catch (const std::system_error&) {
                co_return true;
            }
        }(srv));
        co_await ringio::sleep(20ms);
        CHECK(srv.in_flight() == 1);
        CHECK_FALSE(sender.done());
        co_await srv.close();
        CHECK_FALSE(fd_open(fd));
        CHECK(co_await ringio::wait_for(std::move(sender), 2s));  // it did not complete: it failed
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("a socket replaced while a recv is in flight is closed once the recv ends") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        auto [cli, srv] = co_await connected_pair();
        auto reader = ringio::create_task([](ringio::socket& s) -> ringio::task<int> {
            std::array<std::byte, 16> buf{};
            try {
                co_return static_cast<int>(co_await s.recv(buf));
            } catch (const std::system_error& e) {
                co_return -e.code().value();
            }
        }(srv));
        co_await ringio::yield_now();
        co_await ringio::yield_now();
        CHECK_FALSE(reader.done());
        srv = ringio::socket();  // the owner goes away; the fd lives until the recv completes
        int outcome = co_await reader;
        CHECK((outcome == 0 || outcome == -EBADF));  // EOF (shutdown fallback) or "socket closed"
        std::array<std::byte, 16> buf{};
        CHECK(co_await cli.recv(buf) == 0);
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("adopting and releasing an fd") {
    run_bounded([]() -> ringio::task<> {
        int raw = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(raw >= 0);
        ringio::socket s(raw);
        CHECK(s.fd() == raw);
        s.bind(loopback());
        CHECK(s.release() == raw);
        CHECK_FALSE(s.valid());
        CHECK(fd_open(raw));
        ::close(raw);
        co_return;
    }());
}

// ---- cancellation ----

TEST_CASE("cancelling accept, connect and recv leaks no fd and no frame") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        {  // accept with nobody connecting; the listener still works afterwards
            auto lst = listener();
            auto h = ringio::create_task([](ringio::socket& l) -> ringio::task<> {
                test::counted c;  // the frame is freed
                (void)co_await l.accept();
            }(lst));
            co_await ringio::yield_now();
            co_await ringio::yield_now();
            CHECK_FALSE(h.done());
            CHECK(lst.in_flight() == 1);
            h.cancel();
            CHECK(co_await thrown<ringio::cancelled_error>(std::move(h)));
            CHECK(lst.in_flight() == 0);
            auto cli = ringio::socket::create(AF_INET, SOCK_STREAM);
            co_await cli.connect(lst.local_endpoint());
            auto [srv, peer] = co_await ringio::wait_for(lst.accept(), 5s);
            CHECK(peer == cli.local_endpoint());
        }
        {  // connect that cannot complete: the listener's accept queue (backlog 0) is full
            auto lst = listener(0);
            auto first = ringio::socket::create(AF_INET, SOCK_STREAM);
            co_await first.connect(lst.local_endpoint());  // fills the queue
            auto second = ringio::socket::create(AF_INET, SOCK_STREAM);
            auto h = ringio::create_task(second.connect(lst.local_endpoint()));
            co_await ringio::sleep(50ms);
            REQUIRE_FALSE(h.done());
            CHECK(second.in_flight() == 1);
            h.cancel();
            CHECK(co_await thrown<ringio::cancelled_error>(std::move(h)));
            CHECK(second.in_flight() == 0);
        }
        {  // connect cancelled right after it was submitted
            auto lst = listener();
            auto s = ringio::socket::create(AF_INET, SOCK_STREAM);
            auto h = ringio::create_task(s.connect(lst.local_endpoint()));
            co_await ringio::yield_now();
            h.cancel();
            // Either the cancel won, or the connect had already completed (its result is kept).
            try {
                co_await std::move(h);
            } catch (const ringio::cancelled_error&) {
            }
            CHECK(s.in_flight() == 0);
        }
        {  // recv
            auto [cli, srv] = co_await connected_pair();
            auto h = ringio::create_task([](ringio::socket& s) -> ringio::task<std::string> {
                test::counted c;
                std::array<std::byte, 16> buf{};
                std::size_t n = co_await s.recv(buf);
                co_return text(std::span(buf).first(n));
            }(srv));
            co_await ringio::yield_now();
            co_await ringio::yield_now();
            CHECK_FALSE(h.done());
            h.cancel();
            CHECK(co_await thrown<ringio::cancelled_error>(std::move(h)));
            co_await cli.send(bytes("still here"));
            std::array<std::byte, 16> buf{};
            std::size_t n = co_await srv.recv(buf);
            CHECK(text(std::span(buf).first(n)) == "still here");
        }
    }());
    CHECK(test::counted::live == 0);
    CHECK(test::open_fds() == fds);
}

TEST_CASE("sockets with operations in flight when run() returns are closed, not leaked") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        auto lst = listener();
        // Tasks left blocked in accept and recv when the main task returns.
        (void)ringio::create_task([](ringio::socket l) -> ringio::task<> { (void)co_await l.accept(); }(std::move(lst)));
        auto [cli, srv] = co_await connected_pair();
        (void)ringio::create_task([](ringio::socket s) -> ringio::task<> {
            std::array<std::byte, 16> buf{};
            (void)co_await s.recv(buf);
        }(std::move(srv)));
        co_await ringio::yield_now();
        co_await ringio::yield_now();
    }());
    CHECK(test::open_fds() == fds);
}
