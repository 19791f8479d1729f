// task<T>, create_task, task_handle, gather and task_group: values, exceptions, lifetimes.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "helpers.hpp"

using namespace std::chrono_literals;
using test::counted;

namespace {

ringio::task<int> answer() {
    counted c;
    co_return 42;
}
ringio::task<int> add(int a) { co_return a + co_await answer(); }
ringio::task<> fail(std::string msg) {
    counted c;
    co_await ringio::yield_now();
    throw std::runtime_error(msg);
}
ringio::task<int> rethrow_through() {
    counted c;
    co_await fail("deep");
    co_return 0;  // not reached
}

int global_value = 7;
ringio::task<int&> ref_task() { co_return global_value; }
ringio::task<std::unique_ptr<int>> move_only() { co_return std::make_unique<int>(5); }

ringio::task<> nothing() {
    counted c;
    co_await ringio::yield_now();
}

ringio::task<int> sleepy(int v, std::chrono::milliseconds d) {
    counted c;
    co_await ringio::sleep(d);
    co_return v;
}

}  // namespace

TEST_CASE("task values and exceptions through nested awaits") {
    CHECK(ringio::run(add(1)) == 43);
    CHECK_THROWS_WITH_AS(ringio::run(fail("boom")), "boom", std::runtime_error);
    CHECK_THROWS_WITH_AS(ringio::run(rethrow_through()), "deep", std::runtime_error);
    CHECK(counted::live == 0);
}

TEST_CASE("task<void>, task<T&> and move-only results") {
    ringio::run([]() -> ringio::task<> {
        int& r = co_await ref_task();
        CHECK(&r == &global_value);
        std::unique_ptr<int> p = co_await move_only();
        REQUIRE(p);
        CHECK(*p == 5);
        auto h = ringio::create_task(move_only());
        std::unique_ptr<int> q = co_await std::move(h);
        CHECK(*q == 5);
    }());
}

TEST_CASE("a million sequential awaits run without growing the stack") {
    long sum = ringio::run([]() -> ringio::task<long> {
        long s = 0;
        for (int i = 0; i < 1'000'000; ++i) s += co_await answer();
        co_return s;
    }());
    CHECK(sum == 42'000'000L);
    CHECK(counted::live == 0);
}

namespace {
ringio::task<long> depth(int n) {
    if (n == 0) co_return 0;
    co_return 1 + co_await depth(n - 1);
}
}  // namespace

TEST_CASE("deeply nested awaits (100,000 frames) complete") {
    CHECK(ringio::run(depth(100'000)) == 100'000);
}

TEST_CASE("a million tasks created with create_task and awaited") {
    long total = ringio::run([]() -> ringio::task<long> {
        long s = 0;
        std::vector<ringio::task_handle<int>> hs;
        for (int round = 0; round < 10; ++round) {
            hs.clear();
            for (int i = 0; i < 100'000; ++i) hs.push_back(ringio::create_task(answer()));
            for (auto& h : hs) s += co_await h;
        }
        co_return s;
    }());
    CHECK(total == 42L * 1'000'000);
    CHECK(counted::live == 0);
}

TEST_CASE("create_task does not run the task inline") {
    ringio::run([]() -> ringio::task<> {
        bool ran = false;
        auto h = ringio::create_task([](bool& flag) -> ringio::task<> {
            flag = true;
            co_return;
        }(ran));
        CHECK_FALSE(ran);
        CHECK_FALSE(h.done());
        CHECK_THROWS_AS(h.result(), ringio::invalid_state_error);
        co_await ringio::yield_now();
        CHECK(ran);
        CHECK(h.done());
        CHECK_FALSE(h.cancelled());
        CHECK_FALSE(h.exception());
    }());
}

TEST_CASE("a failed task nobody awaited is reported once through the log hook") {
    std::vector<std::string> lines;
    auto old = ringio::set_log_handler([&](ringio::log_level, std::string_view m) { lines.emplace_back(m); });
    ringio::run([]() -> ringio::task<> {
        (void)ringio::create_task(fail("unseen"));
        auto seen = ringio::create_task(fail("seen"));
        co_await ringio::sleep(1ms);
        CHECK_THROWS_WITH(co_await seen, "seen");
    }());
    ringio::set_log_handler(old);
    REQUIRE(lines.size() == 1);
    CHECK(lines[0].find("never retrieved") != std::string::npos);
    CHECK(lines[0].find("unseen") != std::string::npos);
}

TEST_CASE("outside a loop, create_task says so") {
    CHECK_THROWS_AS(ringio::create_task(answer()), ringio::invalid_state_error);
}

TEST_CASE("run cannot nest") {
    ringio::run([]() -> ringio::task<> {
        CHECK_THROWS_AS(ringio::run(answer()), ringio::invalid_state_error);
        co_return;
    }());
}

TEST_CASE("gather returns every value in order") {
    ringio::run([]() -> ringio::task<> {
        auto [a, b, c] = co_await ringio::gather(sleepy(1, 3ms), sleepy(2, 1ms), nothing());
        CHECK(a == 1);
        CHECK(b == 2);
        (void)c;
        std::vector<ringio::task<int>> many;
        for (int i = 0; i < 1000; ++i) many.push_back(sleepy(i, std::chrono::milliseconds(i % 5)));
        std::vector<int> out = co_await ringio::gather(std::move(many));
        REQUIRE(out.size() == 1000);
        for (int i = 0; i < 1000; ++i) CHECK(out[static_cast<std::size_t>(i)] == i);
    }());
    CHECK(counted::live == 0);
}

namespace {
// Records how it ended: 0 running, 1 returned, 2 cancelled.
ringio::task<int> watched(int& ended, std::chrono::milliseconds d) {
    counted c;
    try {
        co_await ringio::sleep(d);
    } catch (const ringio::cancelled_error&) {
        ended = 2;
        throw;
    }
    ended = 1;
    co_return 1;
}
}  // namespace

TEST_CASE("gather: the first failure cancels the others, waits for them, and is rethrown") {
    ringio::run([]() -> ringio::task<> {
        int slow = 0;
        auto start = ringio::clock::now();
        CHECK_THROWS_WITH(co_await ringio::gather(watched(slow, 1h), fail("first"), sleepy(1, 1ms)), "first");
        CHECK(slow == 2);  // cancelled and finished before gather returned
        CHECK(ringio::clock::now() - start < 10s);
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("gather_settled returns every outcome") {
    ringio::run([]() -> ringio::task<> {
        auto [a, b, c] = co_await ringio::gather_settled(sleepy(3, 1ms), fail("x"), nothing());
        CHECK(a.has_value());
        CHECK(a.value() == 3);
        CHECK_FALSE(b.has_value());
        CHECK_THROWS_WITH(b.value(), "x");
        CHECK(c.has_value());
        std::vector<ringio::task<>> ts;
        ts.push_back(fail("y"));
        ts.push_back(nothing());
        auto outs = co_await ringio::gather_settled(std::move(ts));
        REQUIRE(outs.size() == 2);
        CHECK_FALSE(outs[0].has_value());
        CHECK(outs[1].has_value());
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("task_group: all children are awaited") {
    ringio::run([]() -> ringio::task<> {
        int sum = 0;
        ringio::task_group g;
        for (int i = 1; i <= 100; ++i)
            g.create_task([](int& s, int v) -> ringio::task<> {
                co_await ringio::sleep(std::chrono::milliseconds(v % 3));
                s += v;
            }(sum, i));
        co_await g.wait();
        CHECK(sum == 5050);
        CHECK(g.size() == 0);
    }());
}

TEST_CASE("task_group: a failure cancels the siblings and all errors are reported together") {
    ringio::run([]() -> ringio::task<> {
        int slow1 = 0, slow2 = 0;
        ringio::task_group g;
        g.create_task(watched(slow1, 1h));
        g.create_task(fail("one"));
        g.create_task([]() -> ringio::task<> {  // fails while being cancelled
            try {
                co_await ringio::sleep(1h);
            } catch (const ringio::cancelled_error&) {
                throw std::runtime_error("two");
            }
        }());
        g.create_task(watched(slow2, 1h));
        try {
            co_await g.wait();
            FAIL("wait() should throw");
        } catch (const ringio::task_group_error& e) {
            REQUIRE(e.exceptions().size() == 2);
            std::string what = e.what();
            CHECK(what.find("one") != std::string::npos);
            CHECK(what.find("two") != std::string::npos);
        }
        CHECK(slow1 == 2);
        CHECK(slow2 == 2);
        CHECK_THROWS_AS(g.create_task(nothing()), ringio::invalid_state_error);
    }());
    CHECK(counted::live == 0);
}

TEST_CASE("task_group: cancelling the waiter cancels every child") {
    ringio::run([]() -> ringio::task<> {
        int a = 0, b = 0;
        auto outer = ringio::create_task([](int& x, int& y) -> ringio::task<> {
            ringio::task_group g;
            g.create_task(watched(x, 1h));
            g.create_task(watched(y, 1h));
            co_await g.wait();
        }(a, b));
        co_await ringio::sleep(1ms);
        outer.cancel();
        CHECK_THROWS_AS(co_await outer, ringio::cancelled_error);
        CHECK(outer.cancelled());
        CHECK(a == 2);
        CHECK(b == 2);
    }());
    CHECK(counted::live == 0);
}
