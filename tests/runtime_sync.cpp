// event, mutex, semaphore, condition and queue: FIFO fairness and cancellation safety.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <string>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;
using test::counted;

TEST_CASE("event: set wakes every waiter in order; a set event passes at once") {
    ringio::run([]() -> ringio::task<> {
        ringio::event ev;
        std::string order;
        ringio::task_group g;
        for (char id : std::string("abc"))
            g.create_task([](ringio::event& e, std::string& o, char c) -> ringio::task<> {
                co_await e.wait();
                o += c;
            }(ev, order, id));
        co_await ringio::yield_now();
        CHECK(order.empty());
        ev.set();
        co_await g.wait();
        CHECK(order == "abc");
        co_await ev.wait();  // already set
        ev.clear();
        CHECK_FALSE(ev.is_set());
        CHECK_THROWS_AS(co_await ringio::wait_for(ev.wait(), 1ms), ringio::timeout_error);
    }());
}

TEST_CASE("mutex: FIFO hand-off, try_lock, misuse is an error") {
    ringio::run([]() -> ringio::task<> {
        ringio::mutex m;
        std::string order;
        co_await m.lock();
        CHECK_FALSE(m.try_lock());
        ringio::task_group g;
        for (char id : std::string("abcd"))
            g.create_task([](ringio::mutex& mx, std::string& o, char c) -> ringio::task<> {
                auto guard = co_await mx.scoped_lock();
                o += c;
                co_await ringio::sleep(100us);  // hold it across a suspension
            }(m, order, id));
        co_await ringio::yield_now();
        m.unlock();
        // A late arrival must queue behind the four waiters, not barge in.
        g.create_task([](ringio::mutex& mx, std::string& o) -> ringio::task<> {
            auto guard = co_await mx.scoped_lock();
            o += 'z';
        }(m, order));
        co_await g.wait();
        CHECK(order == "abcdz");
        CHECK_FALSE(m.locked());
        CHECK_THROWS_AS(m.unlock(), ringio::invalid_state_error);
    }());
}

TEST_CASE("semaphore: at most N holders, served in arrival order, cancelled waiter takes nothing") {
    ringio::run([]() -> ringio::task<> {
        ringio::semaphore sem(2);
        int holders = 0, peak = 0;
        std::string order;
        ringio::task_group g;
        for (char id : std::string("abcdef"))
            g.create_task([](ringio::semaphore& s, int& h, int& p, std::string& o, char c) -> ringio::task<> {
                co_await s.acquire();
                o += c;
                p = std::max(p, ++h);
                co_await ringio::sleep(200us);
                --h;
                s.release();
            }(sem, holders, peak, order, id));
        auto cancelled = ringio::create_task([](ringio::semaphore& s) -> ringio::task<> {
            co_await s.acquire();
            s.release();
        }(sem));
        co_await ringio::yield_now();
        cancelled.cancel();
        co_await g.wait();
        CHECK_THROWS_AS(co_await cancelled, ringio::cancelled_error);
        CHECK(peak == 2);
        CHECK(order == "abcdef");
        CHECK(sem.value() == 2);
    }());
}

TEST_CASE("condition: wait_for a predicate, notify wakes one, notify_all wakes all") {
    ringio::run([]() -> ringio::task<> {
        ringio::condition cv;
        int items = 0, consumed = 0;
        ringio::task_group g;
        for (int i = 0; i < 3; ++i)
            g.create_task([](ringio::condition& c, int& it, int& done) -> ringio::task<> {
                auto guard = co_await c.scoped_lock();
                co_await c.wait_for([&] { return it > 0; });
                CHECK(c.locked());
                --it;
                ++done;
            }(cv, items, consumed));
        co_await ringio::yield_now();
        {
            auto guard = co_await cv.scoped_lock();
            items = 1;
            cv.notify();
        }
        co_await ringio::sleep(1ms);
        CHECK(consumed == 1);
        {
            auto guard = co_await cv.scoped_lock();
            items = 2;
            cv.notify_all();
        }
        co_await g.wait();
        CHECK(consumed == 3);
        CHECK_THROWS_AS(cv.notify(), ringio::invalid_state_error);  // without the lock
    }());
}

TEST_CASE("condition: a cancelled waiter holds the lock again and consumes no notification") {
    ringio::run([]() -> ringio::task<> {
        ringio::condition cv;
        bool locked_in_handler = false, second_woke = false;
        auto first = ringio::create_task([](ringio::condition& c, bool& locked) -> ringio::task<> {
            counted k;
            auto guard = co_await c.scoped_lock();
            try {
                co_await c.wait();
            } catch (const ringio::cancelled_error&) {
                locked = c.locked();
                throw;
            }
        }(cv, locked_in_handler));
        auto second = ringio::create_task([](ringio::condition& c, bool& woke) -> ringio::task<> {
            auto guard = co_await c.scoped_lock();
            co_await c.wait();
            woke = true;
        }(cv, second_woke));
        co_await ringio::yield_now();
        first.cancel();
        {
            auto guard = co_await cv.scoped_lock();
            cv.notify(1);  // must reach `second`, the only waiter left
        }
        CHECK_THROWS_AS(co_await first, ringio::cancelled_error);
        co_await second;
        CHECK(locked_in_handler);
        CHECK(second_woke);
        CHECK_FALSE(cv.locked());
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("queue: bounded put waits when full, get waits when empty, FIFO") {
    ringio::run([]() -> ringio::task<> {
        ringio::queue<int> q(2);
        std::vector<int> got;
        auto consumer = ringio::create_task([](ringio::queue<int>& qu, std::vector<int>& out) -> ringio::task<> {
            for (int i = 0; i < 100; ++i) {
                out.push_back(co_await qu.get());
                CHECK(qu.size() <= 2);
            }
        }(q, got));
        for (int i = 0; i < 100; ++i) {
            co_await q.put(i);
            CHECK(q.size() <= 2);
        }
        co_await consumer;
        REQUIRE(got.size() == 100);
        for (int i = 0; i < 100; ++i) CHECK(got[static_cast<std::size_t>(i)] == i);
        q.put_nowait(1);
        q.put_nowait(2);
        CHECK(q.full());
        CHECK_THROWS_AS(q.put_nowait(3), ringio::queue_full);
        CHECK(q.get_nowait() == 1);
        CHECK(q.get_nowait() == 2);
        CHECK_THROWS_AS(q.get_nowait(), ringio::queue_empty);
    }());
}

TEST_CASE("queue: a blocked putter's item is added in order when room appears") {
    ringio::run([]() -> ringio::task<> {
        ringio::queue<std::string> q(1);
        q.put_nowait("a");
        auto p1 = ringio::create_task([](ringio::queue<std::string>& qu) -> ringio::task<> { co_await qu.put("b"); }(q));
        auto p2 = ringio::create_task([](ringio::queue<std::string>& qu) -> ringio::task<> { co_await qu.put("c"); }(q));
        co_await ringio::yield_now();
        CHECK(q.size() == 1);
        p1.cancel();  // "b" is never added
        CHECK(co_await q.get() == "a");
        CHECK(co_await q.get() == "c");
        CHECK_THROWS_AS(co_await p1, ringio::cancelled_error);
        co_await p2;
        CHECK(q.empty());
    }());
}

TEST_CASE("queue: task_done and join") {
    ringio::run([]() -> ringio::task<> {
        ringio::queue<int> q;
        int processed = 0;
        ringio::task_group g;
        for (int w = 0; w < 3; ++w)
            g.create_task([](ringio::queue<int>& qu, int& p) -> ringio::task<> {
                while (true) {
                    int v;
                    try {
                        v = co_await qu.get();
                    } catch (const ringio::queue_shutdown&) {
                        co_return;
                    }
                    co_await ringio::sleep(std::chrono::microseconds(v % 50));
                    ++p;
                    qu.task_done();
                }
            }(q, processed));
        for (int i = 0; i < 300; ++i) co_await q.put(i);
        co_await q.join();
        CHECK(processed == 300);
        q.shutdown();
        co_await g.wait();
        CHECK_THROWS_AS(q.task_done(), ringio::invalid_state_error);
    }());
}

TEST_CASE("queue: shutdown wakes putters and getters; immediate drops the rest") {
    ringio::run([]() -> ringio::task<> {
        ringio::queue<int> q(1);
        q.put_nowait(1);
        auto putter = ringio::create_task([](ringio::queue<int>& qu) -> ringio::task<> { co_await qu.put(2); }(q));
        co_await ringio::yield_now();
        q.shutdown();
        CHECK_THROWS_AS(co_await putter, ringio::queue_shutdown);
        CHECK_THROWS_AS(q.put_nowait(3), ringio::queue_shutdown);
        CHECK(co_await q.get() == 1);  // what was queued is still delivered
        CHECK_THROWS_AS(co_await q.get(), ringio::queue_shutdown);

        ringio::queue<int> r;
        auto getter = ringio::create_task([](ringio::queue<int>& qu) -> ringio::task<int> { co_return co_await qu.get(); }(r));
        co_await ringio::yield_now();
        r.shutdown(true);
        CHECK_THROWS_AS(co_await getter, ringio::queue_shutdown);

        ringio::queue<int> s;
        s.put_nowait(1);
        s.put_nowait(2);
        s.shutdown(true);
        CHECK(s.empty());
        co_await s.join();  // dropped items count as done
    }());
}
