// The epoll backend (runtime/reactor): regressions found in review, one test per finding, over
// real sockets (127.0.0.1, socket pairs, Unix paths in a temporary directory), regular files
// and a pty. Every test that checks epoll behaviour forces the epoll backend with loop_options,
// so that both registrations of this binary (net_epoll and net_epoll_epoll) exercise it. Every
// wait is bounded (wait_for, poll with a deadline, or a watchdog thread where a timer would hide
// the bug), so a regression fails instead of hanging.
#include <doctest/doctest.h>

#include <ringio/detail/buffer_ring.hpp>
#include <ringio/ringio.hpp>
#include <ringio/stream.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pty.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "child_process.hpp"
#include "helpers.hpp"
#include "net_helpers.hpp"
#include "seccomp_block.hpp"

using namespace std::chrono_literals;

namespace {

using test::run_bounded;

/// Every test here runs its loops on the epoll backend, whatever RINGIO_BACKEND says.
const ringio::loop_options on_epoll{.backend = ringio::backend_kind::epoll};

ringio::task<> require_epoll() {
    REQUIRE(ringio::event_loop::current() != nullptr);
    REQUIRE(ringio::event_loop::current()->backend() == ringio::backend_kind::epoll);
    co_return;
}

/// CPU time (user + system) the calling thread has used.
std::chrono::microseconds thread_cpu() {
    rusage ru{};
    REQUIRE(::getrusage(RUSAGE_THREAD, &ru) == 0);
    auto us = [](const timeval& tv) { return std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec); };
    return us(ru.ru_utime) + us(ru.ru_stime);
}

/// A temporary directory, removed (with the files the test left in it) at the end.
struct temp_dir {
    std::string path;
    temp_dir() {
        char tmpl[] = "/tmp/ringio-epoll-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~temp_dir() {
        for (const char* f : {"/data", "/full.sock"}) ::unlink((path + f).c_str());
        ::rmdir(path.c_str());
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
};

/// A blocking TCP client socket connected to 127.0.0.1:port.
int plain_tcp_client(std::uint16_t port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0);
    return fd;
}

/// Both ends of a TCP connection on 127.0.0.1 as plain blocking fds (O_CLOEXEC), made without
/// a loop: one end for ringio, the other for a peer thread.
std::pair<int, int> tcp_fds() {
    int lst = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(lst >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(lst, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(lst, 1) == 0);
    socklen_t len = sizeof a;
    REQUIRE(::getsockname(lst, reinterpret_cast<sockaddr*>(&a), &len) == 0);
    int c = plain_tcp_client(ntohs(a.sin_port));
    int s = ::accept4(lst, nullptr, nullptr, SOCK_CLOEXEC);
    REQUIRE(s >= 0);
    ::close(lst);
    return {c, s};
}

/// Waits (at most until `deadline`) for `fd` to be readable; false at the deadline.
bool readable_by(int fd, test::steady::time_point deadline) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, test::remaining_ms(deadline)) > 0;
}

std::span<const std::byte> bytes(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

/// Runs `body` on a new epoll loop that has no timer of its own, bounded by a watchdog thread
/// instead: past `limit` the watchdog cancels the body through call_soon_threadsafe and the test
/// fails. (A pending timer, such as run_bounded's, lets the loop block in epoll_wait until it is
/// due, which would hide a loop that spins when only another thread can wake it.)
void run_watched(ringio::task<> body, std::chrono::seconds limit) {
    struct watch {
        std::mutex m;
        std::condition_variable cv;
        bool finished = false;  // the body has ended (set on the loop's thread, under m)
        bool fired = false;     // the watchdog cancelled it (loop's thread)
    };
    auto st = std::make_shared<watch>();
    ringio::run([](ringio::task<> b, std::chrono::seconds l, std::shared_ptr<watch> w) -> ringio::task<> {
        co_await require_epoll();
        auto h = ringio::create_task(std::move(b));
        ringio::task_handle<>* hp = &h;
        ringio::loop_handle loop = ringio::event_loop::current()->handle();
        std::jthread watchdog([w, loop, l, hp] {
            std::unique_lock lk(w->m);
            if (w->cv.wait_for(lk, l, [&] { return w->finished; })) return;
            // Runs on the loop's thread, where `finished` is set before h goes: h is alive when
            // it finds it false.
            loop.call_soon_threadsafe([w, hp] {
                if (w->finished) return;
                w->fired = true;
                hp->cancel();
            });
        });
        struct finish {  // before the watchdog is joined, however the body ends
            watch& w;
            ~finish() {
                {
                    std::lock_guard lk(w.m);
                    w.finished = true;
                }
                w.cv.notify_all();
            }
        } guard{*w};
        try {
            co_await h;
        } catch (const ringio::cancelled_error&) {
            CHECK_FALSE(w->fired);  // cancelled at the time limit
        }
    }(std::move(body), limit, st), on_epoll);
    CHECK_FALSE(st->fired);
}

}  // namespace

// ---- the loop waits for other threads without spinning ----

TEST_CASE("epoll: a loop waiting only on to_thread or call_soon_threadsafe sleeps instead of spinning") {
    // A busy-loop detector, not a speed claim: the loop thread has nothing to do for 300 ms but
    // wait for another thread; the CPU time it uses meanwhile must stay far below that.
    run_watched([]() -> ringio::task<> {
        auto before = thread_cpu();
        int v = co_await ringio::to_thread([] {
            std::this_thread::sleep_for(300ms);
            return 7;
        });
        auto spent = thread_cpu() - before;
        CHECK(v == 7);
        INFO("loop thread CPU over 300 ms of to_thread: " << spent.count() << " us");
        CHECK(spent < 100ms);
    }(), 15s);

    run_watched([]() -> ringio::task<> {
        ringio::event ev;
        ringio::loop_handle h = ringio::event_loop::current()->handle();
        auto before = thread_cpu();
        {
            std::jthread poster([h, &ev] {
                std::this_thread::sleep_for(300ms);
                h.call_soon_threadsafe([&ev] { ev.set(); });
            });
            co_await ev.wait();
        }  // joined: the post is done
        auto spent = thread_cpu() - before;
        INFO("loop thread CPU over 300 ms of waiting for call_soon_threadsafe: " << spent.count() << " us");
        CHECK(spent < 100ms);
    }(), 15s);
}

// ---- write_eof while the reader is parked ----

TEST_CASE("epoll: write() then write_eof() while the reader is parked: the FIN reaches the peer") {
    std::size_t fds = test::open_fds();
    auto [c, s] = tcp_fds();
    // The peer reads to EOF, then answers and closes; bounded by its own deadline.
    std::atomic<long> peer_got{-1};
    std::atomic<bool> peer_saw_eof{false};
    std::thread peer([s = s, &peer_got, &peer_saw_eof] {
        auto deadline = test::steady::now() + 10s;
        long total = 0;
        char buf[256];
        while (readable_by(s, deadline)) {
            ssize_t n = ::recv(s, buf, sizeof buf, 0);
            if (n <= 0) {
                peer_saw_eof = n == 0;
                break;
            }
            total += n;
        }
        peer_got = total;
        (void)!::send(s, "bye", 3, MSG_NOSIGNAL);
        ::close(s);
    });
    run_bounded([](int fd) -> ringio::task<> {
        co_await require_epoll();
        auto [r, w] = ringio::make_streams(ringio::socket(fd));
        auto reader = ringio::create_task([](ringio::stream_reader& in) -> ringio::task<std::string> {
            co_return co_await in.read(100);
        }(r));
        co_await ringio::sleep(20ms);  // the scenario: the reader is parked on the fd, nothing else is ready
        w.write("hello");
        w.write_eof();
        std::string reply;
        bool timed_out = false;
        try {
            reply = co_await ringio::wait_for(std::move(reader), 3s);
        } catch (const ringio::timeout_error&) {
            timed_out = true;  // the shutdown(SHUT_WR) was never performed: the peer waits for the FIN
        }
        CHECK_FALSE(timed_out);
        CHECK(reply == "bye");
        w.close();
        co_await w.wait_closed();
    }(c), 15s, on_epoll);
    peer.join();
    CHECK(peer_saw_eof.load());
    CHECK(peer_got.load() == 5);
    CHECK(test::open_fds() == fds);
}

// ---- an abandoned stream flushing at shutdown ----

TEST_CASE("epoll: an abandoned stream still flushing a large write at shutdown while the peer reads") {
    // The loop shuts down while the abandoned stream's 4 MiB write is still being sent and the
    // peer keeps reading: the last send completes during shutdown and frees the stream, which
    // must not be touched afterwards (AddressSanitizer catches it).
    std::size_t fds = test::open_fds();
    constexpr std::size_t big = 4 << 20;
    for (int it = 0; it < 60; ++it) {
        CAPTURE(it);
        int sv[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
        std::atomic<long> got{0};
        std::atomic<bool> eof{false};
        std::thread peer([fd = sv[1], &got, &eof] {
            auto deadline = test::steady::now() + 10s;
            std::vector<char> buf(1 << 16);
            while (readable_by(fd, deadline)) {
                ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
                if (n <= 0) {
                    eof = n == 0;
                    break;
                }
                got += n;
            }
        });
        run_bounded([](int fd, int iteration) -> ringio::task<> {
            co_await require_epoll();
            {
                auto [r, w] = ringio::make_streams(ringio::socket(fd));
                w.write(std::string(big, 'x'));
            }  // both halves dropped: the write goes on alone
            co_await ringio::sleep(std::chrono::microseconds(200 + iteration * 137 % 2000));
        }(sv[0], it), 15s, on_epoll);
        peer.join();
        ::close(sv[1]);
        CHECK(eof.load());  // the stream's socket was closed at shutdown
        CHECK(got.load() <= static_cast<long>(big));
    }
    CHECK(test::open_fds() == fds);
}

// ---- a socket that outlives its loop ----

TEST_CASE("epoll: a socket that outlives its loop is closed afterwards without touching the loop") {
    auto attach = [](ringio::socket& s, int& fd) -> ringio::task<> {
        co_await require_epoll();
        s = ringio::socket::create(AF_INET, SOCK_STREAM);
        s.set_nodelay(true);  // an option: binds the socket to this loop (registered with its epoll)
        fd = s.fd();
    };
    std::size_t fds = test::open_fds();

    SUBCASE("after run()") {
        int fd = -1;
        {
            ringio::socket s;
            ringio::run(attach(s, fd), on_epoll);
            REQUIRE(s.valid());
            REQUIRE(fd >= 0);
        }  // closed here, the loop gone
        errno = 0;
        CHECK(::fcntl(fd, F_GETFD) == -1);
        CHECK(errno == EBADF);
    }

    SUBCASE("after the loop's memory has been reused") {
        // The loop lives in storage that is overwritten once it is destroyed, as reused memory
        // would be: closing the socket must not reach for the loop (or its epoll) at all.
        alignas(ringio::event_loop) std::byte storage[sizeof(ringio::event_loop)];
        int fd = -1;
        ringio::socket s;
        auto* loop = new (storage) ringio::event_loop(on_epoll);
        loop->run_until_complete(attach(s, fd));
        loop->~event_loop();
        std::memset(storage, 0xA5, sizeof storage);
        REQUIRE(s.valid());
        s = ringio::socket();  // closes
        errno = 0;
        CHECK(::fcntl(fd, F_GETFD) == -1);
        CHECK(errno == EBADF);
    }
    CHECK(test::open_fds() == fds);
}

// ---- a socket that moves between loops ----

TEST_CASE("epoll: a socket used on one loop and closed on another: its fd number reused on the first loop gets its data") {
    std::size_t fds = test::open_fds();
    ringio::thread_options opts;
    opts.loop = on_epoll;
    ringio::run_threads(2, [](std::size_t i) -> ringio::task<> {
        if (i != 0) co_return;  // loop 1 keeps serving calls until loop 0 is done
        co_await require_epoll();
        auto& group = *ringio::loop_group::current();
        int sv[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
        auto* moved = new ringio::socket(sv[0]);  // handed to loop 1, which deletes it
        moved->set_send_buffer_size(65536);        // binds it to loop 0 (registered with its epoll)
        const int old_fd = moved->fd();
        bool on_loop1_epoll = co_await ringio::call_on(group.loop(1), [moved] {
            moved->set_send_buffer_size(65536);  // now loop 1's
            delete moved;                        // closed on loop 1
            return ringio::event_loop::current()->backend() == ringio::backend_kind::epoll;
        });
        CHECK(on_loop1_epoll);
        ::close(sv[1]);

        // The next socket of loop 0 gets the same fd number.
        int sv2[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv2) == 0);
        ringio::socket fresh(sv2[0]);
        REQUIRE(fresh.fd() == old_fd);  // the scenario needs the number reused
        std::byte buf[16];
        auto reader = ringio::create_task([](ringio::socket& s, std::span<std::byte> b) -> ringio::task<std::size_t> {
            co_return co_await s.recv(b);
        }(fresh, buf));
        co_await ringio::sleep(20ms);  // the scenario: the receive is parked, waiting for readiness
        REQUIRE(::write(sv2[1], "hi", 2) == 2);
        std::size_t got = 0;
        bool timed_out = false;
        try {
            got = co_await ringio::wait_for(std::move(reader), 3s);
        } catch (const ringio::timeout_error&) {
            timed_out = true;  // the new fd was never registered with loop 0's epoll
        }
        CHECK_FALSE(timed_out);
        CHECK(got == 2);
        ::close(sv2[1]);
    }, opts);
    CHECK(test::open_fds() == fds);
}

// ---- Unix connect to a full backlog ----

TEST_CASE("epoll: a Unix connect to a listener whose backlog is full completes once the listener accepts") {
    std::size_t fds = test::open_fds();
    temp_dir dir;
    const std::string path = dir.path + "/full.sock";
    int lst = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(lst >= 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    REQUIRE(path.size() < sizeof a.sun_path);
    std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
    REQUIRE(::bind(lst, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(lst, 0) == 0);
    // Fill the backlog: a non-blocking connect then fails with EAGAIN (nothing in progress).
    std::vector<int> fill;
    int last_errno = 0;
    for (int i = 0; i < 64; ++i) {
        int c = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        REQUIRE(c >= 0);
        if (::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
            last_errno = errno;
            ::close(c);
            break;
        }
        fill.push_back(c);
    }
    REQUIRE(last_errno == EAGAIN);  // the backlog is full
    // The scenario: the listener accepts (the queued connections only) 200 ms later.
    std::thread acceptor([lst, n = fill.size()] {
        std::this_thread::sleep_for(200ms);
        for (std::size_t i = 0; i < n; ++i) ::close(::accept(lst, nullptr, nullptr));
    });
    run_bounded([](std::string where) -> ringio::task<> {
        co_await require_epoll();
        auto s = ringio::socket::create(AF_UNIX, SOCK_STREAM);
        auto t0 = test::steady::now();
        bool timed_out = false;
        try {
            co_await ringio::wait_for(s.connect(ringio::endpoint::unix_path(where)), 5s);
        } catch (const ringio::timeout_error&) {
            timed_out = true;  // parked as if in progress, and never completed
        }
        CHECK_FALSE(timed_out);
        CHECK(test::steady::now() - t0 >= 100ms);  // it did wait for the room
        co_await s.close();
    }(path), 15s, on_epoll);
    acceptor.join();
    for (int c : fill) ::close(c);
    ::close(lst);
    CHECK(test::open_fds() == fds);
}

// ---- io::read / io::write on files and ttys ----

TEST_CASE("epoll: io::read and io::write on a regular file (cold cache and O_APPEND) and on a pty") {
    std::size_t fds = test::open_fds();
    temp_dir dir;
    const std::string path = dir.path + "/data";
    constexpr std::size_t size = 1 << 20;
    {
        int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
        REQUIRE(fd >= 0);
        std::string s(size, 'a');
        REQUIRE(::write(fd, s.data(), s.size()) == static_cast<ssize_t>(s.size()));
        ::fsync(fd);
        ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        ::close(fd);
    }
    run_bounded([](std::string file) -> ringio::task<> {
        co_await require_epoll();
        std::vector<std::byte> buf(4096);

        // A regular file at its position, cold: two reads in a row continue where it was.
        int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
        REQUIRE(fd >= 0);
        ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        ringio::io_result r1 = co_await ringio::wait_for(ringio::io::read(fd, buf), 5s);
        CHECK(r1.res == 4096);
        CHECK(std::all_of(buf.begin(), buf.end(), [](std::byte b) { return b == std::byte{'a'}; }));
        ringio::io_result r2 = co_await ringio::wait_for(ringio::io::read(fd, buf), 5s);
        CHECK(r2.res == 4096);
        CHECK(::lseek(fd, 0, SEEK_CUR) == 8192);
        ::close(fd);

        // Appending.
        fd = ::open(file.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
        REQUIRE(fd >= 0);
        ringio::io_result w = co_await ringio::wait_for(ringio::io::write(fd, bytes("0123456789")), 5s);
        CHECK(w.res == 10);
        ::close(fd);
        struct stat st {};
        REQUIRE(::stat(file.c_str(), &st) == 0);
        CHECK(st.st_size == static_cast<off_t>(size + 10));

        // A pty: written on one side, read on the other (the data crosses the line discipline
        // asynchronously, so the read may have to wait for readiness).
        int master = -1, slave = -1;
        if (::openpty(&master, &slave, nullptr, nullptr, nullptr) != 0) {
            MESSAGE("no pty here (openpty: " << std::strerror(errno) << "): that part skipped");
            co_return;
        }
        ::fcntl(master, F_SETFD, FD_CLOEXEC);
        ::fcntl(slave, F_SETFD, FD_CLOEXEC);
        ringio::io_result pw = co_await ringio::wait_for(ringio::io::write(slave, bytes("abc")), 5s);
        CHECK(pw.res == 3);
        ringio::io_result pr = co_await ringio::wait_for(ringio::io::read(master, buf), 5s);
        CHECK(pr.res == 3);
        if (pr.res == 3) CHECK(std::string_view(reinterpret_cast<const char*>(buf.data()), 3) == "abc");
        ::close(slave);
        ::close(master);
    }(path), 15s, on_epoll);
    CHECK(test::open_fds() == fds);
}

// ---- epoll_pwait2 refused ----

#ifndef __NR_epoll_pwait2
#define __NR_epoll_pwait2 441  // the same number on x86-64 and AArch64
#endif

TEST_CASE("epoll: timers work when seccomp refuses epoll_pwait2 with EPERM") {
    if (test::native_arch == 0) {
        MESSAGE("skipped: no seccomp filter for this machine");
        return;
    }
    // In a forked child with the filter; it reports its failures.
    auto setup = [] { return test::block_syscall(__NR_epoll_pwait2); };
    auto body = [] {
        std::string report;
        ringio::run([](std::string& failures) -> ringio::task<> {
            if (ringio::event_loop::current()->backend() != ringio::backend_kind::epoll) failures += "not on epoll; ";
            auto t0 = std::chrono::steady_clock::now();
            co_await ringio::sleep(10ms);
            co_await ringio::sleep(1500us);  // a wait finer than a millisecond
            bool timed_out = false;
            try {
                co_await ringio::wait_for(ringio::sleep(10s), 20ms);
            } catch (const ringio::timeout_error&) {
                timed_out = true;
            }
            if (!timed_out) failures += "wait_for did not time out; ";
            auto took = std::chrono::steady_clock::now() - t0;
            if (took < 31ms) failures += "the timers fired early; ";
            if (took > 5s) failures += "the timers fired late; ";
        }(report), on_epoll);
        return report;
    };
    test::child_result res = test::run_in_child(setup, body, 20s);
    if (res.setup_failed) {
        MESSAGE("skipped: the seccomp filter could not be installed");
        return;
    }
    INFO("child: ", res.report);
    CHECK(res.report.empty());
    CHECK(test::exited_with(res.status, 0));
}

// ---- MSG_WAITALL and release() ----

TEST_CASE("epoll: recv with MSG_WAITALL returns the full buffer and release() hands back a blocking fd") {
    std::size_t fds = test::open_fds();
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    run_bounded([](int fd, int peer) -> ringio::task<> {
        co_await require_epoll();
        ringio::socket s(fd);
        REQUIRE(::write(peer, "ab", 2) == 2);
        auto later = ringio::create_task([](int other) -> ringio::task<> {
            co_await ringio::sleep(50ms);  // the scenario: the rest comes later
            REQUIRE(::write(other, "cd", 2) == 2);
        }(peer));
        std::byte buf[4]{};
        std::size_t n = co_await ringio::wait_for(s.recv(buf, MSG_WAITALL), 5s);
        CHECK(n == 4);
        CHECK(std::string_view(reinterpret_cast<const char*>(buf), n) == "abcd");
        co_await later;

        // The fd was blocking when it was handed over: it is blocking again when handed back.
        int released = s.release();
        REQUIRE(released == fd);
        CHECK((::fcntl(released, F_GETFL) & O_NONBLOCK) == 0);
        // (and usable as such: a blocking read that finds data)
        REQUIRE(::write(peer, "e", 1) == 1);
        char c = 0;
        CHECK(::read(released, &c, 1) == 1);
        CHECK(c == 'e');

        // One that was non-blocking already stays so.
        int nb = ::dup(released);
        REQUIRE(nb >= 0);
        ::close(released);
        REQUIRE(::fcntl(nb, F_SETFL, ::fcntl(nb, F_GETFL) | O_NONBLOCK) == 0);
        ringio::socket t(nb);
        REQUIRE(::write(peer, "f", 1) == 1);
        std::byte one[1];
        CHECK(co_await ringio::wait_for(t.recv(one), 5s) == 1);
        int back = t.release();
        CHECK((::fcntl(back, F_GETFL) & O_NONBLOCK) != 0);
        ::close(back);
    }(sv[0], sv[1]), 15s, on_epoll);
    ::close(sv[1]);
    CHECK(test::open_fds() == fds);
}

namespace {

/// A blocking TCP client of 127.0.0.1:port (plain calls: small writes never block).
void write_all(int fd, std::string_view s) {
    while (!s.empty()) {
        ssize_t n = ::write(fd, s.data(), s.size());
        REQUIRE(n > 0);
        s.remove_prefix(static_cast<std::size_t>(n));
    }
}

}  // namespace

TEST_CASE("epoll: TCP reads that fill a receive buffer exactly: what stays queued, and a FIN right behind, still arrive") {
    // A read that fills its buffer says nothing about what is left; TCP_INQ does. A reactor that
    // took a full read for "drained" would wait for an edge that never comes: the second round's
    // last three quarters would not arrive until the peer sent more.
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        co_await require_epoll();
        auto& ring = ringio::detail::loop_core::running().stream_buffers();
        REQUIRE(ring);
        const std::size_t unit = ring->buffer_size();
        std::string got;
        bool eof = false;
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader r, ringio::stream_writer) -> ringio::task<> {
                for (int i = 0; i < 1000; ++i) {
                    std::string chunk = co_await r.read(64 * 1024);
                    if (chunk.empty()) break;
                    got += chunk;
                }
                eof = true;
            },
            "127.0.0.1", 0);
        int c = plain_tcp_client(srv.port());
        std::string all;
        // One buffer's worth, then three in one write; each read before anything more is sent.
        for (std::size_t n : {unit, 3 * unit}) {
            std::string block(n, static_cast<char>('a' + all.size() % 26));
            write_all(c, block);
            all += block;
            CHECK(co_await test::eventually([&] { return got.size() == all.size(); }, 5s));
        }
        // One more with the FIN right behind it.
        std::string last(unit, 'z');
        write_all(c, last);
        all += last;
        REQUIRE(::shutdown(c, SHUT_WR) == 0);
        CHECK(co_await test::eventually([&] { return eof; }, 5s));
        CHECK(got.size() == all.size());
        CHECK(got == all);
        ::close(c);
        srv.close();
        co_await srv.wait_closed();
    }(), 30s, on_epoll);
    CHECK(test::open_fds() == fds);
}

TEST_CASE("epoll: recvmsg asking for control messages, and a released TCP fd, see no control message of the backend's") {
    std::size_t fds = test::open_fds();
    run_bounded([]() -> ringio::task<> {
        co_await require_epoll();
        auto listener = ringio::socket::create(AF_INET, SOCK_STREAM);
        listener.bind(ringio::endpoint(ringio::ip_address::loopback_v4(), 0));
        listener.listen(4);
        int c = plain_tcp_client(listener.local_endpoint().port());
        ringio::socket s = (co_await listener.accept()).first;
        std::byte buf[16];
        alignas(cmsghdr) char ctl[256];
        auto ask = [&](msghdr& m, iovec& iov) {
            iov = {buf, sizeof buf};
            m = {};
            m.msg_iov = &iov;
            m.msg_iovlen = 1;
            m.msg_control = ctl;
            m.msg_controllen = sizeof ctl;
        };
        write_all(c, "abc");
        CHECK(co_await ringio::wait_for(s.recv(std::span(buf, 1)), 5s) == 1);  // a plain receive first
        msghdr m;
        iovec iov;
        ask(m, iov);
        CHECK(co_await ringio::wait_for(s.recvmsg(m), 5s) == 2);
        CHECK(m.msg_controllen == 0);
        write_all(c, "de");
        CHECK(co_await ringio::wait_for(s.recv(std::span(buf, 1)), 5s) == 1);  // still there after
        // Without a control buffer: nothing truncated either.
        write_all(c, "f");
        m = {};
        iov = {buf, sizeof buf};
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        CHECK(co_await ringio::wait_for(s.recvmsg(m), 5s) == 2);  // "ef"
        CHECK((m.msg_flags & MSG_CTRUNC) == 0);
        write_all(c, "g");
        int fd = s.release();
        ask(m, iov);
        CHECK(::recvmsg(fd, &m, 0) == 1);
        CHECK(m.msg_controllen == 0);
        ::close(fd);
        // An accepted socket handed back before any receive never had TCP_INQ (not inherited
        // from a listener that had it).
        int c2 = plain_tcp_client(listener.local_endpoint().port());
        int fd2 = (co_await listener.accept()).first.release();
        int inq = -1;
        socklen_t len = sizeof inq;
        REQUIRE(::getsockopt(fd2, IPPROTO_TCP, TCP_INQ, &inq, &len) == 0);
        CHECK(inq == 0);
        ::close(fd2);
        ::close(c2);
        ::close(c);
    }(), 15s, on_epoll);
    CHECK(test::open_fds() == fds);
}
