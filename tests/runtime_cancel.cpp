// Cancellation: at every kind of suspension point, with nothing lost and no frame leaked.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <string>

#include "helpers.hpp"

using namespace std::chrono_literals;
using test::counted;

namespace {

struct socket_pair {
    int fd[2] = {-1, -1};
    socket_pair() { REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fd) == 0); }
    ~socket_pair() {
        ::close(fd[0]);
        ::close(fd[1]);
    }
};

ringio::task<int> read_some(int fd, std::string& out, bool& cancelled) {
    counted c;
    std::array<std::byte, 64> buf{};
    try {
        ringio::io_result r = co_await ringio::io::read(fd, buf);
        if (r) out.assign(reinterpret_cast<const char*>(buf.data()), r.value());
        co_return r.res;
    } catch (const ringio::cancelled_error&) {
        cancelled = true;
        throw;
    }
}

}  // namespace

TEST_CASE("cancelling a task blocked in sleep removes its timer at once") {
    ringio::run([]() -> ringio::task<> {
        auto& loop = ringio::event_loop::running();
        bool cancelled = false;
        auto h = ringio::create_task([](bool& flag) -> ringio::task<> {
            counted c;
            try {
                co_await ringio::sleep(1h);
            } catch (const ringio::cancelled_error&) {
                flag = true;
                throw;
            }
        }(cancelled));
        co_await ringio::yield_now();
        CHECK(loop.pending_timers() == 1);
        CHECK(h.cancel());
        CHECK_FALSE(h.cancel());  // already on its way
        CHECK(loop.pending_timers() == 0);
        CHECK_THROWS_AS(co_await h, ringio::cancelled_error);
        CHECK(cancelled);
        CHECK(h.cancelled());
        CHECK_FALSE(h.cancel());  // done
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("a task cancelled before it starts never runs") {
    ringio::run([]() -> ringio::task<> {
        bool ran = false;
        auto h = ringio::create_task([](bool& flag) -> ringio::task<> {
            counted c;
            flag = true;
            co_return;
        }(ran));
        h.cancel();
        CHECK_THROWS_AS(co_await h, ringio::cancelled_error);
        CHECK_FALSE(ran);
        CHECK(h.cancelled());
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("cancellation is one-shot: a task may catch it and go on") {
    int v = ringio::run([]() -> ringio::task<int> {
        auto h = ringio::create_task([]() -> ringio::task<int> {
            try {
                co_await ringio::sleep(1h);
            } catch (const ringio::cancelled_error&) {
            }
            co_await ringio::sleep(1ms);  // not cancelled again
            co_return 7;
        }());
        co_await ringio::yield_now();
        h.cancel();
        co_return co_await h;
    }());
    CHECK(v == 7);
}

TEST_CASE("cancelling a task in an in-flight kernel read: cancelled_error, no leak, data intact") {
    socket_pair sp;
    std::size_t fds = test::open_fds();
    {
    ringio::event_loop loop;
    loop.run_until_complete([](int rfd, int wfd) -> ringio::task<> {
        auto& l = ringio::event_loop::running();
        co_await ringio::yield_now();  // the loop's own wake-up read is armed after the first pass
        std::size_t base = l.in_flight();
        std::string got;
        bool cancelled = false;
        auto h = ringio::create_task(read_some(rfd, got, cancelled));
        co_await ringio::sleep(2ms);  // the read is now parked in the kernel
        CHECK(l.in_flight() == base + 1);
        h.cancel();
        CHECK_FALSE(h.done());  // it waits for the read's own completion
        CHECK_THROWS_AS(co_await h, ringio::cancelled_error);
        CHECK(cancelled);
        CHECK(l.in_flight() == base);
        CHECK(counted::live == 0);
        // The cancelled read consumed nothing: the next read sees every byte.
        REQUIRE(::write(wfd, "hello", 5) == 5);
        bool c2 = false;
        int n = co_await read_some(rfd, got, c2);
        CHECK(n == 5);
        CHECK(got == "hello");
    }(sp.fd[0], sp.fd[1]));
    CHECK(loop.in_flight() == 0);
    }
    CHECK(test::open_fds() == fds);
}

TEST_CASE("a read that completed before the cancel took effect keeps its data") {
    socket_pair sp;
    ringio::run([](int rfd, int wfd) -> ringio::task<> {
        std::string got;
        int n = -1;
        bool raised_later = false;
        REQUIRE(::write(wfd, "data", 4) == 4);
        auto h = ringio::create_task([](int fd, std::string& out, int& res, bool& later) -> ringio::task<> {
            bool c = false;
            res = co_await read_some(fd, out, c);  // completes at once: the data is there
            try {
                co_await ringio::yield_now();
            } catch (const ringio::cancelled_error&) {
                later = true;
                throw;
            }
        }(rfd, got, n, raised_later));
        co_await ringio::yield_now();  // h submits its read in this pass
        h.cancel();                    // ... and is cancelled before the completion is reaped
        CHECK_THROWS_AS(co_await h, ringio::cancelled_error);
        CHECK(n == 4);
        CHECK(got == "data");
        CHECK(raised_later);
    }(sp.fd[0], sp.fd[1]));
}

TEST_CASE("cancelling a task blocked in queue get leaves the next item for the next getter") {
    ringio::run([]() -> ringio::task<> {
        ringio::queue<int> q;
        bool first_cancelled = false;
        auto first = ringio::create_task([](ringio::queue<int>& qu, bool& c) -> ringio::task<int> {
            counted k;
            try {
                co_return co_await qu.get();
            } catch (const ringio::cancelled_error&) {
                c = true;
                throw;
            }
        }(q, first_cancelled));
        auto second = ringio::create_task([](ringio::queue<int>& qu) -> ringio::task<int> { co_return co_await qu.get(); }(q));
        co_await ringio::yield_now();
        first.cancel();
        co_await q.put(5);
        CHECK(co_await second == 5);
        CHECK_THROWS_AS(co_await first, ringio::cancelled_error);
        CHECK(first_cancelled);
        CHECK(q.empty());
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("cancelling a task blocked in mutex lock: the lock goes to the next waiter") {
    ringio::run([]() -> ringio::task<> {
        ringio::mutex m;
        std::string order;
        auto guard = co_await m.scoped_lock();
        auto waiter = [](ringio::mutex& mx, std::string& o, char id) -> ringio::task<> {
            counted k;
            auto g = co_await mx.scoped_lock();
            o += id;
            co_await ringio::yield_now();
        };
        auto a = ringio::create_task(waiter(m, order, 'a'));
        auto b = ringio::create_task(waiter(m, order, 'b'));
        auto c = ringio::create_task(waiter(m, order, 'c'));
        co_await ringio::yield_now();
        b.cancel();
        guard.reset();
        co_await a;
        CHECK_THROWS_AS(co_await b, ringio::cancelled_error);
        co_await c;
        CHECK(order == "ac");
        CHECK_FALSE(m.locked());
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("wait_for: expiring cancels the inner task and throws timeout_error") {
    ringio::run([]() -> ringio::task<> {
        bool inner_cancelled = false;
        auto start = ringio::clock::now();
        CHECK_THROWS_AS(co_await ringio::wait_for(
                            [](bool& c) -> ringio::task<int> {
                                counted k;
                                try {
                                    co_await ringio::sleep(1h);
                                } catch (const ringio::cancelled_error&) {
                                    c = true;
                                    throw;
                                }
                                co_return 1;
                            }(inner_cancelled),
                            5ms),
                        ringio::timeout_error);
        CHECK(ringio::clock::now() - start >= 5ms);
        CHECK(inner_cancelled);
        CHECK(counted::live == 0);
    }());
}

TEST_CASE("wait_for: not expiring returns the value; works on handles and other awaitables") {
    ringio::run([]() -> ringio::task<> {
        int v = co_await ringio::wait_for([]() -> ringio::task<int> {
            co_await ringio::sleep(1ms);
            co_return 9;
        }(), 10s);
        CHECK(v == 9);
        auto h = ringio::create_task([]() -> ringio::task<int> { co_return 3; }());
        CHECK(co_await ringio::wait_for(h, 1s) == 3);
        ringio::queue<int> q;
        q.put_nowait(4);
        CHECK(co_await ringio::wait_for(q.get(), 1s) == 4);
        CHECK_THROWS_AS(co_await ringio::wait_for(q.get(), 1ms), ringio::timeout_error);
        q.put_nowait(8);  // the timed-out get took nothing
        CHECK(q.get_nowait() == 8);
    }());
}

TEST_CASE("wait_for race: the outer task cancelled exactly when the inner completes still sees its cancellation") {
    ringio::run([]() -> ringio::task<> {
        ringio::event ev;
        int got = 0;
        bool outer_saw_cancel = false;
        auto outer = ringio::create_task([](ringio::event& e, int& g, bool& saw) -> ringio::task<> {
            counted k;
            g = co_await ringio::wait_for([](ringio::event& e2) -> ringio::task<int> {
                co_await e2.wait();
                co_return 11;
            }(e), 1h);
            try {
                co_await ringio::yield_now();
            } catch (const ringio::cancelled_error&) {
                saw = true;
                throw;
            }
        }(ev, got, outer_saw_cancel));
        co_await ringio::sleep(1ms);
        ev.set();        // the inner task completes on the next pass...
        outer.cancel();  // ... and the outer is cancelled in the same instant
        CHECK_THROWS_AS(co_await outer, ringio::cancelled_error);
        CHECK(outer.cancelled());
        CHECK(outer_saw_cancel);
        CHECK(got == 11);  // the inner result was not lost either
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("timeout(): inside the expiry is cancelled_error, outside timeout_error") {
    ringio::run([]() -> ringio::task<> {
        bool inside = false;
        CHECK_THROWS_AS(co_await ringio::timeout(2ms,
                                                 [](bool& saw) -> ringio::task<> {
                                                     try {
                                                         co_await ringio::sleep(1h);
                                                     } catch (const ringio::cancelled_error&) {
                                                         saw = true;
                                                         throw;
                                                     }
                                                 }(inside)),
                        ringio::timeout_error);
        CHECK(inside);
    }());
}

TEST_CASE("shield: the caller is cancelled, the shielded task runs on") {
    ringio::run([]() -> ringio::task<> {
        // Events, not sleeps, order the steps: the shielded task is parked on `go` when the
        // caller is cancelled, and finishes only after that.
        bool finished = false;
        ringio::event started, go, done;
        auto outer = ringio::create_task([](bool& f, ringio::event& st, ringio::event& g, ringio::event& d) -> ringio::task<> {
            co_await ringio::shield([](bool& f2, ringio::event& st2, ringio::event& g2, ringio::event& d2) -> ringio::task<> {
                st2.set();
                co_await g2.wait();
                f2 = true;
                d2.set();
            }(f, st, g, d));
        }(finished, started, go, done));
        co_await started.wait();
        outer.cancel();
        CHECK_THROWS_AS(co_await outer, ringio::cancelled_error);
        CHECK_FALSE(finished);
        go.set();
        co_await ringio::wait_for(done.wait(), 5s);
        CHECK(finished);
    }());
}

TEST_CASE("awaiting a handle propagates the awaiter's cancellation to it") {
    ringio::run([]() -> ringio::task<> {
        bool inner_cancelled = false;
        auto inner = ringio::create_task([](bool& c) -> ringio::task<> {
            try {
                co_await ringio::sleep(1h);
            } catch (const ringio::cancelled_error&) {
                c = true;
                throw;
            }
        }(inner_cancelled));
        auto outer = ringio::create_task([](ringio::task_handle<> h) -> ringio::task<> { co_await h; }(inner));
        co_await ringio::sleep(1ms);
        outer.cancel();
        CHECK_THROWS_AS(co_await outer, ringio::cancelled_error);
        CHECK(inner.cancelled());
        CHECK(inner_cancelled);
    }());
}

TEST_CASE("run() cancels leftover tasks and waits for their kernel operations") {
    socket_pair sp;
    std::size_t fds = test::open_fds();
    bool sleeper_cancelled = false, reader_cancelled = false;
    std::string got;
    {
        ringio::event_loop loop;
        loop.run_until_complete([](int fd, bool& s, bool& r, std::string& g) -> ringio::task<> {
            (void)ringio::create_task([](bool& flag) -> ringio::task<> {
                counted k;
                try {
                    co_await ringio::sleep(1h);
                } catch (const ringio::cancelled_error&) {
                    flag = true;
                    throw;
                }
            }(s));
            (void)ringio::create_task(read_some(fd, g, r));
            co_await ringio::sleep(1ms);
        }(sp.fd[0], sleeper_cancelled, reader_cancelled, got));
        CHECK(loop.in_flight() == 0);
        CHECK(loop.live_tasks() == 0);
    }
    CHECK(sleeper_cancelled);
    CHECK(reader_cancelled);
    CHECK(counted::live == 0);
    CHECK(test::open_fds() == fds);
}

TEST_CASE("io::close is not a cancellation point: the fd is closed even with a cancel pending") {
    std::size_t fds = test::open_fds();
    int fd = ::dup(0);
    REQUIRE(fd >= 0);
    CHECK(test::open_fds() == fds + 1);
    ringio::run([](int f) -> ringio::task<> {
        ringio::event go;
        int closed = -1;
        auto h = ringio::create_task([](ringio::event& g, int f2, int& res) -> ringio::task<> {
            co_await g.wait();  // woken, then cancelled before it runs: the cancel is pending
            ringio::io_result r = co_await ringio::io::close(f2);
            res = r.res;
            co_await ringio::yield_now();  // the pending cancellation is raised here
        }(go, f, closed));
        co_await ringio::yield_now();
        go.set();
        h.cancel();
        CHECK_THROWS_AS(co_await h, ringio::cancelled_error);
        CHECK(closed == 0);
    }(fd));
    CHECK(test::open_fds() == fds);
}

TEST_CASE("co_await handle with a cancellation already pending cancels the awaited task and waits for it") {
    ringio::run([]() -> ringio::task<> {
        ringio::event go;
        bool child_done_when_thrown = false, child_cancelled = false;
        auto owner = ringio::create_task([](ringio::event& g, bool& done_seen, bool& cancelled) -> ringio::task<> {
            int local = 0;  // the child writes here: it must be gone before this frame is
            auto child = ringio::create_task([](int& l, bool& c) -> ringio::task<> {
                try {
                    co_await ringio::sleep(1h);
                } catch (const ringio::cancelled_error&) {
                    c = true;
                    l = 1;
                    throw;
                }
            }(local, cancelled));
            co_await g.wait();  // granted, then cancelled before it runs: the cancellation is pending
            try {
                co_await child;
            } catch (const ringio::cancelled_error&) {
                done_seen = child.done();
                throw;
            }
        }(go, child_done_when_thrown, child_cancelled));
        co_await ringio::yield_now();
        go.set();
        owner.cancel();
        CHECK_THROWS_AS(co_await owner, ringio::cancelled_error);
        CHECK(child_cancelled);
        CHECK(child_done_when_thrown);
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("an operation cancelled in flight that the kernel answers with -EINTR counts as cancelled") {
    if (test::skip_on_epoll("a NOP with an injected result is an io_uring operation")) return;
    // IORING_OP_NOP with IORING_NOP_INJECT_RESULT (Linux 6.10; liburing 2.3 has no name for it)
    // completes with the result it is given: -EINTR stands for a cancel answered that way.
    auto inject_eintr = [](io_uring_sqe* s) noexcept {
        io_uring_prep_nop(s);
        s->rw_flags = 1;  // IORING_NOP_INJECT_RESULT
        s->len = static_cast<unsigned>(-EINTR);
    };
    ringio::run([](auto prep) -> ringio::task<> {
        ringio::io_result probe = co_await ringio::io::make(prep);
        if (probe.res != -EINTR) {
            MESSAGE("this kernel cannot inject a NOP result; skipped");
            co_return;
        }
        bool cancelled = false;
        int res = 0;
        auto t = ringio::create_task([](auto p, bool& c, int& r) -> ringio::task<> {
            try {
                ringio::io_result x = co_await ringio::io::make(p);
                r = x.res;
            } catch (const ringio::cancelled_error&) {
                c = true;
                throw;
            }
        }(prep, cancelled, res));
        co_await ringio::yield_now();  // t has queued its NOP in this pass; the cancel follows it
        t.cancel();
        CHECK_THROWS_AS(co_await t, ringio::cancelled_error);
        CHECK(cancelled);
        CHECK(res == 0);
    }(inject_eintr));
}
