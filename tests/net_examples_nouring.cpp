// The example programs where io_uring cannot be set up (a seccomp filter blocks io_uring_setup,
// as Docker's default profile does): they say so once on stderr ("io_uring unavailable (...);
// using epoll") and serve on the epoll backend under the same contract (DESIGN.md section 7).
// Forced onto io_uring (RINGIO_BACKEND=io_uring) they say why and exit with status 77.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <signal.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "child_process.hpp"
#include "seccomp_block.hpp"

namespace {

using namespace std::chrono_literals;

constexpr int exit_no_io_uring = 77;
constexpr int exit_no_filter = 121;  // the launcher could not install the filter (test_main.cpp)

/// `program args...` run with io_uring_setup blocked, through this binary's launcher; with
/// `backend` set, RINGIO_BACKEND=backend, else unset (the program chooses).
[[maybe_unused]] std::vector<std::string> without_io_uring(const char* program, std::vector<std::string> args,
                                                           const char* backend = nullptr) {
    std::vector<std::string> argv{"/proc/self/exe", "--exec-without-io-uring"};
    if (backend) {
        argv.emplace_back("--backend");
        argv.emplace_back(backend);
    }
    argv.emplace_back(program);
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
}

[[maybe_unused]] bool can_run() {
    if (test::native_arch == 0) {
        MESSAGE("no seccomp arch constant for this machine: skipped");
        return false;
    }
    return true;
}

/// The announcement, once, and no sanitizer report.
[[maybe_unused]] void check_announced(const std::string& err, const std::string& name) {
    INFO("stderr: ", err);
    CHECK(err.rfind(name + ": ", 0) == std::string::npos);  // not an error line of the program's
    auto first = err.find("io_uring unavailable (");
    CHECK(first != std::string::npos);
    CHECK(err.find("seccomp") != std::string::npos);
    CHECK(err.find("using epoll") != std::string::npos);
    CHECK(err.find("io_uring unavailable (", first + 1) == std::string::npos);  // once
    CHECK(err.find("AddressSanitizer") == std::string::npos);
    CHECK(err.find("runtime error") == std::string::npos);  // UBSan
}

}  // namespace

#if defined(RINGIO_ECHO_SERVER) && defined(RINGIO_UDP_ECHO) && defined(RINGIO_DEMO)

TEST_CASE("echo_server without io_uring: serves on epoll, said once on stderr, stops on SIGTERM with status 0") {
    if (!can_run()) return;
    for (const char* threads : {"1", "2"}) {
        test::child proc(without_io_uring(RINGIO_ECHO_SERVER, {"--host", "127.0.0.1", "--port", "0", "--threads", threads}));
        std::optional<std::string> first = proc.read_line(10s);
        if (!first && test::exited_with(proc.wait(1s), exit_no_filter)) {
            MESSAGE("could not install a seccomp filter here: skipped");
            return;
        }
        REQUIRE(first);
        REQUIRE(first->starts_with("listening on 127.0.0.1:"));
        auto port = static_cast<std::uint16_t>(std::stoul(first->substr(23)));
        ringio::run([](std::uint16_t p) -> ringio::task<> {
            for (int c = 0; c < 4; ++c) {  // (with 2 threads, connections reach both loops)
                auto [r, w] = co_await ringio::open_connection("127.0.0.1", p);
                std::string msg(100'000 + c, 'e');
                w.write(msg);
                w.write_eof();
                CHECK(co_await r.read() == msg);
                w.close();
                co_await w.wait_closed();
            }
        }(port));
        test::stop_with(proc, SIGTERM);
        check_announced(proc.stderr_text(), "echo_server");
    }
}

TEST_CASE("udp_echo without io_uring: echoes on epoll") {
    if (!can_run()) return;
    test::child proc(without_io_uring(RINGIO_UDP_ECHO, {"--host", "127.0.0.1", "--port", "0"}));
    std::optional<std::string> first = proc.read_line(10s);
    if (!first && test::exited_with(proc.wait(1s), exit_no_filter)) return;
    REQUIRE(first);
    REQUIRE(first->starts_with("listening on udp 127.0.0.1:"));
    auto port = static_cast<std::uint16_t>(std::stoul(first->substr(27)));
    ringio::run([](std::uint16_t p) -> ringio::task<> {
        auto ep = co_await ringio::create_datagram_endpoint(std::nullopt, ringio::endpoint(ringio::ip_address::loopback_v4(), p));
        std::array<std::byte, 2048> buf{};
        for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{1472}}) {
            std::string msg(size, 'u');
            co_await ep.send(msg);
            auto d = co_await ringio::wait_for(ep.recv(buf), 5s);
            CHECK(d.size == size);
        }
        co_await ep.close();
    }(port));
    test::stop_with(proc, SIGTERM);
    check_announced(proc.stderr_text(), "udp_echo");
}

TEST_CASE("ringio_demo without io_uring: runs on epoll to the end") {
    if (!can_run()) return;
    test::child proc(without_io_uring(RINGIO_DEMO, {}));
    std::optional<std::string> out = proc.read_all(60s);
    std::optional<int> status = proc.wait(5s);
    if (test::exited_with(status, exit_no_filter)) return;
    INFO("stdout: ", out.value_or("(none)"));
    CHECK(test::exited_with(status, 0));
    CHECK(out.value_or("").find("epoll") != std::string::npos);  // the demo names its backend
    check_announced(proc.stderr_text(), "ringio_demo");
}

TEST_CASE("echo_server forced onto io_uring where it is blocked: says why, exits 77") {
    if (!can_run()) return;
    test::child proc(without_io_uring(RINGIO_ECHO_SERVER, {"--port", "0"}, "io_uring"));
    std::optional<std::string> out = proc.read_all(20s);
    std::optional<int> status = proc.wait(5s);
    if (test::exited_with(status, exit_no_filter)) return;
    const std::string& err = proc.stderr_text();
    INFO("stderr: ", err);
    CHECK(test::exited_with(status, exit_no_io_uring));
    // "echo_server: ringio: cannot set up io_uring: blocked by a seccomp filter ..." and nothing else.
    CHECK(err.rfind("echo_server: ", 0) == 0);
    CHECK(err.find("cannot set up io_uring") != std::string::npos);
    CHECK(err.find("seccomp") != std::string::npos);
    CHECK(out.value_or("").find("listening on") == std::string::npos);
}

#else

TEST_CASE("examples without io_uring: skipped (the examples are not built)") {
    MESSAGE("RINGIO_BUILD_EXAMPLES is off: nothing to run");
}

#endif
