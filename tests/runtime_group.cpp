// task_group: what happens to children when the group's owner leaves early, how long a finished
// child is kept, several waiters, and the scoped form (asyncio's `async with TaskGroup()`).
#include <doctest/doctest.h>

#include <ringio/detail/frame_cache.hpp>
#include <ringio/ringio.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <stdexcept>
#include <string>

#include "helpers.hpp"

using namespace std::chrono_literals;
using test::counted;

namespace {

// Sleeps for `d`; `state` becomes 1 when it starts, 2 when it is cancelled, 3 when it ends.
ringio::task<> watched(int& state, std::chrono::milliseconds d) {
    counted c;
    state = 1;
    try {
        co_await ringio::sleep(d);
    } catch (const ringio::cancelled_error&) {
        state = 2;
        throw;
    }
    state = 3;
}

}  // namespace

TEST_CASE("a task_group destroyed with running children (its owner was cancelled) cancels them, never aborts") {
    ringio::run([]() -> ringio::task<> {
        int a = 0, b = 0;
        auto owner = ringio::create_task([](int& x, int& y) -> ringio::task<> {
            ringio::task_group g;
            g.create_task(watched(x, 1h));
            g.create_task(watched(y, 1h));
            co_await ringio::sleep(1h);  // cancelled here, not in wait(): the group dies with its children running
            co_await g.wait();
        }(a, b));
        co_await ringio::sleep(1ms);
        CHECK(a == 1);
        owner.cancel();
        CHECK_THROWS_AS(co_await owner, ringio::cancelled_error);
        // The group cancelled its children as it went; they end on the next passes.
        for (int i = 0; i < 10 && (a != 2 || b != 2); ++i) co_await ringio::yield_now();
        CHECK(a == 2);
        CHECK(b == 2);
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("a task_group destroyed with running children when run() shuts down does not abort") {
    int a = 0;
    ringio::run([](int& x) -> ringio::task<> {
        // A child of a group whose owner is still running when the main task returns: run()'s
        // shutdown cancels both; whichever ends first, nothing aborts or leaks.
        (void)ringio::create_task([](int& y) -> ringio::task<> {
            ringio::task_group g;
            g.create_task(watched(y, 1h));
            co_await ringio::sleep(1h);
        }(x));
        co_await ringio::sleep(1ms);
    }(a));
    CHECK(a == 2);
    CHECK(counted::live == 0);
}

TEST_CASE("a task_group releases a finished child at once: its frame and by-value arguments (a socket) go") {
    std::size_t fds_before = test::open_fds();
    ringio::run([]() -> ringio::task<> {
        ringio::task_group g;
        int blocker = 0;
        g.create_task(watched(blocker, 1h));  // keeps the group busy throughout
        std::size_t frames_before = ringio::detail::live_frames();
        std::size_t fds_before_children = test::open_fds();
        for (int i = 0; i < 100; ++i) {
            int fds[2];
            REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
            ::close(fds[1]);
            g.create_task([](ringio::socket s) -> ringio::task<> {
                counted c;
                co_await ringio::yield_now();
                (void)s;
            }(ringio::socket(fds[0])));
        }
        for (int i = 0; i < 5; ++i) co_await ringio::yield_now();
        CHECK(g.size() == 1);
        CHECK(counted::live == 1);  // only the blocker's frame is left
        CHECK(ringio::detail::live_frames() <= frames_before);
        CHECK(test::open_fds() == fds_before_children);  // each child's socket closed with its frame
        g.cancel();
        co_await g.wait();
    }());
    CHECK(test::open_fds() == fds_before);
    CHECK(counted::live == 0);
}

TEST_CASE("a task_group keeps only the errors of finished children, and reports them all") {
    ringio::run([]() -> ringio::task<> {
        ringio::task_group g;
        int blocker = 0;
        g.create_task(watched(blocker, 1h));
        g.create_task([]() -> ringio::task<> {
            counted c;
            co_await ringio::yield_now();
            throw std::runtime_error("first");
        }());
        for (int i = 0; i < 5; ++i) co_await ringio::yield_now();
        CHECK(counted::live == 0);  // the failed child's frame is gone; its error is kept
        try {
            co_await g.wait();
            FAIL("wait() should throw");
        } catch (const ringio::task_group_error& e) {
            REQUIRE(e.exceptions().size() == 1);
            CHECK(std::string(e.what()).find("first") != std::string::npos);
        }
        CHECK(blocker == 2);  // cancelled by the failure
    }());
}

TEST_CASE("a second task awaiting task_group::wait() while another waits gets invalid_state_error") {
    ringio::run([]() -> ringio::task<> {
        ringio::task_group g;
        int child = 0;
        g.create_task(watched(child, 20ms));
        auto first = ringio::create_task([](ringio::task_group& grp) -> ringio::task<> { co_await grp.wait(); }(g));
        co_await ringio::yield_now();
        auto second = ringio::create_task([](ringio::task_group& grp) -> ringio::task<> { co_await grp.wait(); }(g));
        CHECK_THROWS_AS(co_await second, ringio::invalid_state_error);
        // The first waiter is unaffected: it resumes when the child ends.
        co_await ringio::wait_for(first, 5s);
        CHECK(child == 3);
        // A wait after the first one finished is fine again.
        co_await g.wait();
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("with_task_group: joins every child when the body returns, and returns the body's value") {
    ringio::run([]() -> ringio::task<> {
        int sum = 0;
        int r = co_await ringio::with_task_group([&sum](ringio::task_group& g) -> ringio::task<int> {
            for (int i = 1; i <= 10; ++i)
                g.create_task([](int& s, int v) -> ringio::task<> {
                    co_await ringio::sleep(std::chrono::milliseconds(v % 3));
                    s += v;
                }(sum, i));
            co_return 7;
        });
        CHECK(r == 7);
        CHECK(sum == 55);
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("with_task_group: a body that throws cancels and joins the children, then reports the body's error") {
    ringio::run([]() -> ringio::task<> {
        int a = 0;
        try {
            co_await ringio::with_task_group([&a](ringio::task_group& g) -> ringio::task<> {
                g.create_task(watched(a, 1h));
                co_await ringio::yield_now();
                throw std::runtime_error("body failed");
            });
            FAIL("should throw");
        } catch (const ringio::task_group_error& e) {
            REQUIRE(e.exceptions().size() == 1);
            CHECK(std::string(e.what()).find("body failed") != std::string::npos);
        }
        CHECK(a == 2);
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("with_task_group: the owner cancelled inside the body cancels and joins the children, then cancelled_error") {
    ringio::run([]() -> ringio::task<> {
        int a = 0, b = 0;
        bool body_cancelled = false;
        auto owner = ringio::create_task([](int& x, int& y, bool& bc) -> ringio::task<> {
            co_await ringio::with_task_group([&](ringio::task_group& g) -> ringio::task<> {
                g.create_task(watched(x, 1h));
                g.create_task(watched(y, 1h));
                try {
                    co_await ringio::sleep(1h);
                } catch (const ringio::cancelled_error&) {
                    bc = true;
                    throw;
                }
            });
        }(a, b, body_cancelled));
        co_await ringio::sleep(1ms);
        owner.cancel();
        CHECK_THROWS_AS(co_await owner, ringio::cancelled_error);
        // Joined before with_task_group returned: both children had already ended.
        CHECK(body_cancelled);
        CHECK(a == 2);
        CHECK(b == 2);
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("with_task_group: a failing child cancels the body too, and every failure is reported") {
    ringio::run([]() -> ringio::task<> {
        bool body_cancelled = false;
        try {
            co_await ringio::with_task_group([&](ringio::task_group& g) -> ringio::task<> {
                g.create_task([]() -> ringio::task<> {
                    co_await ringio::yield_now();
                    throw std::runtime_error("child failed");
                }());
                try {
                    co_await ringio::sleep(1h);
                } catch (const ringio::cancelled_error&) {
                    body_cancelled = true;
                    throw;
                }
            });
            FAIL("should throw");
        } catch (const ringio::task_group_error& e) {
            REQUIRE(e.exceptions().size() == 1);
            CHECK(std::string(e.what()).find("child failed") != std::string::npos);
        }
        CHECK(body_cancelled);
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("task_group::wait cancelled while a child fails: task_group_error, and the cancellation stays pending") {
    ringio::run([]() -> ringio::task<> {
        ringio::event started;
        bool second_cancel_seen = false;
        auto owner = ringio::create_task([](ringio::event& st, bool& seen) -> ringio::task<> {
            ringio::task_group g;
            g.create_task([](ringio::event& ev) -> ringio::task<> {
                ev.set();
                try {
                    co_await ringio::sleep(1h);
                } catch (const ringio::cancelled_error&) {
                    throw std::runtime_error("failed while cancelled");
                }
            }(st));
            bool group_failed = false;
            try {
                co_await g.wait();
            } catch (const ringio::task_group_error&) {
                group_failed = true;
            }
            CHECK(group_failed);
            try {
                co_await ringio::yield_now();  // the cancellation was not lost
            } catch (const ringio::cancelled_error&) {
                seen = true;
                throw;
            }
        }(started, second_cancel_seen));
        co_await started.wait();  // the owner waits in g.wait(), the child sleeps
        owner.cancel();
        CHECK_THROWS_AS(co_await owner, ringio::cancelled_error);
        CHECK(second_cancel_seen);
    }());
}
