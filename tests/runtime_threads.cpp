// run_threads and call_on: a group of loops, one per thread, and calls between them (also run
// under ASan and TSan).
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <sched.h>

#include <atomic>
#include <latch>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

// Counts live instances, so that a test can show that call_on freed everything it made.
struct counted {
    static inline std::atomic<int> live{0};
    int v = 0;
    explicit counted(int x) : v(x) { ++live; }
    counted(const counted& o) : v(o.v) { ++live; }
    counted(counted&& o) noexcept : v(o.v) { ++live; }
    ~counted() { --live; }
};

template <class Task>
ringio::task<bool> test_thrown_timeout(Task t) {
    try {
        (void)co_await std::move(t);
    } catch (const ringio::timeout_error&) {
        co_return true;
    }
    co_return false;
}

}  // namespace

TEST_CASE("run_threads runs n loops on n distinct threads, loop 0 on the calling thread") {
    auto caller = std::this_thread::get_id();
    struct seen {
        std::thread::id thread;
        ringio::event_loop* loop;
        std::size_t index;
        std::size_t size;
    };
    std::vector<seen> out = ringio::run_threads(4, [](std::size_t i) -> ringio::task<seen> {
        co_await ringio::sleep(1ms);  // a real pass of each loop
        auto& group = *ringio::loop_group::current();
        CHECK(&group.loop(i) == &ringio::event_loop::running());
        co_return seen{std::this_thread::get_id(), &ringio::event_loop::running(), group.index(), group.size()};
    });
    REQUIRE(out.size() == 4);
    std::set<std::thread::id> threads;
    std::set<ringio::event_loop*> loops;
    for (std::size_t i = 0; i < out.size(); ++i) {
        threads.insert(out[i].thread);
        loops.insert(out[i].loop);
        CHECK(out[i].index == i);
        CHECK(out[i].size == 4);
    }
    CHECK(threads.size() == 4);
    CHECK(loops.size() == 4);
    CHECK(out[0].thread == caller);
    CHECK(ringio::event_loop::current() == nullptr);  // the calling thread's loop is gone
}

TEST_CASE("run_threads: void tasks, n == 1, and misuse") {
    std::atomic<int> ran{0};
    ringio::run_threads(3, [&ran](std::size_t) -> ringio::task<> {
        ++ran;
        co_return;
    });
    CHECK(ran == 3);
    CHECK(ringio::run_threads(1, [](std::size_t i) -> ringio::task<int> { co_return int(i) + 7; }) ==
          std::vector<int>{7});
    CHECK_THROWS_AS(ringio::run_threads(0, [](std::size_t) -> ringio::task<> { co_return; }), std::invalid_argument);
    CHECK(ringio::loop_group::current() == nullptr);
    // Not from a loop's thread: that loop would be blocked for the group's whole life.
    ringio::run([]() -> ringio::task<> {
        CHECK_THROWS_AS(ringio::run_threads(2, [](std::size_t) -> ringio::task<> { co_return; }),
                        ringio::invalid_state_error);
        co_return;
    }());
}

TEST_CASE("run_threads: an exception in one loop cancels the others and is rethrown") {
    std::atomic<int> cancelled{0};
    std::atomic<int> finished_early{0};
    auto run = [&] {
        ringio::run_threads(3, [&](std::size_t i) -> ringio::task<> {
            if (i == 1) {
                co_await ringio::sleep(5ms);
                throw std::runtime_error("loop 1 failed");
            }
            try {
                co_await ringio::sleep(60s);  // would hold run_threads for a minute
                ++finished_early;
            } catch (const ringio::cancelled_error&) {
                ++cancelled;
                throw;
            }
        });
    };
    auto start = std::chrono::steady_clock::now();
    CHECK_THROWS_WITH_AS(run(), "loop 1 failed", std::runtime_error);
    CHECK(std::chrono::steady_clock::now() - start < 10s);
    CHECK(cancelled == 2);
    CHECK(finished_early == 0);
}

TEST_CASE("run_threads: a loop whose fn threw at once still cancels the others; the first error wins") {
    auto run = [] {
        ringio::run_threads(2, [](std::size_t i) -> ringio::task<> {
            if (i == 0) throw std::logic_error("thrown before the first co_await");
            co_await ringio::sleep(60s);
        });
    };
    CHECK_THROWS_WITH_AS(run(), "thrown before the first co_await", std::logic_error);
}

TEST_CASE("run_threads: a loop whose fn returned keeps serving calls until every fn has returned") {
    auto out = ringio::run_threads(2, [](std::size_t i) -> ringio::task<int> {
        if (i == 0) co_return 0;  // returns at once
        co_await ringio::sleep(20ms);
        auto& group = *ringio::loop_group::current();
        co_return co_await ringio::call_on(group.loop(0), [] { return 5; });
    });
    CHECK(out == std::vector<int>{0, 5});
}

TEST_CASE("run_threads: pin_to_cpus puts loop i on the i-th allowed CPU") {
    cpu_set_t before;
    REQUIRE(pthread_getaffinity_np(pthread_self(), sizeof before, &before) == 0);
    std::vector<int> allowed;
    for (int c = 0; c < CPU_SETSIZE; ++c)
        if (CPU_ISSET(c, &before)) allowed.push_back(c);
    ringio::thread_options opt;
    opt.pin_to_cpus = true;
    std::size_t n = std::min<std::size_t>(allowed.size(), 4);
    std::vector<int> cpus = ringio::run_threads(
        n, [](std::size_t) -> ringio::task<int> { co_return sched_getcpu(); }, opt);
    for (std::size_t i = 0; i < n; ++i) CHECK(cpus[i] == allowed[i]);
    cpu_set_t after;
    REQUIRE(pthread_getaffinity_np(pthread_self(), sizeof after, &after) == 0);
    CHECK(CPU_EQUAL(&before, &after));  // the calling thread's affinity is given back
}

TEST_CASE("call_on runs a function or a task on the other loop and returns its value or exception") {
    ringio::run_threads(2, [](std::size_t i) -> ringio::task<> {
        if (i == 1) co_return;  // loop 1 only serves
        auto& other = ringio::loop_group::current()->loop(1);
        auto here = std::this_thread::get_id();

        auto there = co_await ringio::call_on(other, [] { return std::this_thread::get_id(); });
        CHECK(there != here);
        CHECK(std::this_thread::get_id() == here);  // resumed on its own loop

        // TRICKY: a lambda whose captures have destructors is named first: GCC 12 destroys
        // such a temporary twice when it appears inside a co_await expression.
        auto append = [v = std::string("abc")] { return v + "def"; };
        std::string s = co_await ringio::call_on(other, std::move(append));
        CHECK(s == "abcdef");
        co_await ringio::call_on(other, [] {});

        // A task: runs as a Task of its own on the other loop, may await there.
        int t = co_await ringio::call_on(other, []() -> ringio::task<int> {
            co_await ringio::sleep(1ms);
            CHECK(&ringio::event_loop::running() == &ringio::loop_group::current()->loop(1));
            co_return 42;
        });
        CHECK(t == 42);

        // Move-only results come back too.
        auto p = co_await ringio::call_on(other, [] { return std::make_unique<int>(9); });
        CHECK(*p == 9);

        // Exceptions come back as they were thrown.
        CHECK_THROWS_WITH_AS(co_await ringio::call_on(other, []() -> int { throw std::runtime_error("remote"); }),
                             "remote", std::runtime_error);
        CHECK_THROWS_WITH_AS(co_await ringio::call_on(other,
                                                      []() -> ringio::task<> {
                                                          co_await ringio::sleep(1ms);
                                                          throw std::out_of_range("remote task");
                                                      }),
                             "remote task", std::out_of_range);

        // The caller's own loop works too.
        CHECK(co_await ringio::call_on(ringio::event_loop::running(), [] { return 1; }) == 1);
    });
}

TEST_CASE("call_on cancelled while the remote task runs: the caller leaves at once, nothing leaks") {
    counted::live = 0;
    ringio::run_threads(2, [](std::size_t i) -> ringio::task<> {
        if (i == 1) co_return;
        auto& other = ringio::loop_group::current()->loop(1);
        // The remote task holds a counted value until it is released; the caller is cancelled
        // in the meantime and its frame is gone long before the reply comes.
        auto release = std::make_shared<std::atomic<bool>>(false);
        auto started = std::make_shared<std::atomic<bool>>(false);
        auto caller = ringio::create_task([](ringio::event_loop& o, std::shared_ptr<std::atomic<bool>> rel,
                                             std::shared_ptr<std::atomic<bool>> st) -> ringio::task<counted> {
            counted big(1);
            auto work = [rel, st, c = counted(2)]() -> ringio::task<counted> {
                *st = true;
                for (int k = 0; k < 5000 && !*rel; ++k) co_await ringio::sleep(1ms);
                co_return counted(c.v + 1);
            };
            co_return co_await ringio::call_on(o, std::move(work));  // named: see above
        }(other, release, started));
        for (int k = 0; k < 5000 && !*started; ++k) co_await ringio::sleep(1ms);
        REQUIRE(started->load());
        caller.cancel();
        CHECK_THROWS_AS(co_await caller, ringio::cancelled_error);  // at once: the remote still runs
        CHECK(counted::live >= 1);                                   // the remote's capture
        *release = true;
        // The reply arrives and frees the state: poll (bounded) until every counted is gone.
        for (int k = 0; k < 5000 && counted::live != 0; ++k) co_await ringio::sleep(1ms);
        CHECK(counted::live == 0);
    });
    CHECK(counted::live == 0);
}

TEST_CASE("call_on cancelled before the remote work began: the work is skipped") {
    std::atomic<int> ran{0};
    std::atomic<bool> blocking{false};
    std::atomic<bool> go{false};
    ringio::run_threads(2, [&](std::size_t i) -> ringio::task<> {
        auto& group = *ringio::loop_group::current();
        if (i == 1) {
            // Hold loop 1 inside one step (no passes, so its inbox is not read) until loop 0
            // has posted its call and cancelled the caller.
            blocking = true;
            for (int k = 0; k < 10'000 && !go; ++k) std::this_thread::sleep_for(1ms);
            co_return;
        }
        for (int k = 0; k < 10'000 && !blocking; ++k) co_await ringio::sleep(1ms);
        REQUIRE(blocking.load());
        auto h = ringio::create_task([](ringio::event_loop& o, std::atomic<int>& r) -> ringio::task<> {
            co_await ringio::call_on(o, [&r] { ++r; });
        }(group.loop(1), ran));
        co_await ringio::yield_now();  // h runs first in the next pass: it posts its call
        CHECK_FALSE(h.done());
        h.cancel();
        CHECK_THROWS_AS(co_await h, ringio::cancelled_error);
        go = true;
    });
    CHECK(ran == 0);
}

TEST_CASE("call_on: a task cancelled by the target loop's shutdown gives the caller cancelled_error") {
    // Loop 1's fn ends while loop 0 still waits for a remote task on loop 1 that never ends by
    // itself; loop 0 then returns (cancelling its waiting caller), and every loop shuts down.
    std::atomic<bool> remote_cancelled{false};
    ringio::run_threads(2, [&](std::size_t i) -> ringio::task<> {
        if (i == 1) co_return;
        auto& other = ringio::loop_group::current()->loop(1);
        auto h = ringio::create_task(
            [](ringio::event_loop& o, std::atomic<bool>& rc) -> ringio::task<> {
                co_await ringio::call_on(o, [&rc]() -> ringio::task<> {
                    try {
                        co_await ringio::sleep(60s);
                    } catch (const ringio::cancelled_error&) {
                        rc = true;
                        throw;
                    }
                });
            }(other, remote_cancelled));
        co_await ringio::sleep(5ms);
        CHECK_FALSE(h.done());
        // Returning leaves h to the shutdown of loop 0.
    });
    CHECK(remote_cancelled);
}

TEST_CASE("10,000 concurrent call_on in both directions between 2 loops all complete") {
    constexpr int per_loop = 10'000;
    std::vector<long> sums = ringio::run_threads(2, [](std::size_t i) -> ringio::task<long> {
        auto& group = *ringio::loop_group::current();
        auto& other = group.loop(1 - i);
        std::vector<ringio::task<int>> calls;
        calls.reserve(per_loop);
        for (int k = 0; k < per_loop; ++k)
            calls.push_back([](ringio::event_loop& o, int v) -> ringio::task<int> {
                if (v % 2)
                    co_return co_await ringio::call_on(o, [v] { return v; });
                co_return co_await ringio::call_on(o, [v]() -> ringio::task<int> { co_return v; });
            }(other, k));
        std::vector<int> out = co_await ringio::wait_for(ringio::gather(std::move(calls)), 60s);
        long sum = 0;
        for (int k = 0; k < per_loop; ++k) {
            if (out[std::size_t(k)] != k) FAIL("call ", k, " returned ", out[std::size_t(k)]);
            sum += out[std::size_t(k)];
        }
        co_return sum;
    });
    long want = long(per_loop) * (per_loop - 1) / 2;
    CHECK(sums == std::vector<long>{want, want});
}

TEST_CASE("call_on to a loop that has stopped taking calls throws invalid_state_error") {
    // A Task on loop 1 that outlives its fn and shrugs off the shutdown's cancellation keeps
    // calling loop 0 while the group shuts down: loop 0 answers until it closes its gate, then
    // the call is refused (never posted to a loop that no longer runs, never left hanging).
    std::atomic<int> answered{0};
    std::atomic<int> refused{0};
    ringio::run_threads(2, [&](std::size_t i) -> ringio::task<> {
        if (i == 0) co_return;
        auto& zero = ringio::loop_group::current()->loop(0);
        ringio::event first;
        ringio::create_task([](ringio::event_loop& z, std::atomic<int>& a, std::atomic<int>& r,
                               ringio::event* first_answer) -> ringio::task<> {
            for (int k = 0; k < 1'000'000; ++k) {
                try {
                    co_await ringio::call_on(z, [] {});
                    ++a;
                    if (first_answer) std::exchange(first_answer, nullptr)->set();
                } catch (const ringio::invalid_state_error&) {
                    ++r;
                    co_return;
                } catch (const ringio::cancelled_error&) {  // the shutdown's: carry on
                }
            }
        }(zero, answered, refused, &first));
        co_await first.wait();  // then fn returns and the group shuts down
    });
    CHECK(answered >= 1);
    CHECK(refused == 1);
}

TEST_CASE("a call_on reply that arrives after its caller's loop is gone is freed, with what it carries") {
    std::weak_ptr<int> result;
    std::latch caller_gone(1);
    ringio::loop_handle target;
    std::latch target_ready(1);
    std::thread t([&] {
        ringio::event_loop loop;
        target = loop.handle();
        target_ready.count_down();
        loop.run_until_complete([](std::latch& gone) -> ringio::task<> {
            // Keeps the target alive until the caller's loop is gone (and answers meanwhile).
            co_await ringio::to_thread([&gone] { gone.wait(); });
        }(caller_gone));
    });
    target_ready.wait();
    ringio::run([](ringio::loop_handle h, std::weak_ptr<int>& r, std::latch& gone) -> ringio::task<> {
        auto fn = [&r, &gone] {
            gone.wait();  // answers only once the caller's loop is destroyed
            auto p = std::make_shared<int>(42);
            r = p;
            return p;
        };
        // The caller leaves (cancelled by the timeout); its loop then goes.
        CHECK(co_await test_thrown_timeout(ringio::wait_for(ringio::call_on(h, std::move(fn)), 10ms)));
    }(target, result, caller_gone));
    caller_gone.count_down();
    t.join();
    CHECK(result.expired());  // the reply, with the value it carried, was freed
}

TEST_CASE("call_on through an empty loop_handle throws invalid_state_error") {
    ringio::run([]() -> ringio::task<> {
        ringio::loop_handle none;
        bool threw = false;
        try {
            (void)co_await ringio::call_on(none, [] { return 1; });
        } catch (const ringio::invalid_state_error&) {
            threw = true;
        }
        CHECK(threw);
    }());
}
