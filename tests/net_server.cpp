// start_server / start_unix_server: lifetimes, shutdown, errors and load, over real loopback
// sockets.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>
#include <ringio/server.hpp>
#include <ringio/stream.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include "helpers.hpp"
#include "net_helpers.hpp"

using namespace std::chrono_literals;

namespace {

// ---- helpers ----

using test::contains;
using test::echo;
using test::eventually;
using test::log_capture;
using test::read_to_eof;
using test::run_bounded;
using test::thrown;

/// A TCP port on 127.0.0.1 that nothing listens on (bound, then closed).
std::uint16_t closed_port() {
    auto s = ringio::socket::create(AF_INET, SOCK_STREAM);
    s.bind(ringio::endpoint(ringio::ip_address::loopback_v4(), 0));
    return s.local_endpoint().port();
}

using streams = std::pair<ringio::stream_reader, ringio::stream_writer>;

/// Connects and sends one line through an echoing server, checking the answer.
ringio::task<> echo_once(std::uint16_t port, std::string host = "127.0.0.1") {
    auto [r, w] = co_await ringio::open_connection(host, port);
    std::string msg = "hello from " + w.sockname().to_string() + "\n";
    w.write(msg);
    CHECK(co_await r.read_line() == msg);
    w.close();
    co_await w.wait_closed();
}

}  // namespace

TEST_CASE("sockets() and port() of a server") {
    run_bounded([]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0);
        CHECK(srv.is_serving());
        CHECK(srv.connections() == 0);
        REQUIRE(srv.sockets().size() == 1);
        ringio::endpoint ep = srv.sockets().front().local_endpoint();
        CHECK(ep.address() == ringio::ip_address::loopback_v4());
        CHECK(ep.port() == srv.port());
        CHECK(srv.port() != 0);
        co_await echo_once(srv.port());
        srv.close();
        CHECK_FALSE(srv.is_serving());
        co_await srv.wait_closed();
        srv.close();  // idempotent
        co_await srv.wait_closed();

        // A fixed port.
        std::uint16_t port = closed_port();
        auto fixed = co_await ringio::start_server(echo, "127.0.0.1", port);
        CHECK(fixed.port() == port);
        co_await echo_once(port);
        // The port is taken now: a second server cannot bind it.
        auto e = co_await thrown<std::system_error>(ringio::start_server(echo, "127.0.0.1", port));
        REQUIRE(e);
        CHECK(e->code().value() == EADDRINUSE);
        CHECK(contains(e->what(), "127.0.0.1:" + std::to_string(port)));
        fixed.close();
        co_await fixed.wait_closed();
    }());
}

TEST_CASE("reuse_port lets two servers listen on one port") {
    run_bounded([]() -> ringio::task<> {
        ringio::server_options o;
        o.reuse_port = true;
        auto a = co_await ringio::start_server(echo, "127.0.0.1", 0, o);
        auto b = co_await ringio::start_server(echo, "127.0.0.1", a.port(), o);
        CHECK(a.port() == b.port());
        for (int i = 0; i < 8; ++i) co_await echo_once(a.port());
        a.close();
        b.close();
        co_await a.wait_closed();
        co_await b.wait_closed();
    }());
}

TEST_CASE("host \"\" listens on 0.0.0.0 and :: on the same port") {
    run_bounded([]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(echo, "", 0);
        REQUIRE(srv.sockets().size() == 2);
        std::set<int> families;
        for (const ringio::socket& s : srv.sockets()) {
            ringio::endpoint ep = s.local_endpoint();
            families.insert(ep.family());
            CHECK(ep.port() == srv.port());
            CHECK(ep.address().is_unspecified());
            if (ep.family() == AF_INET6) CHECK(s.get_option<int>(IPPROTO_IPV6, IPV6_V6ONLY) == 1);
        }
        CHECK(families == std::set<int>{AF_INET, AF_INET6});
        co_await echo_once(srv.port(), "127.0.0.1");
        co_await echo_once(srv.port(), "::1");
        srv.close();
        co_await srv.wait_closed();
    }());
}

TEST_CASE("start_server with a list of hosts listens on every address on one port") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        std::vector<std::string> hosts;  // (built before the co_await: no braced list in a coroutine)
        hosts.push_back("127.0.0.1");
        hosts.push_back("::1");
        auto srv = co_await ringio::start_server(echo, hosts, 0);
        REQUIRE(srv.sockets().size() == 2);
        CHECK(srv.port() != 0);
        std::set<std::string> addresses;
        for (const ringio::socket& s : srv.sockets()) {
            ringio::endpoint ep = s.local_endpoint();
            CHECK(ep.port() == srv.port());  // port 0: the first socket's port for all
            addresses.insert(ep.address().to_string());
        }
        CHECK(addresses == std::set<std::string>{"127.0.0.1", "::1"});
        co_await echo_once(srv.port(), "127.0.0.1");
        co_await echo_once(srv.port(), "::1");
        srv.close();
        co_await srv.wait_closed();

        // An address named twice gets one socket; a fixed port is used for every address.
        std::uint16_t port = closed_port();
        hosts.push_back("127.0.0.1");
        hosts.push_back("[::1]");
        auto fixed = co_await ringio::start_server(echo, hosts, port);
        CHECK(fixed.sockets().size() == 2);
        for (const ringio::socket& s : fixed.sockets()) CHECK(s.local_endpoint().port() == port);
        co_await echo_once(port, "::1");
        co_await echo_once(port, "127.0.0.1");
        fixed.close();
        co_await fixed.wait_closed();

        // Every host must get a socket: an address this machine does not have is an error, and
        // the sockets already bound for the others are closed.
        hosts.clear();
        hosts.push_back("127.0.0.1");
        hosts.push_back("192.0.2.1");  // TEST-NET-1: on no interface here
        auto e = co_await thrown<std::system_error>(ringio::start_server(echo, hosts, 0));
        REQUIRE(e);
        CHECK(e->code().value() == EADDRNOTAVAIL);
        CHECK(contains(e->what(), "192.0.2.1"));
        // A wildcard and a specific address of its family collide (as in asyncio).
        hosts.clear();
        hosts.push_back("0.0.0.0");
        hosts.push_back("127.0.0.1");
        e = co_await thrown<std::system_error>(ringio::start_server(echo, hosts, 0));
        REQUIRE(e);
        CHECK(e->code().value() == EADDRINUSE);
        // No host at all.
        e = co_await thrown<std::system_error>(ringio::start_server(echo, std::vector<std::string>(), 0));
        REQUIRE(e);
        CHECK(e->code().value() == EADDRNOTAVAIL);
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("close() + wait_closed() with connected clients; close_clients() ends them gracefully") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        const std::string blob(512 * 1024, 'b');
        int finished = 0;
        int blobs = 0;
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                w.write("hello\n");
                while (true) {
                    std::string line = co_await r.read_line();
                    if (line.empty()) break;
                    w.write(line == "big\n" ? blob : line);
                    if (line == "big\n") ++blobs;
                    co_await w.drain();
                }
                ++finished;
            },
            "127.0.0.1", 0);
        std::vector<streams> clients;
        for (int i = 0; i < 3; ++i) {
            clients.push_back(co_await ringio::open_connection("127.0.0.1", srv.port()));
            CHECK(co_await clients.back().first.read_line() == "hello\n");
        }
        CHECK(srv.connections() == 3);

        srv.close();
        CHECK_FALSE(srv.is_serving());
        auto closed = ringio::create_task(srv.wait_closed());
        co_await ringio::sleep(20ms);
        CHECK_FALSE(closed.done());  // the handlers still run
        // Existing connections go on after close().
        clients[0].second.write("still there\n");
        CHECK(co_await clients[0].first.read_line() == "still there\n");

        // A client that leaves ends its handler.
        clients[0].second.write_eof();
        CHECK(co_await read_to_eof(clients[0].first) == "");
        CHECK(co_await eventually([&] { return srv.connections() == 2; }));
        CHECK_FALSE(closed.done());

        // Client 1 has unread data waiting when the server closes the connections.
        clients[1].second.write("big\n");
        co_await clients[1].second.drain();
        CHECK(co_await eventually([&] { return blobs == 1; }));  // the handler is writing it
        srv.close_clients();
        std::string got = co_await read_to_eof(clients[1].first);
        CHECK(got.size() == blob.size());
        CHECK(got == blob);
        CHECK(co_await read_to_eof(clients[2].first) == "");
        co_await closed;
        CHECK(srv.connections() == 0);
        CHECK(finished == 3);
        for (auto& c : clients) {
            c.second.close();
            co_await c.second.wait_closed();
        }
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("abort_clients() resets every connection") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(
            [](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                w.write("hello\n");
                co_await w.drain();
                (void)co_await r.read(65536);
            },
            "127.0.0.1", 0);
        std::vector<streams> clients;
        for (int i = 0; i < 2; ++i) {
            clients.push_back(co_await ringio::open_connection("127.0.0.1", srv.port()));
            CHECK(co_await clients.back().first.read_line() == "hello\n");
        }
        srv.close();
        srv.abort_clients();
        for (auto& c : clients) {
            auto e = co_await thrown<std::system_error>(c.first.read(65536));
            REQUIRE(e);
            CHECK(e->code().value() == ECONNRESET);
        }
        co_await srv.wait_closed();
        CHECK(srv.connections() == 0);
        for (auto& c : clients) {
            c.second.close();
            co_await c.second.wait_closed();
        }
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("after close() no new connection reaches a handler; after wait_closed() they are refused") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        int handled = 0;
        auto srv = co_await ringio::start_server(
            [&handled](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                ++handled;
                co_await echo(std::move(r), std::move(w));
            },
            "127.0.0.1", 0);
        std::uint16_t port = srv.port();
        co_await echo_once(port);
        CHECK(handled == 1);
        srv.close();
        // At once: refused, or accepted by the kernel and then closed without a handler.
        try {
            auto [r, w] = co_await ringio::open_connection("127.0.0.1", port);
            w.write("anyone?\n");
            try {
                CHECK(co_await ringio::wait_for(r.read(), 2s) == "");
            } catch (const std::system_error& e) {
                CHECK(e.code().value() == ECONNRESET);
            }
            w.close();
            co_await w.wait_closed();
        } catch (const std::system_error& e) {
            CHECK(e.code().value() == ECONNREFUSED);
        }
        co_await srv.wait_closed();
        auto e = co_await thrown<std::system_error>(ringio::open_connection("127.0.0.1", port));
        REQUIRE(e);
        CHECK(e->code().value() == ECONNREFUSED);
        CHECK(handled == 1);
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("a connection attempted right after close() is refused") {
    run_bounded([]() -> ringio::task<> {
        int handled = 0;
        auto srv = co_await ringio::start_server(
            [&handled](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                ++handled;
                co_await echo(std::move(r), std::move(w));
            },
            "127.0.0.1", 0);
        std::uint16_t port = srv.port();
        co_await echo_once(port);
        srv.close();
        auto e = co_await thrown<std::system_error>(ringio::open_connection("127.0.0.1", port));
        REQUIRE(e);
        CHECK(e->code().value() == ECONNREFUSED);
        co_await srv.wait_closed();
        CHECK(handled == 1);
    }());
}

TEST_CASE("a handler that throws is logged with the peer's address; the server goes on") {
    log_capture logs;
    run_bounded([&logs]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(
            [](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                while (true) {
                    std::string line = co_await r.read_line();
                    if (line.empty()) break;
                    if (line == "boom\n") {
                        w.write("partial\n");
                        throw std::runtime_error("boom from the handler");
                    }
                    w.write(line);
                }
            },
            "127.0.0.1", 0);
        {
            auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
            std::string me = w.sockname().to_string();
            w.write("boom\n");
            // What the handler wrote before it threw still arrives, then EOF.
            CHECK(co_await read_to_eof(r) == "partial\n");
            CHECK(co_await eventually([&] { return !logs.lines.empty(); }));
            REQUIRE(logs.lines.size() == 1);
            CHECK(contains(logs.lines[0], me));
            CHECK(contains(logs.lines[0], "boom from the handler"));
            w.close();
            co_await w.wait_closed();
        }
        CHECK(srv.is_serving());
        co_await echo_once(srv.port());
        co_await echo_once(srv.port());
        srv.close();
        co_await srv.wait_closed();
    }());
    CHECK(logs.lines.size() == 1);
}

TEST_CASE("a handler that fails before its coroutine starts is logged; the connection closes, the server goes on") {
    // A plain function as the handler may throw before it returns a task, or return an empty
    // one: each fails that connection only (logged with the peer), which the client sees as EOF.
    log_capture logs;
    run_bounded([&logs]() -> ringio::task<> {
        int calls = 0;
        auto srv = co_await ringio::start_server(
            [&calls](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                ++calls;
                if (calls == 1) throw std::runtime_error("no task from the handler");
                if (calls == 2) return {};
                return [](ringio::stream_reader rd, ringio::stream_writer wr) -> ringio::task<> {
                    while (true) {
                        std::string line = co_await rd.read_line();
                        if (line.empty()) break;
                        wr.write(line);
                    }
                }(std::move(r), std::move(w));
            },
            "127.0.0.1", 0);
        for (const char* expected : {"no task from the handler", "empty task"}) {
            auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
            std::string me = w.sockname().to_string();
            CHECK(co_await read_to_eof(r) == "");  // (data sent and never read would make it a reset)
            CHECK(co_await eventually([&] { return srv.connections() == 0; }));
            REQUIRE(!logs.lines.empty());
            CHECK(contains(logs.lines.back(), me));
            CHECK(contains(logs.lines.back(), expected));
            w.close();
            co_await w.wait_closed();
        }
        CHECK(logs.lines.size() == 2);
        CHECK(srv.is_serving());
        co_await echo_once(srv.port());
        srv.close();
        co_await srv.wait_closed();
        CHECK(calls == 3);
    }());
    CHECK(logs.lines.size() == 2);
}

TEST_CASE("serve_forever() returns after close() and closes the server when cancelled") {
    run_bounded([]() -> ringio::task<> {
        {
            auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0);
            auto forever = ringio::create_task(srv.serve_forever());
            co_await ringio::yield_now();
            co_await echo_once(srv.port());
            CHECK_FALSE(forever.done());
            srv.close();
            co_await forever;  // returns normally
            co_await srv.wait_closed();
        }
        {
            auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0);
            std::uint16_t port = srv.port();
            auto forever = ringio::create_task(srv.serve_forever());
            co_await ringio::yield_now();
            CHECK_FALSE(forever.done());
            forever.cancel();
            CHECK(co_await thrown<ringio::cancelled_error>(std::move(forever)));
            CHECK_FALSE(srv.is_serving());
            co_await srv.wait_closed();
            auto e = co_await thrown<std::system_error>(ringio::open_connection("127.0.0.1", port));
            REQUIRE(e);
            CHECK(e->code().value() == ECONNREFUSED);
        }
    }());
}

TEST_CASE("wait_closed() before close() waits for close()") {
    run_bounded([]() -> ringio::task<> {
        auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0);
        auto closed = ringio::create_task(srv.wait_closed());
        co_await ringio::sleep(10ms);
        CHECK_FALSE(closed.done());
        srv.close();
        co_await closed;
    }());
}

TEST_CASE("destroying the server stops accepting; its connections run on") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        std::optional<ringio::server> srv(co_await ringio::start_server(echo, "127.0.0.1", 0));
        std::uint16_t port = srv->port();
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", port);
        w.write("one\n");
        CHECK(co_await r.read_line() == "one\n");
        srv.reset();
        w.write("two\n");
        CHECK(co_await r.read_line() == "two\n");
        w.write_eof();
        CHECK(co_await read_to_eof(r) == "");
        w.close();
        co_await w.wait_closed();
        // Eventually nothing listens on the port.
        bool refused = false;
        for (int i = 0; i < 100 && !refused; ++i) {
            try {
                auto [r2, w2] = co_await ringio::open_connection("127.0.0.1", port);
                w2.close();
                co_await w2.wait_closed();
                co_await ringio::sleep(10ms);
            } catch (const std::system_error& e) {
                refused = e.code().value() == ECONNREFUSED;
            }
        }
        CHECK(refused);
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("1000 concurrent clients against one server") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        ringio::server_options o;
        o.backlog = 1024;
        std::size_t peak = 0;
        auto srv = co_await ringio::start_server(echo, "127.0.0.1", 0, o);
        constexpr int n = 1000;
        int ok = 0;
        std::vector<ringio::task<>> clients;
        ringio::event all_connected;
        int connected = 0;
        for (int i = 0; i < n; ++i) {
            clients.push_back([](std::uint16_t port, int id, int& good, int& conns, ringio::event& all,
                                 std::size_t& most, ringio::server& s) -> ringio::task<> {
                auto [r, w] = co_await ringio::open_connection("127.0.0.1", port);
                std::string msg = "client " + std::to_string(id) + " " + std::string(static_cast<std::size_t>(id % 97), 'x') + "\n";
                w.write(msg);
                std::string back = co_await r.read_line();
                if (back == msg) ++good;
                // Hold every connection open until all of them exchanged a line.
                if (++conns == n) all.set();
                most = std::max(most, s.connections());
                co_await all.wait();
                w.write_eof();
                CHECK(co_await r.read() == "");
                w.close();
                co_await w.wait_closed();
            }(srv.port(), i, ok, connected, all_connected, peak, srv));
        }
        co_await ringio::gather(std::move(clients));
        CHECK(ok == n);
        CHECK(peak == n);  // all at once
        srv.close();
        co_await srv.wait_closed();
    }(), 20s);
    CHECK(test::open_fds() == fds);
}

namespace {
/// Lowers RLIMIT_NOFILE and fills every free fd slot; undoes both on release() or destruction.
struct fd_exhaustion {
    rlimit old{};
    std::vector<int> fillers;
    bool active = false;

    static int highest_fd() {
        int top = 0;
        if (DIR* d = ::opendir("/proc/self/fd")) {
            while (dirent* e = ::readdir(d)) top = std::max(top, std::atoi(e->d_name));
            ::closedir(d);
        }
        return top;
    }
    void lower(int headroom) {
        REQUIRE(::getrlimit(RLIMIT_NOFILE, &old) == 0);
        rlimit low = old;
        low.rlim_cur = static_cast<rlim_t>(highest_fd() + 1 + headroom);
        REQUIRE(low.rlim_cur < old.rlim_cur);
        REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
        active = true;
    }
    void fill() {
        for (int i = 0; i < 10000; ++i) {
            int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                CHECK(errno == EMFILE);
                return;
            }
            fillers.push_back(fd);
        }
        FAIL("could not exhaust the fd table");
    }
    void release() {
        for (int fd : fillers) ::close(fd);
        fillers.clear();
        if (active) ::setrlimit(RLIMIT_NOFILE, &old);
        active = false;
    }
    ~fd_exhaustion() { release(); }
};
}  // namespace

TEST_CASE("EMFILE on accept is logged once; the server stays and serves again once fds are free") {
    std::size_t fds = test::open_fds();
    log_capture logs;
    fd_exhaustion ex;
    run_bounded([&]() -> ringio::task<> {
        int handled = 0;
        // Lower the limit before the server arms its accept (the kernel reads it then).
        ex.lower(16);
        auto srv = co_await ringio::start_server(
            [&handled](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                ++handled;
                co_await echo(std::move(r), std::move(w));
            },
            "127.0.0.1", 0);
        auto cli = ringio::socket::create(AF_INET, SOCK_STREAM);
        ex.fill();
        co_await cli.connect(ringio::endpoint(ringio::ip_address::loopback_v4(), srv.port()));
        CHECK(co_await eventually([&] { return !logs.lines.empty(); }, 3000ms));
        co_await ringio::sleep(400ms);  // a few retries with back-off happen meanwhile
        CHECK(logs.lines.size() == 1);
        if (!logs.lines.empty()) CHECK(contains(logs.lines[0], std::system_category().message(EMFILE)));
        CHECK(srv.is_serving());
        CHECK(handled == 0);
        ex.release();
        auto [r, w] = ringio::make_streams(std::move(cli));
        w.write("ping\n");
        CHECK(co_await ringio::wait_for(r.read_line(), 5s) == "ping\n");
        CHECK(handled == 1);
        co_await echo_once(srv.port());  // and the next one
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
    ex.release();
    CHECK(test::open_fds() == fds);
}

TEST_CASE("Unix server: a stale socket file is replaced and removed on close") {
    std::size_t fds = test::open_fds();
    char tmpl[] = "/tmp/ringio-srv-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    const std::string dir = tmpl;
    const std::string path = dir + "/s.sock";
    {  // leave a socket file behind, as a crashed server would
        auto s = ringio::socket::create(AF_UNIX, SOCK_STREAM);
        s.bind(ringio::endpoint::unix_path(path));
    }
    struct stat sb {};
    REQUIRE(::stat(path.c_str(), &sb) == 0);
    run_bounded([](std::string file) -> ringio::task<> {
        auto srv = co_await ringio::start_unix_server(echo, file);
        CHECK(srv.port() == 0);
        {
            auto [r, w] = co_await ringio::open_unix_connection(file);
            w.write("unix\n");
            CHECK(co_await r.read_line() == "unix\n");
            w.close();
            co_await w.wait_closed();
        }
        srv.close();
        co_await srv.wait_closed();
        struct stat st {};
        CHECK(::stat(file.c_str(), &st) != 0);
        // An abstract name leaves no file and can be reused at once.
        std::string name = "@ringio-srv-" + std::to_string(::getpid());
        for (int i = 0; i < 2; ++i) {
            auto abs = co_await ringio::start_unix_server(echo, name);
            auto [r, w] = co_await ringio::open_unix_connection(name);
            w.write("abstract\n");
            CHECK(co_await r.read_line() == "abstract\n");
            w.close();
            co_await w.wait_closed();
            abs.close();
            co_await abs.wait_closed();
        }
    }(path));
    ::unlink(path.c_str());
    ::rmdir(dir.c_str());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("Unix server: close() leaves a socket file that another server has bound since") {
    // Server A's file is removed and server B binds the same path: A's close() must not remove
    // B's file (asyncio 3.13 compares the inode too), and B goes on accepting.
    std::size_t fds = test::open_fds();
    char tmpl[] = "/tmp/ringio-srv-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    const std::string dir = tmpl;
    const std::string path = dir + "/s.sock";
    run_bounded([](std::string file) -> ringio::task<> {
        auto a = co_await ringio::start_unix_server(echo, file);
        REQUIRE(::unlink(file.c_str()) == 0);
        auto b = co_await ringio::start_unix_server(echo, file);
        struct stat before {};
        REQUIRE(::stat(file.c_str(), &before) == 0);
        a.close();
        co_await a.wait_closed();
        struct stat after {};
        CHECK(::stat(file.c_str(), &after) == 0);
        CHECK(after.st_ino == before.st_ino);
        {
            auto [r, w] = co_await ringio::open_unix_connection(file);
            w.write("b\n");
            CHECK(co_await r.read_line() == "b\n");
            w.close();
            co_await w.wait_closed();
        }
        // B's own close removes it.
        b.close();
        co_await b.wait_closed();
        CHECK(::stat(file.c_str(), &after) != 0);
    }(path));
    ::unlink(path.c_str());
    ::rmdir(dir.c_str());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("a regular file at the Unix path is not replaced") {
    char tmpl[] = "/tmp/ringio-srv-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    const std::string dir = tmpl;
    const std::string path = dir + "/not-a-socket";
    int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    ::close(fd);
    run_bounded([](std::string file) -> ringio::task<> {
        auto e = co_await thrown<std::system_error>(ringio::start_unix_server(echo, file));
        REQUIRE(e);
        CHECK(e->code().value() == EADDRINUSE);
    }(path));
    struct stat sb {};
    CHECK(::stat(path.c_str(), &sb) == 0);
    CHECK(S_ISREG(sb.st_mode));
    ::unlink(path.c_str());
    ::rmdir(dir.c_str());
}

TEST_CASE("abort_clients() ends a handler blocked in drain()") {
    std::size_t fds = test::open_fds();
    log_capture logs;  // the handler's failed drain is logged; keep it off stderr
    run_bounded([]() -> ringio::task<> {
        bool blocked = false;
        auto srv = co_await ringio::start_server(
            [&blocked](ringio::stream_reader, ringio::stream_writer w) -> ringio::task<> {
                w.transport().set_send_buffer_size(16 * 1024);
                std::string chunk(256 * 1024, 'h');
                for (int i = 0; i < 1000; ++i) {  // the client never reads
                    w.write(chunk);
                    blocked = true;
                    co_await w.drain();
                    blocked = false;
                }
            },
            "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        CHECK(co_await eventually([&] { return blocked; }));
        co_await ringio::sleep(20ms);
        CHECK(blocked);
        srv.close();
        srv.abort_clients();
        co_await srv.wait_closed();
        CHECK(srv.connections() == 0);
        std::optional<std::system_error> err;
        std::size_t got = 0;
        for (int i = 0; i < 100000 && !err; ++i) {
            try {
                std::string chunk = co_await r.read(65536);
                if (chunk.empty()) break;
                got += chunk.size();
            } catch (const std::system_error& e) {
                err = e;
            }
        }
        REQUIRE(err);
        CHECK(err->code().value() == ECONNRESET);
        CHECK(got < 1000 * 256 * 1024);  // far from everything the handler wanted to send
        w.close();
        co_await w.wait_closed();
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("start_server on a name that does not resolve is resolve_error") {
    run_bounded([]() -> ringio::task<> {
        auto e = co_await thrown<ringio::resolve_error>(ringio::start_server(echo, "nosuchhost.invalid", 0));
        REQUIRE(e);
        CHECK(e->host() == "nosuchhost.invalid");
    }(), 30s);
}

TEST_CASE("a handler sees its peer and its own address") {
    run_bounded([]() -> ringio::task<> {
        std::string peer, local;
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                peer = w.peername().to_string();
                local = w.sockname().to_string();
                co_await echo(std::move(r), std::move(w));
            },
            "127.0.0.1", 0);
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        w.write("x\n");
        CHECK(co_await r.read_line() == "x\n");
        CHECK(peer == w.sockname().to_string());
        CHECK(local == w.peername().to_string());
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
}
