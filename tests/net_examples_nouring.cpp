// The example programs where io_uring cannot be set up (a seccomp filter blocks io_uring_setup,
// as Docker's default profile does): each says why on stderr and exits with status 77
// (examples::exit_no_io_uring), without crashing and without printing a listening line.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "child_process.hpp"
#include "seccomp_block.hpp"

namespace {

using namespace std::chrono_literals;

constexpr int exit_no_io_uring = 77;
constexpr int exit_no_filter = 121;  // the child could not install the filter
constexpr int exit_no_exec = 122;

struct outcome {
    std::optional<int> status;  // nullopt: still running after the time limit (then killed)
    std::string out;
    std::string err;
};

/// Runs `args` in a child process with io_uring_setup blocked by seccomp; waits up to `limit`.
outcome run_without_io_uring(std::vector<std::string> args, std::chrono::milliseconds limit) {
    int out[2], err[2];
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        // Only async-signal-safe calls until execv.
        int devnull = ::open("/dev/null", O_RDONLY);
        if (devnull >= 0) ::dup2(devnull, 0);
        ::dup2(out[1], 1);
        ::dup2(err[1], 2);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        if (!test::block_io_uring_setup()) ::_exit(exit_no_filter);
        ::execv(argv[0], argv.data());
        ::_exit(exit_no_exec);
    }
    ::close(out[1]);
    ::close(err[1]);
    outcome o;
    auto deadline = test::steady::now() + limit;
    pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    int open_fds = 2;
    while (open_fds > 0) {
        int ready = ::poll(fds, 2, test::remaining_ms(deadline));
        if (ready < 0 && errno == EINTR) continue;
        if (ready <= 0) break;  // the time limit
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || fds[i].revents == 0) continue;
            char buf[4096];
            ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
            if (n <= 0) {
                ::close(fds[i].fd);
                fds[i].fd = -1;
                --open_fds;
            } else {
                (i == 0 ? o.out : o.err).append(buf, static_cast<std::size_t>(n));
            }
        }
    }
    for (pollfd& p : fds)
        if (p.fd >= 0) ::close(p.fd);
    while (true) {
        int st = 0;
        pid_t r = ::waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            o.status = st;
            break;
        }
        if (test::steady::now() >= deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &st, 0);
            break;
        }
        ::poll(nullptr, 0, 5);
    }
    return o;
}

[[maybe_unused]] void check_says_why(const char* path, std::vector<std::string> args, const std::string& name) {
    args.insert(args.begin(), path);
    outcome o = run_without_io_uring(std::move(args), 20s);
    INFO("stdout: ", o.out);
    INFO("stderr: ", o.err);
    INFO(test::describe_status(o.status));
    if (test::exited_with(o.status, exit_no_filter)) {
        MESSAGE("could not install a seccomp filter here: skipped");
        return;
    }
    CHECK_FALSE(test::exited_with(o.status, exit_no_exec));
    CHECK(test::exited_with(o.status, exit_no_io_uring));
    // "<name>: ringio: cannot set up io_uring: blocked by a seccomp filter ..." and nothing else.
    CHECK(o.err.rfind(name + ": ", 0) == 0);
    CHECK(o.err.find("cannot set up io_uring") != std::string::npos);
    CHECK(o.err.find("seccomp") != std::string::npos);
    CHECK(o.err.find("AddressSanitizer") == std::string::npos);
    CHECK(o.err.find("runtime error") == std::string::npos);  // UBSan
    CHECK(o.out.find("listening on") == std::string::npos);
}

[[maybe_unused]] bool can_run() {
    if (test::native_arch == 0) {
        MESSAGE("no seccomp arch constant for this machine: skipped");
        return false;
    }
    return true;
}

}  // namespace

#if defined(RINGIO_ECHO_SERVER) && defined(RINGIO_UDP_ECHO) && defined(RINGIO_DEMO)

TEST_CASE("echo_server without io_uring: says why, exits 77") {
    if (can_run()) check_says_why(RINGIO_ECHO_SERVER, {"--port", "0"}, "echo_server");
}

TEST_CASE("udp_echo without io_uring: says why, exits 77") {
    if (can_run()) check_says_why(RINGIO_UDP_ECHO, {"--port", "0"}, "udp_echo");
}

TEST_CASE("ringio_demo without io_uring: says why, exits 77") {
    if (can_run()) check_says_why(RINGIO_DEMO, {}, "ringio_demo");
}

#else

TEST_CASE("examples without io_uring: skipped (the examples are not built)") {
    MESSAGE("RINGIO_BUILD_EXAMPLES is off: nothing to run");
}

#endif
