// run_threads(): a group of event loops, one per thread. A loop of the group closes (refuses
// call_on and call_soon_threadsafe) once every fn has returned, so that no call can wait for a
// loop that no longer runs.
#include "ringio/run_threads.hpp"

#include <pthread.h>
#include <sched.h>

#include <latch>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

#include "ringio/event.hpp"
#include "ringio/log.hpp"

namespace ringio {
namespace detail {

struct group_state {
    struct slot {
        // Set before any fn runs (the start latch publishes it), then read-only.
        event_loop* loop = nullptr;
        // The loop's own thread only.
        task_handle<> main;
        bool stop = false;     // cancel main as soon as it exists
        bool counted = false;  // its finish was counted (finished_one)
        event all_done;     // every fn of the group has returned
    };

    explicit group_state(std::size_t count) : n(count), slots(new slot[count]) {}

    slot* find(const event_loop* l) const noexcept {
        for (std::size_t i = 0; i < n; ++i)
            if (slots[i].loop == l) return &slots[i];
        return nullptr;
    }

    // Records the first failure and cancels every other loop's main task.
    void fail(std::size_t i, std::exception_ptr e) {
        {
            std::lock_guard lock(m);
            if (first_error) return;
            first_error = std::move(e);
        }
        for (std::size_t j = 0; j < n; ++j) {
            if (j == i) continue;
            slot* s = &slots[j];
            post_to(s, [s] {
                s->stop = true;
                if (s->main.valid() && !s->main.done()) s->main.cancel();
            });
        }
    }

    // Loop i's fn has returned: the last one tells every loop that all have. Counted once per
    // loop (a loop whose ring failed after its fn returned comes here twice).
    void finished_one(std::size_t i) {
        if (std::exchange(slots[i].counted, true)) return;
        if (finished.fetch_add(1, std::memory_order_acq_rel) + 1 != n) return;
        for (std::size_t j = 0; j < n; ++j) {
            slot* s = &slots[j];
            if (j == i)
                s->all_done.set();
            else
                post_to(s, [s] { s->all_done.set(); });
        }
    }

    // Posts to another loop of the group, which is still open: it closes only after every fn
    // has returned, which needs this loop's finished_one(), after every post of this loop.
    static void post_to(slot* s, std::function<void()> fn) noexcept {
        try {
            s->loop->call_soon_threadsafe(std::move(fn));
        } catch (...) {
            log(log_level::error, "run_threads: a loop of the group could not be told: {}", describe(std::current_exception()));
        }
    }

    const std::size_t n;
    std::unique_ptr<slot[]> slots;
    loop_group group{this};
    std::atomic<std::size_t> finished{0};
    std::mutex m;
    std::exception_ptr first_error;  // under m
    std::exception_ptr setup_error;  // under m; read after the start latch
};

namespace {

thread_local group_state* tls_group = nullptr;
thread_local std::size_t tls_index = 0;

task<> group_main(group_state& g, std::size_t i, const std::function<task<>(std::size_t)>& body) {
    group_state::slot& s = g.slots[i];
    try {
        s.main = create_task(body(i));
        if (s.stop) s.main.cancel();  // another loop failed before this one started
        co_await s.main;
    } catch (...) {
        g.fail(i, std::current_exception());
    }
    s.main = {};  // the Task is freed here, on its own thread
    g.finished_one(i);
    // Until every fn has returned this loop goes on running its other tasks and serving calls.
    co_await s.all_done.wait();
    // From now on calls to this loop are refused; those that got in run in the loop's shutdown
    // (a Task started for one is cancelled there, and its caller gets cancelled_error).
    detail::loop_core::running().close_inbox();
}

std::vector<int> allowed_cpus() {
    std::vector<int> cpus;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (pthread_getaffinity_np(pthread_self(), sizeof set, &set) == 0)
        for (int c = 0; c < CPU_SETSIZE; ++c)
            if (CPU_ISSET(c, &set)) cpus.push_back(c);
    return cpus;
}

void pin_to(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set); rc != 0)
        throw make_system_error(rc, "ringio: run_threads: pinning a loop thread to a CPU");
}

void run_one(group_state& g, std::size_t i, const thread_options& options, int cpu,
             const std::function<task<>(std::size_t)>& body, std::latch& started, std::latch& ended) {
    std::optional<event_loop> loop;
    try {
        if (cpu >= 0) pin_to(cpu);
        loop.emplace(options.loop);
        g.slots[i].loop = &*loop;
    } catch (...) {
        std::lock_guard lock(g.m);
        if (!g.setup_error) g.setup_error = std::current_exception();
    }
    started.arrive_and_wait();  // every loop exists (or one failed) before any fn runs
    bool setup_ok;
    {
        std::lock_guard lock(g.m);
        setup_ok = !g.setup_error;
    }
    if (setup_ok) {
        tls_group = &g;
        tls_index = i;
        try {
            loop->run_until_complete(group_main(g, i, body));
        } catch (...) {
            // The loop itself failed (io_uring): let the others end rather than wait for it.
            detail::loop_core::running().close_inbox();
            g.fail(i, std::current_exception());
            g.finished_one(i);
        }
        tls_group = nullptr;
    }
    // TRICKY: no loop is destroyed while another may still post to it (a reply to a call,
    // a cancel); once every loop has left run_until_complete, nothing posts any more.
    ended.arrive_and_wait();
    loop.reset();  // what arrived after the loop stopped is freed unrun (remote_item live=false)
}

}  // namespace

void run_loop_threads(std::size_t n, const thread_options& options, const std::function<task<>(std::size_t)>& body) {
    if (n == 0) throw std::invalid_argument("ringio: run_threads: n must be at least 1");
    if (event_loop::current())
        throw invalid_state_error("ringio: run_threads: this thread already runs an event loop");
    group_state g(n);
    std::vector<int> cpus;
    cpu_set_t saved_affinity;
    bool restore_affinity = false;
    if (options.pin_to_cpus) {
        cpus = allowed_cpus();
        restore_affinity = !cpus.empty() &&
                           pthread_getaffinity_np(pthread_self(), sizeof saved_affinity, &saved_affinity) == 0;
    }
    auto cpu_for = [&](std::size_t i) { return cpus.empty() ? -1 : cpus[i % cpus.size()]; };

    std::latch started(static_cast<std::ptrdiff_t>(n));
    std::latch ended(static_cast<std::ptrdiff_t>(n));
    std::vector<std::thread> threads;
    threads.reserve(n - 1);
    for (std::size_t i = 1; i < n; ++i) {
        try {
            threads.emplace_back(run_one, std::ref(g), i, std::cref(options), cpu_for(i), std::cref(body),
                                 std::ref(started), std::ref(ended));
        } catch (...) {
            {
                std::lock_guard lock(g.m);
                g.setup_error = std::current_exception();
            }
            // Arrive for the threads that do not exist, so the others are not left waiting.
            auto missing = static_cast<std::ptrdiff_t>(n - i);
            started.count_down(missing);
            ended.count_down(missing);
            break;
        }
    }
    run_one(g, 0, options, cpu_for(0), body, started, ended);
    for (auto& t : threads) t.join();
    if (restore_affinity) pthread_setaffinity_np(pthread_self(), sizeof saved_affinity, &saved_affinity);
    if (g.setup_error) std::rethrow_exception(g.setup_error);
    if (g.first_error) std::rethrow_exception(g.first_error);
}

void call_on_reply(remote_item* r, bool live) noexcept {
    auto* st = static_cast<call_base*>(static_cast<call_reply*>(r));
    if (live && st->waiter) std::exchange(st->waiter, nullptr)->wake();
    st->release();  // the round trip's reference
}

}  // namespace detail

std::size_t loop_group::size() const noexcept { return st_->n; }

event_loop& loop_group::loop(std::size_t i) const {
    if (i >= st_->n) throw std::out_of_range("ringio: loop_group::loop: no such loop");
    return *st_->slots[i].loop;
}

std::size_t loop_group::index() const {
    if (detail::tls_group != st_) throw invalid_state_error("ringio: loop_group::index: not on a loop of this group");
    return detail::tls_index;
}

loop_group* loop_group::current() noexcept { return detail::tls_group ? &detail::tls_group->group : nullptr; }

}  // namespace ringio
