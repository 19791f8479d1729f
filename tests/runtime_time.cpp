// Timers: deadline order, never early, a million pending, cancellation removes the timer.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <algorithm>
#include <random>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;

TEST_CASE("timers fire in deadline order and never early") {
    struct wake {
        int id;
        ringio::clock::time_point deadline, woke;
    };
    std::vector<wake> wakes;
    ringio::run([](std::vector<wake>& out) -> ringio::task<> {
        std::mt19937 rng(12345);
        std::uniform_int_distribution<int> us(0, 30'000);
        ringio::task_group g;
        auto now = ringio::clock::now();
        for (int i = 0; i < 2000; ++i) {
            auto deadline = now + std::chrono::microseconds(us(rng));
            g.create_task([](std::vector<wake>& o, int id, ringio::clock::time_point d) -> ringio::task<> {
                co_await ringio::sleep_until(d);
                o.push_back({id, d, ringio::clock::now()});
            }(out, i, deadline));
        }
        co_await g.wait();
    }(wakes));
    REQUIRE(wakes.size() == 2000);
    for (std::size_t i = 0; i < wakes.size(); ++i) {
        CHECK(wakes[i].woke >= wakes[i].deadline);
        if (i > 0) CHECK(wakes[i - 1].deadline <= wakes[i].deadline);
    }
}

TEST_CASE("equal deadlines fire in the order they were armed") {
    std::vector<int> order;
    ringio::run([](std::vector<int>& out) -> ringio::task<> {
        auto d = ringio::clock::now() + 2ms;
        ringio::task_group g;
        for (int i = 0; i < 50; ++i)
            g.create_task([](std::vector<int>& o, int id, ringio::clock::time_point t) -> ringio::task<> {
                co_await ringio::sleep_until(t);
                o.push_back(id);
            }(out, i, d));
        co_await g.wait();
    }(order));
    REQUIRE(order.size() == 50);
    CHECK(std::is_sorted(order.begin(), order.end()));
}

TEST_CASE("sleep lasts at least its duration") {
    ringio::run([]() -> ringio::task<> {
        for (auto d : {1ms, 3ms, 10ms}) {
            auto start = ringio::clock::now();
            co_await ringio::sleep(d);
            CHECK(ringio::clock::now() - start >= d);
        }
    }());
}

TEST_CASE("a million pending timers, each fired at or after its deadline") {
    constexpr int n = 1'000'000;
    long fired = 0, early = 0;
    std::size_t peak = 0;
    ringio::run([](long& f, long& e, std::size_t& pk) -> ringio::task<> {
        auto& loop = ringio::event_loop::running();
        auto base = ringio::clock::now() + 100ms;
        for (int i = 0; i < n; ++i) {
            auto d = base + std::chrono::microseconds(i % 200'000);
            (void)ringio::create_task([](long& f2, long& e2, ringio::clock::time_point t) -> ringio::task<> {
                co_await ringio::sleep_until(t);
                ++f2;
                if (ringio::clock::now() < t) ++e2;
            }(f, e, d));
        }
        co_await ringio::yield_now();  // every task has now armed its timer
        pk = loop.pending_timers();
        while (f < n) co_await ringio::sleep(10ms);
    }(fired, early, peak));
    CHECK(peak == static_cast<std::size_t>(n));
    CHECK(fired == n);
    CHECK(early == 0);
}

TEST_CASE("sleep(0) and yield_now let the other ready tasks run first") {
    std::vector<int> order;
    ringio::run([](std::vector<int>& o) -> ringio::task<> {
        auto other = ringio::create_task([](std::vector<int>& o2) -> ringio::task<> {
            o2.push_back(1);
            co_return;
        }(o));
        co_await ringio::sleep(0ms);
        o.push_back(2);
        co_await other;
    }(order));
    CHECK(order == std::vector<int>{1, 2});
}

TEST_CASE("the kernel timeout operation completes with ETIME") {
    if (test::skip_on_epoll("kernel timeouts are io_uring operations")) return;
    ringio::run([]() -> ringio::task<> {
        auto start = ringio::clock::now();
        ringio::io_result r = co_await ringio::io::kernel_timeout(2ms);
        CHECK(r.res == -ETIME);
        CHECK(ringio::clock::now() - start >= 2ms);
    }());
}
