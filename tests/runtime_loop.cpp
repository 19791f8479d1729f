// The loop itself: a full SQ, more operations than the CQ holds, signals, setup errors.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <csignal>
#include <cerrno>
#include <string>
#include <thread>
#include <vector>
#include <atomic>
#include <latch>
#include <optional>
#include <array>
#include <mutex>
#include <span>
#include <stdexcept>
#include <sys/socket.h>

#include "../runtime/ring.hpp"
#include "helpers.hpp"

#include <fmt/format.h>

using namespace std::chrono_literals;

namespace {
// 100,000 no-op and timeout operations at once on a ring with sq 64 / cq 512: the SQ fills
// thousands of times. Returns the peak of operations in flight.
std::size_t flood(ringio::loop_options opts) {
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
    return peak;
}
}  // namespace

TEST_CASE("100,000 operations with in-flight work bounded to half the CQ all complete") {
    if (test::skip_on_epoll("io_uring's own features")) return;
    ringio::loop_options opts;
    opts.max_in_flight = 256;
    std::size_t peak = flood(opts);
    CHECK(peak <= 256 + 1);  // the bound, plus the loop's own wake-up read
    CHECK(peak > 0);
}

TEST_CASE("100,000 operations overflowing a 512-entry CQ all complete (kernel keeps the overflow)") {
    if (test::skip_on_epoll("io_uring's own features")) return;
    bool nodrop = ringio::event_loop().features().nodrop;
    if (!nodrop) {
        MESSAGE("kernel without IORING_FEAT_NODROP: in-flight work is bounded, nothing to overflow");
        return;
    }
    std::size_t peak = flood({});
    CHECK(peak > 512);  // far more in flight than the CQ holds; every completion still arrived
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
    if (test::skip_on_epoll("io_uring's own features")) return;
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

// ---- io_uring blocked, as Docker's default seccomp profile does ----

#include <sys/wait.h>

#include "seccomp_block.hpp"

using test::block_io_uring_setup;
using test::native_arch;

TEST_CASE("io_uring blocked by seccomp: a system_error that names the cause, and the tests skip with 77") {
    if (test::skip_on_epoll("io_uring's own features")) return;
    if (native_arch == 0) {
        MESSAGE("no seccomp arch constant for this machine: skipped");
        return;
    }
    int pipefd[2];
    REQUIRE(::pipe(pipefd) == 0);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(pipefd[0]);
        if (!block_io_uring_setup()) ::_exit(3);
        std::string what = "no exception";
        int code = 0;
        try {
            ringio::event_loop loop;
        } catch (const std::system_error& e) {
            what = e.what();
            code = e.code().value();
        }
        std::string msg = std::to_string(code) + " " + what;
        [[maybe_unused]] auto n = ::write(pipefd[1], msg.data(), msg.size());
        ::close(pipefd[1]);
        // The test binary itself: its main must notice and exit 77 (CTest's skip), not crash.
        char self[] = "/proc/self/exe";
        char filter[] = "--test-case=nothing-at-all";
        char* argv[] = {self, filter, nullptr};
        ::execv(self, argv);
        ::_exit(4);
    }
    ::close(pipefd[1]);
    std::string got;
    char buf[512];
    for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof buf)) > 0;) got.append(buf, static_cast<std::size_t>(n));
    ::close(pipefd[0]);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    if (WEXITSTATUS(status) == 3) {
        MESSAGE("could not install a seccomp filter here: skipped");
        return;
    }
    CHECK(got.rfind(std::to_string(EPERM) + " ", 0) == 0);
    CHECK(got.find("seccomp") != std::string::npos);
    CHECK(WEXITSTATUS(status) == 77);
}

// ---- SQPOLL (opt-in) and the registered ring fd ----

TEST_CASE("with SQPOLL the loop runs I/O, timers and a TCP exchange just the same") {
    if (test::skip_on_epoll("io_uring's own features")) return;
    ringio::loop_options opts;
    opts.sqpoll = true;
    opts.sqpoll_idle = 10ms;  // the kernel thread sleeps and must be woken again below
    ringio::run(
        []() -> ringio::task<> {
            auto& loop = ringio::event_loop::running();
            if (!loop.features().sqpoll) MESSAGE("this kernel refused SQPOLL: the loop fell back to plain submission");
            for (int i = 0; i < 1000; ++i) {
                ringio::io_result r = co_await ringio::io::nop();
                CHECK(r.res == 0);
            }
            co_await ringio::sleep(30ms);  // longer than sqpoll_idle: the SQ thread goes to sleep
            auto srv = co_await ringio::start_server(
                [](ringio::stream_reader r, ringio::stream_writer w) -> ringio::task<> {
                    std::string line = co_await r.read_line();
                    w.write(line);
                    co_await w.drain();
                },
                "127.0.0.1", 0);
            auto [r, w] = co_await ringio::open_connection("127.0.0.1", srv.port());
            w.write("over sqpoll\n");
            CHECK(co_await ringio::wait_for(r.read_line(), 5s) == "over sqpoll\n");
            w.close();
            srv.close();
            co_await srv.wait_closed();
        }(),
        opts);
}

TEST_CASE("the ring fd is registered unless asked not to") {
    if (test::skip_on_epoll("io_uring's own features")) return;
    CHECK(ringio::event_loop().features().registered_ring);  // kernel 5.18+ (the CI's is 6.x)
    ringio::loop_options opts;
    opts.register_ring_fd = false;
    CHECK_FALSE(ringio::event_loop(opts).features().registered_ring);
}

// ---- shutdown, re-entry and posting (hardening) ----

TEST_CASE("run_until_complete from a task of the same loop throws: the loop is already running") {
    ringio::event_loop loop;
    bool threw = false;
    loop.run_until_complete([](ringio::event_loop& l, bool& t) -> ringio::task<> {
        try {
            l.run_until_complete([]() -> ringio::task<> { co_return; }());
        } catch (const ringio::invalid_state_error& e) {
            t = std::string(e.what()).find("already running") != std::string::npos;
        }
        co_return;
    }(loop, threw));
    CHECK(threw);
    CHECK(loop.live_tasks() == 0);
}

TEST_CASE("a task created by a callback that runs during the final shutdown is cancelled and freed") {
    bool ran = false;
    {
        ringio::event_loop loop;
        loop.run_until_complete([](ringio::event_loop& l, bool& r) -> ringio::task<> {
            // Runs after this task has finished, while the loop shuts down.
            l.call_soon_threadsafe([&r] {
                (void)ringio::create_task([](bool& f) -> ringio::task<> {
                    test::counted c;
                    f = true;
                    co_await ringio::sleep(1h);
                }(r));
            });
            co_return;
        }(loop, ran));
        CHECK(loop.live_tasks() == 0);
    }
    CHECK_FALSE(ran);  // cancelled before its first step, as every task left at shutdown
    CHECK(test::counted::live == 0);
}

TEST_CASE("a call_on returning a task that reaches a loop in its final shutdown is answered") {
    ringio::event_loop target;
    std::latch posted(1);
    std::string outcome;
    std::thread caller([&] {
        ringio::run([](ringio::event_loop& t, std::latch& p, std::string& out) -> ringio::task<> {
            auto call = [](ringio::event_loop& tl) -> ringio::task<int> {
                auto fn = []() -> ringio::task<int> {
                    co_await ringio::sleep(1h);
                    co_return 1;
                };
                co_return co_await ringio::call_on(tl, fn);
            };
            auto h = ringio::create_task(call(t));
            co_await ringio::yield_now();  // h has posted its request by now
            p.count_down();
            try {
                co_await ringio::wait_for(h, 5s);
                out = "value";
            } catch (const ringio::cancelled_error&) {
                out = "cancelled";
            } catch (const ringio::invalid_state_error&) {
                out = "refused";
            } catch (const ringio::timeout_error&) {
                out = "never answered";
            }
        }(target, posted, outcome));
    });
    target.run_until_complete([](std::latch& p) -> ringio::task<> {
        p.wait();  // blocks this loop: the request is handled only after this task has finished
        co_return;
    }(posted));
    caller.join();
    CHECK(outcome == "cancelled");
}

TEST_CASE("a callback posted to a loop that has stopped runs before the loop is gone, never dropped") {
    int ran = 0;
    {
        ringio::event_loop loop;
        loop.run_until_complete([]() -> ringio::task<> { co_return; }());
        std::thread([&] { loop.call_soon_threadsafe([&ran] { ++ran; }); }).join();
    }
    CHECK(ran == 1);
}

TEST_CASE("posting through a loop_handle to a closed or destroyed loop throws invalid_state_error") {
    std::optional<ringio::loop_handle> h;
    int ran = 0;
    {
        ringio::event_loop loop;
        h.emplace(loop);
        h->call_soon_threadsafe([&ran] { ++ran; });
        loop.run_until_complete([]() -> ringio::task<> { co_return; }());
        CHECK(ran == 1);
        CHECK_FALSE(h->closed());
    }
    CHECK(h->closed());
    CHECK_THROWS_AS(h->call_soon_threadsafe([&ran] { ++ran; }), ringio::invalid_state_error);
    CHECK(ran == 1);
}

TEST_CASE("buffer-group ids are reused: 70,000 rings made and freed one after another all register") {
    ringio::run([]() -> ringio::task<> {
        if (!ringio::event_loop::running().features().buf_ring || !ringio::event_loop::running().features().recv_multishot) {
            MESSAGE("no provided buffer rings here; skipped");
            co_return;
        }
        ringio::datagram_options o;
        o.ring_buffers = 1;
        o.max_datagram = 16;
        auto first = co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("127.0.0.1:0"), std::nullopt, o);
        REQUIRE(first.multishot());  // its group stays registered throughout
        int fallbacks = 0;
        for (int i = 0; i < 70'000; ++i) {
            auto ep = co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("127.0.0.1:0"), std::nullopt, o);
            if (!ep.multishot()) ++fallbacks;
            co_await ep.close();
        }
        CHECK(fallbacks == 0);
        co_await first.close();
    }());
}

TEST_CASE("run_until_complete returns although another thread keeps posting; the destructor ends too") {
    std::atomic<bool> stop{false};
    std::atomic<long> ran{0};
    {
        ringio::event_loop loop;
        ringio::loop_handle h = loop.handle();
        std::thread poster([&] {
            for (long i = 0; i < 10'000'000 && !stop.load(); ++i) {
                try {
                    h.call_soon_threadsafe([&ran] { ++ran; });
                } catch (const ringio::invalid_state_error&) {
                    break;  // the loop is closed
                }
            }
        });
        loop.run_until_complete([]() -> ringio::task<> { co_await ringio::sleep(10ms); }());
        stop = true;
        poster.join();
    }
    CHECK(ran.load() > 0);
}

namespace {
// In a forked child whose seccomp filter `block` installs: loops made with no backend asked for
// (RINGIO_BACKEND unset), one on this thread and one on another, each running a timer, a
// to_thread call and a socket exchange. Reports "BACKEND|ANNOUNCEMENTS|FIRST LOG LINE" through a
// pipe; "no filter" when none could be installed.
std::string fallback_in_child(bool (*block)()) {
    int pipefd[2];
    REQUIRE(::pipe(pipefd) == 0);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(pipefd[0]);
        ::unsetenv("RINGIO_BACKEND");
        if (!block()) ::_exit(3);
        std::string out;
        std::vector<std::string> lines;
        std::mutex m;
        ringio::set_log_handler([&](ringio::log_level, std::string_view msg) {
            std::lock_guard lock(m);
            lines.emplace_back(msg);
        });
        auto exercise = []() -> std::string {
            return ringio::run([]() -> ringio::task<std::string> {
                int fds[2];
                if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) co_return "socketpair failed";
                ringio::socket a(fds[0]), b(fds[1]);
                co_await ringio::sleep(1ms);
                int v = co_await ringio::to_thread([] { return 7; });
                std::string msg = "ping";
                co_await a.send(std::as_bytes(std::span(msg)));
                std::array<std::byte, 8> buf{};
                std::size_t n = co_await b.recv(buf);
                bool epoll = ringio::event_loop::running().backend() == ringio::backend_kind::epoll;
                co_return fmt::format("{}{}", epoll ? "epoll" : "io_uring", n == 4 && v == 7 ? "" : " (exchange failed)");
            }());
        };
        try {
            out = exercise();
            std::string other;
            std::thread([&] { other = exercise(); }).join();
            if (other != out) out = fmt::format("{} / other thread: {}", out, other);
        } catch (const std::exception& e) {
            out = fmt::format("error: {}", e.what());
        }
        std::size_t said = 0;
        for (const auto& l : lines) said += l.find("io_uring unavailable") != std::string::npos;
        out = fmt::format("{}|{}|{}", out, said, lines.empty() ? std::string() : lines.front());
        [[maybe_unused]] auto n = ::write(pipefd[1], out.data(), out.size());
        ::_exit(0);
    }
    ::close(pipefd[1]);
    std::string got;
    char buf[512];
    for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof buf)) > 0;) got.append(buf, static_cast<std::size_t>(n));
    ::close(pipefd[0]);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    if (WEXITSTATUS(status) == 3) return "no filter";
    return got;
}
}  // namespace

TEST_CASE("io_uring blocked by seccomp: a loop falls back to epoll, says so once, and works") {
    if (native_arch == 0) return;
    std::string got = fallback_in_child(&test::block_io_uring_setup);
    if (got == "no filter") return;
    INFO(got);
    CHECK(got.rfind("epoll|1|io_uring unavailable (", 0) == 0);
    CHECK((std::string(got).find("seccomp") != std::string::npos));
    CHECK((std::string(got).find("using epoll") != std::string::npos));
}

TEST_CASE("io_uring set up but io_uring_enter blocked: the probe notices, and the loop falls back to epoll") {
    if (native_arch == 0) return;
    std::string got = fallback_in_child(&test::block_io_uring_enter);
    if (got == "no filter") return;
    INFO(got);
    CHECK(got.rfind("epoll|1|io_uring unavailable (", 0) == 0);
    CHECK((std::string(got).find("io_uring_enter") != std::string::npos));
}

TEST_CASE("RINGIO_BACKEND and loop_options::backend choose the backend; a bad value is a clear error") {
    {
        ringio::loop_options o;
        o.backend = ringio::backend_kind::epoll;
        ringio::event_loop loop(o);
        CHECK(loop.backend() == ringio::backend_kind::epoll);
        CHECK_FALSE(loop.features().buf_ring);
        CHECK(loop.features().sq_entries == 0);
    }
    const char* prev = std::getenv("RINGIO_BACKEND");
    std::string saved = prev ? prev : "";
    ::setenv("RINGIO_BACKEND", "kqueue", 1);
    try {
        ringio::event_loop loop;
        FAIL("a bad RINGIO_BACKEND must be refused");
    } catch (const std::invalid_argument& e) {
        CHECK((std::string(e.what()).find("RINGIO_BACKEND must be io_uring or epoll") != std::string::npos));
    }
    ::setenv("RINGIO_BACKEND", "epoll", 1);
    CHECK(ringio::event_loop().backend() == ringio::backend_kind::epoll);
    if (prev)
        ::setenv("RINGIO_BACKEND", saved.c_str(), 1);
    else
        ::unsetenv("RINGIO_BACKEND");
}
