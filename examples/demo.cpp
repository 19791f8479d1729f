// ringio_demo: a short tour of the runtime that finishes by itself in about a second.
//
//   1. 100,000 tasks started concurrently and collected with gather()
//   2. 100,000 children of a task_group
//   3. 10,000 concurrent sleeps of different lengths: they must wake in deadline order, never early
//   4. 1,000,000 integers handed from a producer to a consumer through a bounded queue<int>
//   5. wait_for(): a deadline cancels a slow task
//
// Each part prints what happened and how long it took; the exit status is 0 when every check
// passed, 1 when one failed, and 77 when io_uring cannot be set up on this machine (the reason,
// with the fix, is printed on stderr).
#include <ringio/ringio.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>

using namespace std::chrono_literals;

namespace {

using ringio::clock;

int failed_checks = 0;

void check(bool ok, std::string_view what) {
    if (ok) return;
    ++failed_checks;
    fmt::print("  CHECK FAILED: {}\n", what);
}

double ms_since(clock::time_point start) {
    return std::chrono::duration<double, std::milli>(clock::now() - start).count();
}

// ---- 1. many tasks, gathered --------------------------------------------------------------

ringio::task<long> square(long i) {
    co_await ringio::yield_now();  // suspend once, so that all of them are alive at the same time
    co_return i * i;
}

ringio::task<> many_tasks_gathered() {
    constexpr long n = 100'000;
    auto start = clock::now();

    std::vector<ringio::task<long>> tasks;
    tasks.reserve(n);
    for (long i = 0; i < n; ++i) tasks.push_back(square(i));
    std::vector<long> squares = co_await ringio::gather(std::move(tasks));  // in input order

    double ms = ms_since(start);
    bool all_right = squares.size() == n;
    for (long i = 0; all_right && i < n; ++i) all_right = squares[i] == i * i;
    check(all_right, "gather returns every result in order");
    fmt::print("1. gather: {} tasks created, run and collected in {:.1f} ms ({:.0f} ns per task)\n", n, ms,
               ms * 1e6 / n);
}

// ---- 2. many tasks in a task_group --------------------------------------------------------

ringio::task<> count_up(long& counter) {
    co_await ringio::yield_now();
    ++counter;
}

ringio::task<> many_tasks_in_a_group() {
    constexpr long n = 100'000;
    auto start = clock::now();

    long counter = 0;
    ringio::task_group group;
    for (long i = 0; i < n; ++i) group.create_task(count_up(counter));
    co_await group.wait();  // every child has finished when this returns

    double ms = ms_since(start);
    check(counter == n, "every child of the task_group ran");
    fmt::print("2. task_group: {} children run and joined in {:.1f} ms\n", n, ms);
}

// ---- 3. timers ----------------------------------------------------------------------------

struct timer_record {
    std::vector<int> wake_order;      // ids, in the order the sleepers woke up
    int early = 0;                    // woke before their deadline (must stay 0)
    clock::duration total_late{};     // how long after the deadline they woke, summed
    clock::duration worst_late{};
};

ringio::task<> sleeper(int id, clock::time_point deadline, timer_record& rec) {
    co_await ringio::sleep_until(deadline);
    auto woke = clock::now();
    if (woke < deadline) ++rec.early;
    rec.total_late += woke - deadline;
    rec.worst_late = std::max(rec.worst_late, woke - deadline);
    rec.wake_order.push_back(id);
}

ringio::task<> many_timers() {
    constexpr int n = 10'000;
    constexpr auto spread = 500ms;  // deadlines spread over half a second
    auto start = clock::now();
    auto base = start + 20ms;  // leaves time to start all the sleepers first

    // Distinct deadlines, shuffled: sleeper i sleeps until base + offset(i).
    std::vector<clock::time_point> deadlines(n);
    for (int i = 0; i < n; ++i) deadlines[i] = base + (i * 7919L % n) * (std::chrono::nanoseconds(spread) / n);

    timer_record rec;
    rec.wake_order.reserve(n);
    ringio::task_group group;
    for (int i = 0; i < n; ++i) group.create_task(sleeper(i, deadlines[i], rec));
    co_await group.wait();

    double ms = ms_since(start);
    check(rec.wake_order.size() == n, "every sleeper woke up");
    check(rec.early == 0, "no sleeper woke before its deadline");
    bool in_order = std::is_sorted(rec.wake_order.begin(), rec.wake_order.end(),
                                   [&](int a, int b) { return deadlines[a] < deadlines[b]; });
    check(in_order, "sleepers woke in deadline order");
    auto us = [](clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); };
    fmt::print("3. timers: {} sleeps over {} ms woke {} deadline order, {} early; late by {:.0f} us on average, "
               "{:.0f} us at worst; {:.1f} ms in all\n",
               n, spread.count(), in_order ? "in" : "OUT OF", rec.early, us(rec.total_late) / n,
               us(rec.worst_late), ms);
}

// ---- 4. producer / consumer through a queue -----------------------------------------------

ringio::task<> produce(ringio::queue<int>& q, int n) {
    for (int i = 0; i < n; ++i) co_await q.put(i);  // waits while the queue is full
    q.shutdown();  // the consumer drains what is left, then get() throws queue_shutdown
}

struct consumed {
    long long count = 0;
    long long sum = 0;
    bool in_order = true;
};

ringio::task<consumed> consume(ringio::queue<int>& q) {
    consumed c;
    while (true) {
        int item;
        try {
            item = co_await q.get();  // waits while the queue is empty
        } catch (const ringio::queue_shutdown&) {
            break;
        }
        if (item != c.count) c.in_order = false;
        c.sum += item;
        ++c.count;
    }
    co_return c;
}

ringio::task<> producer_consumer() {
    constexpr int n = 1'000'000;
    auto start = clock::now();

    ringio::queue<int> q(128);  // bounded: the producer waits for the consumer
    auto [ignored, got] = co_await ringio::gather(produce(q, n), consume(q));

    double ms = ms_since(start);
    check(got.count == n, "the consumer got every item");
    check(got.in_order, "items arrived in the order they were put");
    check(got.sum == static_cast<long long>(n) * (n - 1) / 2, "the items add up");
    fmt::print("4. queue: {} items handed from producer to consumer (queue of {}) in {:.1f} ms ({:.1f} M items/s)\n",
               got.count, q.maxsize(), ms, got.count / ms / 1e3);
}

// ---- 5. a deadline -------------------------------------------------------------------------

ringio::task<int> slow_answer(bool& cancelled) {
    try {
        co_await ringio::sleep(10s);
    } catch (const ringio::cancelled_error&) {
        cancelled = true;  // clean up here if needed, then let the cancellation go on
        throw;
    }
    co_return 42;
}

ringio::task<> deadline() {
    auto start = clock::now();
    bool cancelled = false;
    bool timed_out = false;
    try {
        int answer = co_await ringio::wait_for(slow_answer(cancelled), 50ms);
        fmt::print("  unexpected answer {}\n", answer);
    } catch (const ringio::timeout_error&) {
        timed_out = true;
    }
    double ms = ms_since(start);
    check(timed_out && cancelled, "wait_for cancels the slow task and throws timeout_error");
    check(ms >= 50.0, "wait_for does not give up early");
    fmt::print("5. wait_for: a 10 s task given 50 ms was cancelled{} and timeout_error thrown after {:.1f} ms\n",
               cancelled ? "" : " (NOT)", ms);
}

ringio::task<int> amain() {
    ringio::event_loop& loop = ringio::event_loop::running();
    const ringio::ring_features& f = loop.features();
    if (loop.backend() == ringio::backend_kind::io_uring)
        fmt::print("ringio demo: io_uring with SQ {} / CQ {} entries{}{}\n", f.sq_entries, f.cq_entries,
                   f.single_issuer ? ", SINGLE_ISSUER" : "", f.defer_taskrun ? ", DEFER_TASKRUN" : "");
    else
        fmt::print("ringio demo: the epoll backend (io_uring is not used here)\n");
    auto start = clock::now();

    co_await many_tasks_gathered();
    co_await many_tasks_in_a_group();
    co_await many_timers();
    co_await producer_consumer();
    co_await deadline();

    fmt::print("{} in {:.0f} ms\n", failed_checks == 0 ? "all checks passed" : "SOME CHECKS FAILED",
               ms_since(start));
    co_return failed_checks == 0 ? 0 : 1;
}

}  // namespace

int main() {
    std::optional<ringio::event_loop> loop;
    try {
        loop.emplace();
    } catch (const std::system_error& e) {  // no backend (io_uring forced where it is blocked): says why
        fmt::print(stderr, "ringio_demo: {}\n", e.what());
        return 77;
    }
    try {
        return loop->run_until_complete(amain());
    } catch (const std::exception& e) {
        fmt::print(stderr, "ringio_demo: {}\n", e.what());
        return 1;
    }
}
