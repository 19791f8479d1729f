// Out of memory where ringio takes ownership of something: this binary replaces the global
// operator new so that one chosen allocation fails, and checks that nothing leaks (no fd, no
// coroutine frame, no stream) and that the error reaches whoever can report it.
#include <doctest/doctest.h>

#include <ringio/detail/frame_cache.hpp>
#include <ringio/ringio.hpp>
#include <ringio/server.hpp>
#include <ringio/socket.hpp>
#include <ringio/stream.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "net_helpers.hpp"

using namespace std::chrono_literals;

namespace {
// -1: allocations succeed; n >= 0: the allocation after n more fails (once).
constinit thread_local int fail_after = -1;
constinit thread_local int failures = 0;
}  // namespace

void* operator new(std::size_t n) {
    if (fail_after >= 0 && fail_after-- == 0) {
        ++failures;
        throw std::bad_alloc();
    }
    if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

// The frame cache serves frames and Task states from its free lists, where no allocation can be
// made to fail; under AddressSanitizer it is off and every one comes from operator new.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool frames_from_operator_new = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool frames_from_operator_new = true;
#else
constexpr bool frames_from_operator_new = false;
#endif
#else
constexpr bool frames_from_operator_new = false;
#endif

/// Sets *flag when the coroutine frame holding it (as a parameter) is destroyed.
struct on_destroy {
    bool* flag;
    explicit on_destroy(bool* f) noexcept : flag(f) {}
    on_destroy(on_destroy&& o) noexcept : flag(std::exchange(o.flag, nullptr)) {}
    ~on_destroy() {
        if (flag) *flag = true;
    }
};

ringio::task<> never_run(on_destroy) { co_return; }

}  // namespace

TEST_CASE("socket(fd) closes the fd it adopts when its state cannot be allocated") {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    fail_after = 0;
    CHECK_THROWS_AS(ringio::socket{fds[0]}, std::bad_alloc);
    fail_after = -1;
    CHECK(failures == 1);
    errno = 0;
    CHECK(::fcntl(fds[0], F_GETFD) == -1);
    CHECK(errno == EBADF);
    ::close(fds[1]);
    failures = 0;
}

TEST_CASE("create_task without memory for the Task: bad_alloc reaches the caller, the coroutine is destroyed") {
    if (!frames_from_operator_new) {
        MESSAGE("SKIPPED: the frame cache serves Task states (it is off only under AddressSanitizer)");
        return;
    }
    ringio::run([]() -> ringio::task<> {
        std::size_t frames = ringio::detail::live_frames();
        std::size_t live = ringio::event_loop::running().live_tasks();
        bool destroyed = false;
        ringio::task<> t = never_run(on_destroy(&destroyed));
        fail_after = 0;  // the Task state, the first allocation create_task makes
        CHECK_THROWS_AS((void)ringio::create_task(std::move(t)), std::bad_alloc);
        fail_after = -1;
        CHECK(failures == 1);
        CHECK(destroyed);
        CHECK(ringio::detail::live_frames() == frames);
        CHECK(ringio::event_loop::running().live_tasks() == live);
        co_return;
    }());
    failures = 0;
}

TEST_CASE("start_server: a handler whose Task cannot be made fails that connection only, and leaks nothing") {
    if (!frames_from_operator_new) {
        MESSAGE("SKIPPED: the frame cache serves Task states (it is off only under AddressSanitizer)");
        return;
    }
    test::log_capture logs;
    std::size_t fds = test::open_fds();
    test::run_bounded([&logs]() -> ringio::task<> {
        bool first = true;
        bool destroyed = false;
        auto srv = co_await ringio::start_server(
            [&](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                if (!std::exchange(first, false)) return test::echo(std::move(r), std::move(w));
                auto t = [](ringio::stream_reader, ringio::stream_writer, on_destroy) -> ringio::task<> {
                    co_return;
                }(std::move(r), std::move(w), on_destroy(&destroyed));
                fail_after = 0;  // start_server's create_task: its Task state
                return t;
            },
            "127.0.0.1", 0);
        {
            auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
            CHECK(co_await test::read_to_eof(r) == "");  // closed, not left hanging
            CHECK(co_await test::eventually([&] { return srv.connections() == 0; }));
            CHECK(destroyed);  // the handler's frame, with its reader and writer
            REQUIRE(logs.lines.size() == 1);
            CHECK(test::contains(logs.lines[0], w.sockname().to_string()));
            CHECK(test::contains(logs.lines[0], "bad_alloc"));
        }
        fail_after = -1;
        CHECK(failures == 1);
        // The server goes on.
        auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
        w.write("still here\n");
        CHECK(co_await r.read_line() == "still here\n");
        w.close();
        co_await w.wait_closed();
        srv.close();
        co_await srv.wait_closed();
    }());
    CHECK(test::open_fds() == fds);
    failures = 0;
}

TEST_CASE("write() and write_eof() without memory for the stream's write side: bad_alloc, and the stream works after") {
    if (!frames_from_operator_new) {
        MESSAGE("SKIPPED: the frame cache serves write sides (it is off only under AddressSanitizer)");
        return;
    }
    std::size_t fds = test::open_fds();
    test::run_bounded([]() -> ringio::task<> {
        auto [a, b] = co_await test::tcp_pair();
        fail_after = 0;  // the write side, made at the first write
        CHECK_THROWS_AS(a.w.write("lost"), std::bad_alloc);
        CHECK(a.w.buffered() == 0);
        fail_after = 0;
        CHECK_THROWS_AS(a.w.write_eof(), std::bad_alloc);
        fail_after = -1;
        CHECK(failures == 2);
        // Nothing half done: the write goes, then the FIN (a write_eof() that had recorded the
        // FIN before failing would make this one a no-op, and the peer would wait forever).
        a.w.write("kept");
        a.w.write_eof();
        CHECK(co_await test::read_to_eof(b.r) == "kept");
        co_await test::close_both(a, b);
    }());
    CHECK(test::open_fds() == fds);
    failures = 0;
}

TEST_CASE("waking many tasks from a completion allocates nothing: no std::terminate under memory pressure") {
    // 600 sleepers armed 200 at a time (the ready queue never held more than that at once), all
    // due at the same moment: the timer pass wakes all 600 from a noexcept path. An allocation
    // failing there (the ready queue growing) used to reach std::terminate.
    ringio::run([]() -> ringio::task<> {
        int woken = 0;
        ringio::event all;
        auto due = ringio::clock::now() + 50ms;
        std::vector<ringio::task_handle<>> hs;
        hs.reserve(600);
        for (int batch = 0; batch < 3; ++batch) {
            for (int i = 0; i < 200; ++i)
                hs.push_back(ringio::create_task([](ringio::clock::time_point d, int& n, ringio::event& e) -> ringio::task<> {
                    co_await ringio::sleep_until(d);
                    fail_after = -1;  // the failure was meant for the wake-ups, not for this
                    if (++n == 600) e.set();
                }(due, woken, all)));
            co_await ringio::yield_now();  // this batch starts and parks in its sleep
        }
        fail_after = 0;  // the next allocation fails
        co_await all.wait();
        fail_after = -1;
        CHECK(woken == 600);
        CHECK(failures == 0);
    }());
    failures = 0;
}

TEST_CASE("a task_group records a failed child without allocating: no std::terminate under memory pressure") {
    ringio::run([]() -> ringio::task<> {
        ringio::task_group g;
        g.create_task([]() -> ringio::task<> {
            co_await ringio::yield_now();
            std::runtime_error err("child failed");
            fail_after = 0;  // the group's bookkeeping of this failure must not need memory
            throw err;
        }());
        g.create_task([]() -> ringio::task<> {  // cancelled by the failure: disarms the injection
            try {
                co_await ringio::sleep(1h);
            } catch (const ringio::cancelled_error&) {
                fail_after = -1;
                throw;
            }
        }());
        try {
            co_await g.wait();
        } catch (const ringio::task_group_error& e) {
            CHECK(e.exceptions().size() == 1);
        }
        fail_after = -1;
        CHECK(failures == 0);
    }());
    failures = 0;
}
