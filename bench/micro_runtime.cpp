// Micro-benchmarks of the ringio runtime against thread baselines (Google Benchmark).
//
// Every ringio benchmark runs its whole timing loop inside one coroutine on one event loop, so
// setting up the ring (io_uring_setup, mmap) is outside the measurement. One iteration is one
// operation; bench/README.md says what each one costs in loop passes and system calls.
//
//   ./build-bench/bench/ringio_micro --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "ringio/ringio.hpp"

namespace {

using namespace std::chrono_literals;

// The smallest coroutine that still produces a value the caller depends on.
ringio::task<int> trivial(int v) { co_return v + 1; }

// Runs `body` to completion on a fresh loop. A machine without io_uring (ENOSYS, EPERM under
// seccomp) reports the benchmark as skipped instead of aborting the whole run.
void run_on_loop(benchmark::State& state, ringio::task<> body, ringio::loop_options options = {}) {
    try {
        ringio::run(std::move(body), options);
    } catch (const std::exception& e) {
        state.SkipWithError(e.what());
    }
    state.SetItemsProcessed(state.iterations());
}

// ---- ringio ----

// Create a task<int> and await it: frame allocation (per-thread frame cache), symmetric
// transfer in and out, value returned, frame destroyed. No loop pass.
ringio::task<> create_await_loop(benchmark::State& state) {
    int acc = 0;
    for (auto _ : state) {
        acc = co_await trivial(acc);
        benchmark::DoNotOptimize(acc);
    }
}
void BM_task_create_await(benchmark::State& state) { run_on_loop(state, create_await_loop(state)); }
BENCHMARK(BM_task_create_await)->UseRealTime();

// create_task() + co_await the handle: a separate Task (control block, ready-queue entry), one
// loop pass to start it and one to resume the awaiter.
ringio::task<> spawn_await_loop(benchmark::State& state) {
    int acc = 0;
    for (auto _ : state) {
        ringio::task_handle<int> h = ringio::create_task(trivial(acc));
        acc = co_await h;
        benchmark::DoNotOptimize(acc);
    }
}
void BM_create_task_spawn_await(benchmark::State& state) { run_on_loop(state, spawn_await_loop(state)); }
BENCHMARK(BM_create_task_spawn_await)->UseRealTime();

// yield_now(): suspend, requeue on the ready queue, one loop pass, resume.
ringio::task<> yield_loop(benchmark::State& state) {
    for (auto _ : state) co_await ringio::yield_now();
}
void BM_resume_yield(benchmark::State& state) { run_on_loop(state, yield_loop(state)); }
BENCHMARK(BM_resume_yield)->UseRealTime();

// The same with `tasks` Tasks yielding: one iteration = one loop pass that resumes every Task
// once, so the per-pass cost (the io_uring_enter) is shared. per_resume = time / resumes.
ringio::task<> yielder(const bool& stop) {
    while (!stop) co_await ringio::yield_now();
}
ringio::task<> yield_batch_loop(benchmark::State& state) {
    bool stop = false;
    std::vector<ringio::task_handle<>> others;
    for (std::int64_t i = 1; i < state.range(0); ++i) others.push_back(ringio::create_task(yielder(stop)));
    co_await ringio::yield_now();  // let them all start, so every pass below holds all of them
    for (auto _ : state) co_await ringio::yield_now();
    stop = true;
    for (auto& h : others) co_await h;
}
void BM_resume_yield_batch(benchmark::State& state) {
    run_on_loop(state, yield_batch_loop(state));
    state.SetItemsProcessed(state.iterations() * state.range(0));
    state.counters["per_resume"] = benchmark::Counter(static_cast<double>(state.range(0)),
                                                      benchmark::Counter::kIsIterationInvariantRate |
                                                          benchmark::Counter::kInvert);
}
BENCHMARK(BM_resume_yield_batch)->ArgName("tasks")->Arg(64)->UseRealTime();

// sleep(1ns): arm a timer in the userspace heap, one loop pass, fire, resume. The deadline has
// already passed when the loop looks, so the kernel wait never sleeps.
ringio::task<> timer_loop(benchmark::State& state) {
    for (auto _ : state) co_await ringio::sleep(1ns);
}
void BM_timer_arm_fire(benchmark::State& state) { run_on_loop(state, timer_loop(state)); }
BENCHMARK(BM_timer_arm_fire)->UseRealTime();

// wait_for() on a task that finishes at once: create_task + arm a 1 hour timer + remove it
// when the task is done. The cost of guarding an operation with a deadline that never fires.
ringio::task<> wait_for_loop(benchmark::State& state) {
    int acc = 0;
    for (auto _ : state) {
        acc = co_await ringio::wait_for(trivial(acc), 1h);
        benchmark::DoNotOptimize(acc);
    }
}
void BM_timer_arm_cancel_wait_for(benchmark::State& state) { run_on_loop(state, wait_for_loop(state)); }
BENCHMARK(BM_timer_arm_cancel_wait_for)->UseRealTime();

// Queue hand-off between two tasks: a producer Task puts exactly as many items as the timing
// loop will get. One iteration = one item through the queue. With maxsize 1 every item or two
// costs a switch between the tasks; larger sizes show the amortised cost.
ringio::task<> producer(ringio::queue<int>& q, benchmark::IterationCount n) {
    for (benchmark::IterationCount i = 0; i < n; ++i) co_await q.put(static_cast<int>(i));
}
ringio::task<> handoff_loop(benchmark::State& state) {
    ringio::queue<int> q(static_cast<std::size_t>(state.range(0)));
    auto p = ringio::create_task(producer(q, state.max_iterations));
    for (auto _ : state) {
        int v = co_await q.get();
        benchmark::DoNotOptimize(v);
    }
    co_await p;
}
void BM_queue_handoff(benchmark::State& state) { run_on_loop(state, handoff_loop(state)); }
BENCHMARK(BM_queue_handoff)->ArgName("maxsize")->Arg(1)->Arg(128)->UseRealTime();

// Ping-pong through two queues: main puts, an echo Task gets and puts back, main gets. One
// iteration = one round trip = two hand-offs, each a real switch between the tasks; the
// counterpart of BM_condvar_pingpong.
ringio::task<> echo(ringio::queue<int>& in, ringio::queue<int>& out, benchmark::IterationCount n) {
    for (benchmark::IterationCount i = 0; i < n; ++i) co_await out.put(co_await in.get());
}
ringio::task<> queue_pingpong_loop(benchmark::State& state) {
    ringio::queue<int> to_echo(1);
    ringio::queue<int> from_echo(1);
    auto e = ringio::create_task(echo(to_echo, from_echo, state.max_iterations));
    int v = 0;
    for (auto _ : state) {
        co_await to_echo.put(v);
        v = co_await from_echo.get() + 1;
        benchmark::DoNotOptimize(v);
    }
    co_await e;
}
void BM_queue_pingpong(benchmark::State& state) { run_on_loop(state, queue_pingpong_loop(state)); }
BENCHMARK(BM_queue_pingpong)->UseRealTime();

// IORING_OP_NOP: one SQE, one io_uring_enter, one CQE reaped and resumed on the next pass.
ringio::task<> nop_loop(benchmark::State& state) {
    for (auto _ : state) {
        ringio::io_result r = co_await ringio::io::nop();
        benchmark::DoNotOptimize(r);
    }
}
void BM_nop_roundtrip(benchmark::State& state) { run_on_loop(state, nop_loop(state)); }
BENCHMARK(BM_nop_roundtrip)->UseRealTime();

// The same without the registered ring fd (every io_uring_enter looks the fd up), and with
// SQPOLL (a kernel thread takes the SQE; the loop enters only to reap the completion).
void BM_nop_roundtrip_unregistered(benchmark::State& state) {
    ringio::loop_options o;
    o.register_ring_fd = false;
    run_on_loop(state, nop_loop(state), o);
}
BENCHMARK(BM_nop_roundtrip_unregistered)->UseRealTime();

void BM_nop_roundtrip_sqpoll(benchmark::State& state) {
    ringio::loop_options o;
    o.sqpoll = true;
    run_on_loop(state, nop_loop(state), o);
    if (!state.error_occurred()) state.SetLabel("sqpoll");
}
BENCHMARK(BM_nop_roundtrip_sqpoll)->UseRealTime();

// ---- thread baselines ----

// Create a thread that does nothing and join it (clone, exit, futex wake of the joiner).
void BM_thread_create_join(benchmark::State& state) {
    for (auto _ : state) {
        std::thread t([] {});
        t.join();
    }
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_thread_create_join)->UseRealTime();

// Two threads alternating through one mutex and condition variable. One iteration = one round
// trip (two wake-ups), the counterpart of BM_queue_pingpong.
void BM_condvar_pingpong(benchmark::State& state) {
    std::mutex m;
    std::condition_variable cv;
    int turn = 0;  // 0: the benchmark thread's, 1: the partner's
    bool stop = false;
    std::thread partner([&] {
        std::unique_lock lk(m);
        for (;;) {
            cv.wait(lk, [&] { return turn == 1 || stop; });
            if (stop) return;
            turn = 0;
            cv.notify_one();
        }
    });
    for (auto _ : state) {
        std::unique_lock lk(m);
        turn = 1;
        cv.notify_one();
        cv.wait(lk, [&] { return turn == 0; });
    }
    {
        std::lock_guard lk(m);
        stop = true;
    }
    cv.notify_one();
    partner.join();
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_condvar_pingpong)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
