// to_thread and call_soon_threadsafe: other threads reaching the loop (also run under TSan).
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

TEST_CASE("to_thread runs on another thread and returns its value or exception") {
    ringio::run([]() -> ringio::task<> {
        auto loop_thread = std::this_thread::get_id();
        auto worker = co_await ringio::to_thread([] { return std::this_thread::get_id(); });
        CHECK(worker != loop_thread);
        CHECK(co_await ringio::to_thread([] { return 6 * 7; }) == 42);
        co_await ringio::to_thread([] {});
        CHECK_THROWS_WITH_AS(co_await ringio::to_thread([]() -> int { throw std::runtime_error("in pool"); }), "in pool",
                             std::runtime_error);
    }());
}

TEST_CASE("to_thread from 4 tasks at once, each blocking its worker") {
    ringio::run([]() -> ringio::task<> {
        std::atomic<int> inside{0};
        std::atomic<int> peak{0};
        std::vector<ringio::task<int>> ts;
        for (int i = 0; i < 4; ++i)
            ts.push_back([](std::atomic<int>& in, std::atomic<int>& pk, int v) -> ringio::task<int> {
                co_return co_await ringio::to_thread([&in, &pk, v] {
                    int now = ++in;
                    int old = pk.load();
                    while (old < now && !pk.compare_exchange_weak(old, now)) {
                    }
                    // Wait (bounded) until all four are inside: proves they run concurrently.
                    for (int spin = 0; spin < 2000 && pk.load() < 4; ++spin) std::this_thread::sleep_for(1ms);
                    --in;
                    return v * 10;
                });
            }(inside, peak, i));
        auto out = co_await ringio::gather(std::move(ts));
        CHECK(out == std::vector<int>{0, 10, 20, 30});
        CHECK(peak.load() == 4);
    }());
}

TEST_CASE("call_soon_threadsafe from 4 threads at once: every callback runs once, on the loop thread") {
    constexpr int per_thread = 10'000;
    ringio::run([]() -> ringio::task<> {
        auto& loop = ringio::event_loop::running();
        auto loop_thread = std::this_thread::get_id();
        int count = 0;  // touched only on the loop thread
        bool wrong_thread = false;
        ringio::event all_done;
        std::vector<std::thread> threads;
        for (int t = 0; t < 4; ++t)
            threads.emplace_back([&] {
                for (int i = 0; i < per_thread; ++i)
                    loop.call_soon_threadsafe([&] {
                        if (std::this_thread::get_id() != loop_thread) wrong_thread = true;
                        if (++count == 4 * per_thread) all_done.set();
                    });
            });
        co_await ringio::wait_for(all_done.wait(), 30s);
        for (auto& th : threads) th.join();
        CHECK(count == 4 * per_thread);
        CHECK_FALSE(wrong_thread);
    }());
}

TEST_CASE("call_soon_threadsafe callbacks from one thread run in the order posted") {
    ringio::run([]() -> ringio::task<> {
        auto& loop = ringio::event_loop::running();
        std::vector<int> seen;
        ringio::event done;
        std::thread th([&] {
            for (int i = 0; i < 1000; ++i) loop.call_soon_threadsafe([&seen, &done, i] {
                    seen.push_back(i);
                    if (i == 999) done.set();
                });
        });
        co_await done.wait();
        th.join();
        REQUIRE(seen.size() == 1000);
        for (int i = 0; i < 1000; ++i) CHECK(seen[static_cast<std::size_t>(i)] == i);
    }());
}

TEST_CASE("cancelling a task in to_thread waits for the function, then raises") {
    ringio::run([]() -> ringio::task<> {
        std::atomic<bool> finished{false};
        std::atomic<bool> release{false};
        auto h = ringio::create_task([](std::atomic<bool>& f, std::atomic<bool>& r) -> ringio::task<> {
            co_await ringio::to_thread([&] {
                for (int i = 0; i < 5000 && !r.load(); ++i) std::this_thread::sleep_for(1ms);
                f = true;
            });
        }(finished, release));
        co_await ringio::sleep(2ms);
        h.cancel();
        co_await ringio::sleep(2ms);
        CHECK_FALSE(h.done());  // still waiting for the function
        release = true;
        CHECK_THROWS_AS(co_await h, ringio::cancelled_error);
        CHECK(finished.load());
    }());
}
