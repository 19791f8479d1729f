// The loop itself: a full SQ, more operations than the CQ holds, signals, setup errors.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <csignal>
#include <cerrno>
#include <string>
#include <thread>
#include <vector>
#include <atomic>

#include "../runtime/ring.hpp"
#include "helpers.hpp"

using namespace std::chrono_literals;

TEST_CASE("100,000 simultaneous no-op and timeout operations on a small ring all complete") {
    // sq 64 / cq 512: the SQ fills thousands of times and at most 256 operations are in flight.
    ringio::loop_options opts;
    opts.sq_entries = 64;
    opts.cq_entries = 512;
    long nops = 0, timeouts = 0;
    std::size_t peak = 0;
    ringio::run(
        [](long& n, long& t, std::size_t& pk) -> ringio::task<> {
            auto& loop = ringio::event_loop::running();
            ringio::task_group g;
            for (int i = 0; i < 100'000; ++i) {
                if (i % 2)
                    g.create_task([](long& c) -> ringio::task<> {
                        ringio::io_result r = co_await ringio::io::nop();
                        if (r.res == 0) ++c;
                    }(n));
                else
                    g.create_task([](long& c) -> ringio::task<> {
                        ringio::io_result r = co_await ringio::io::kernel_timeout(1ms);
                        if (r.res == -ETIME) ++c;
                    }(t));
            }
            while (g.size() > 0) {
                pk = std::max(pk, loop.in_flight());
                co_await ringio::yield_now();
            }
            co_await g.wait();
        }(nops, timeouts, peak),
        opts);
    CHECK(nops == 50'000);
    CHECK(timeouts == 50'000);
    CHECK(peak <= 256 + 1);  // half the CQ, plus the loop's own wake-up read
    CHECK(peak > 0);
}

TEST_CASE("wait_signal returns a signal the process raises") {
    ringio::run([]() -> ringio::task<> {
        auto waiter = ringio::create_task(ringio::wait_signal({SIGUSR1, SIGUSR2}));
        co_await ringio::sleep(1ms);
        CHECK_FALSE(waiter.done());
        REQUIRE(::kill(::getpid(), SIGUSR2) == 0);
        CHECK(co_await ringio::wait_for(waiter, 10s) == SIGUSR2);
        // One raised while nobody waits stays pending for the next wait.
        REQUIRE(::kill(::getpid(), SIGUSR1) == 0);
        CHECK(co_await ringio::wait_for(ringio::wait_signal({SIGUSR1}), 10s) == SIGUSR1);
    }());
}

TEST_CASE("wait_signal can be cancelled and closes its signalfd") {
    std::size_t fds = test::open_fds();
    ringio::run([]() -> ringio::task<> {
        CHECK_THROWS_AS(co_await ringio::wait_for(ringio::wait_signal({SIGUSR1}), 2ms), ringio::timeout_error);
        CHECK_THROWS_AS(co_await ringio::wait_signal({SIGUSR1, 9999}), std::invalid_argument);
    }());
    CHECK(test::open_fds() == fds);
}

TEST_CASE("io_uring setup errors name the cause and the fix") {
    std::string enosys = ringio::detail::setup_error_message(ENOSYS);
    CHECK(enosys.find("no io_uring") != std::string::npos);
    std::string eperm = ringio::detail::setup_error_message(EPERM);
    bool names_cause = eperm.find("seccomp") != std::string::npos || eperm.find("io_uring_disabled") != std::string::npos;
    CHECK(names_cause);
    std::string enomem = ringio::detail::setup_error_message(ENOMEM);
    CHECK(enomem.find("RLIMIT_MEMLOCK") != std::string::npos);
}

TEST_CASE("the loop reports the kernel features it found") {
    ringio::event_loop loop;
    const auto& f = loop.features();
    CHECK(f.sq_entries >= 1);
    CHECK(f.cq_entries >= f.sq_entries);
    MESSAGE("single_issuer=" << f.single_issuer << " defer_taskrun=" << f.defer_taskrun
                             << " ext_arg=" << f.ext_arg << " multishot_accept=" << f.multishot_accept
                             << " recv_multishot=" << f.recv_multishot);
}

TEST_CASE("a second loop on the same thread is refused") {
    ringio::event_loop loop;
    CHECK_THROWS_AS(ringio::event_loop{}, ringio::invalid_state_error);
}

TEST_CASE("loops on several threads run independently") {
    std::vector<std::thread> threads;
    std::atomic<int> sum{0};
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&sum, t] {
            sum += ringio::run([](int v) -> ringio::task<int> {
                co_await ringio::sleep(1ms);
                co_return v;
            }(t));
        });
    for (auto& th : threads) th.join();
    CHECK(sum.load() == 0 + 1 + 2 + 3);
}
