// Test helpers for running a program (an example) as a child process: its stdin fed from a
// string, its stdout read line by line with bounded waits (poll), its end awaited with a timeout
// (pidfd), and a check of its exit status. Every wait is bounded, so a broken program fails the
// test instead of hanging it.
#pragma once

#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

extern char** environ;

namespace test {

using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

inline int remaining_ms(steady::time_point deadline) {
    auto left = std::chrono::ceil<milliseconds>(deadline - steady::now()).count();
    return left > 0 ? static_cast<int>(left) : 0;
}

/// A program run with its stdin fed from `input` and its stdout and stderr on pipes. Destroying
/// it kills the process if it is still running, so that a failed test leaves nothing behind.
class child {
public:
    explicit child(std::vector<std::string> args, std::string_view input = {}) {
        int in[2], out[2], err[2];
        if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
            throw std::system_error(errno, std::system_category(), "pipe2");
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, in[0], 0);  // dup2 clears O_CLOEXEC
        posix_spawn_file_actions_adddup2(&actions, out[1], 1);
        posix_spawn_file_actions_adddup2(&actions, err[1], 2);
        // The child starts with no blocked signals and default dispositions, whatever this
        // process (whose loops block signals for wait_signal) has.
        posix_spawnattr_t attr;
        posix_spawnattr_init(&attr);
        sigset_t none, defaults;
        sigemptyset(&none);
        sigemptyset(&defaults);
        for (int s : {SIGINT, SIGTERM, SIGPIPE}) sigaddset(&defaults, s);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setsigdefault(&attr, &defaults);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        std::vector<char*> argv;
        for (std::string& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        int rc = ::posix_spawn(&pid_, argv[0], &actions, &attr, argv.data(), environ);
        posix_spawn_file_actions_destroy(&actions);
        posix_spawnattr_destroy(&attr);
        ::close(in[0]);
        ::close(out[1]);
        ::close(err[1]);
        out_ = out[0];
        err_ = err[0];
        ::fcntl(err_, F_SETFL, O_NONBLOCK);
        if (rc != 0) {
            ::close(in[1]);
            pid_ = -1;
            throw std::system_error(rc, std::system_category(), "posix_spawn " + args.front());
        }
        // Small inputs only (they fit in the pipe); then EOF.
        for (std::size_t off = 0; off < input.size();) {
            ssize_t n = ::write(in[1], input.data() + off, input.size() - off);
            if (n <= 0) break;
            off += static_cast<std::size_t>(n);
        }
        ::close(in[1]);
    }
    child(const child&) = delete;
    child& operator=(const child&) = delete;
    ~child() {
        if (pid_ > 0 && !status_) {
            ::kill(pid_, SIGKILL);
            int st = 0;
            ::waitpid(pid_, &st, 0);
        }
        ::close(out_);
        ::close(err_);
    }

    [[nodiscard]] pid_t pid() const noexcept { return pid_; }
    void signal(int sig) const { REQUIRE(::kill(pid_, sig) == 0); }

    /// The next line of stdout (without "\n"), or nullopt at EOF or when `limit` passes.
    std::optional<std::string> read_line(milliseconds limit) {
        auto deadline = steady::now() + limit;
        while (true) {
            if (auto nl = out_buf_.find('\n'); nl != std::string::npos) {
                std::string line = out_buf_.substr(0, nl);
                out_buf_.erase(0, nl + 1);
                return line;
            }
            if (!fill_stdout(deadline)) return std::nullopt;
        }
    }

    /// All of stdout up to EOF; nullopt if EOF does not come within `limit`.
    std::optional<std::string> read_all(milliseconds limit) {
        auto deadline = steady::now() + limit;
        while (fill_stdout(deadline)) {
        }
        if (!stdout_eof_) return std::nullopt;
        return std::exchange(out_buf_, {});
    }

    /// What the child wrote to stderr so far (never waits).
    const std::string& stderr_text() {
        char buf[4096];
        ssize_t n;
        while ((n = ::read(err_, buf, sizeof buf)) > 0) err_text_.append(buf, static_cast<std::size_t>(n));
        return err_text_;
    }

    /// Waits up to `limit` for the child to end; its wait status, or nullopt if it still runs.
    std::optional<int> wait(milliseconds limit) {
        if (status_) return status_;
        auto deadline = steady::now() + limit;
        int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
        if (pidfd >= 0) {  // readable when the process ends: a wait with a timeout, no polling
            pollfd p{pidfd, POLLIN, 0};
            int ready = ::poll(&p, 1, remaining_ms(deadline));
            ::close(pidfd);
            if (ready <= 0) return std::nullopt;
        }
        while (true) {  // also the fallback for kernels without pidfd_open (before 5.3)
            int st = 0;
            pid_t r = ::waitpid(pid_, &st, pidfd >= 0 ? 0 : WNOHANG);
            if (r == pid_) return status_ = st;
            if (r < 0 && errno != EINTR) return std::nullopt;
            if (steady::now() >= deadline) return std::nullopt;
            ::poll(nullptr, 0, 5);
        }
    }

private:
    // Reads more of stdout; false at EOF or at the deadline.
    bool fill_stdout(steady::time_point deadline) {
        if (stdout_eof_) return false;
        pollfd p{out_, POLLIN, 0};
        if (::poll(&p, 1, remaining_ms(deadline)) <= 0) return false;
        char buf[4096];
        ssize_t n = ::read(out_, buf, sizeof buf);
        if (n <= 0) {
            stdout_eof_ = true;
            return false;
        }
        out_buf_.append(buf, static_cast<std::size_t>(n));
        return true;
    }

    pid_t pid_ = -1;
    int out_ = -1;
    int err_ = -1;
    std::string out_buf_;
    std::string err_text_;
    bool stdout_eof_ = false;
    std::optional<int> status_;
};

inline bool exited_with(std::optional<int> status, int code) {
    return status && WIFEXITED(*status) && WEXITSTATUS(*status) == code;
}

inline std::string describe_status(std::optional<int> status) {
    if (!status) return "still running";
    if (WIFEXITED(*status)) return fmt::format("exit status {}", WEXITSTATUS(*status));
    if (WIFSIGNALED(*status)) return fmt::format("killed by signal {}", WTERMSIG(*status));
    return fmt::format("wait status {:#x}", *status);
}

/// Reads the first line of `proc`, which must be `prefix` followed by a port number (a server
/// started with --port 0 announcing the port it bound); returns that port.
inline std::uint16_t read_announced_port(child& proc, std::string_view prefix) {
    std::optional<std::string> first = proc.read_line(std::chrono::seconds(10));
    INFO("stderr: ", proc.stderr_text());
    REQUIRE(first.has_value());
    REQUIRE_MESSAGE(first->starts_with(prefix), "first line: ", *first);
    unsigned long p = std::stoul(first->substr(prefix.size()));
    REQUIRE(p > 0);
    REQUIRE(p <= 65535);
    return static_cast<std::uint16_t>(p);
}

/// Sends `sig` to `proc` and checks that it exits with status 0 within a second.
inline void stop_with(child& proc, int sig) {
    auto start = steady::now();
    proc.signal(sig);
    std::optional<int> status = proc.wait(std::chrono::seconds(1));
    auto took = std::chrono::duration_cast<milliseconds>(steady::now() - start);
    INFO("stderr: ", proc.stderr_text());
    CHECK_MESSAGE(exited_with(status, 0), describe_status(status));
    CHECK(took < std::chrono::seconds(1));
}

/// Runs `body` in a forked child (after `setup`, which may install a seccomp filter there and
/// returns false if it could not); returns the child's exit status and what it wrote (its
/// failures). Bounded: a child still running after `limit` is killed.
struct child_result {
    std::optional<int> status;
    std::string report;
    bool setup_failed = false;
};
inline child_result run_in_child(const std::function<bool()>& setup, const std::function<std::string()>& body,
                                 std::chrono::milliseconds limit) {
    constexpr int exit_no_setup = 3;
    int out[2];
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(out[0]);
        if (!setup()) ::_exit(exit_no_setup);
        std::string report;
        try {
            report = body();
        } catch (const std::exception& e) {
            report = std::string("exception: ") + e.what();
        }
        for (std::size_t off = 0; off < report.size();) {
            ssize_t n = ::write(out[1], report.data() + off, report.size() - off);
            if (n <= 0) break;
            off += static_cast<std::size_t>(n);
        }
        ::_exit(report.empty() ? 0 : 1);  // no doctest teardown in the child
    }
    ::close(out[1]);
    child_result res;
    auto deadline = steady::now() + limit;
    pollfd p{out[0], POLLIN, 0};
    while (::poll(&p, 1, remaining_ms(deadline)) > 0) {
        char buf[4096];
        ssize_t n = ::read(out[0], buf, sizeof buf);
        if (n <= 0) break;  // EOF: the child has ended
        res.report.append(buf, static_cast<std::size_t>(n));
    }
    ::close(out[0]);
    // The pipe's EOF comes as the child exits (or at the deadline): wait for its end, bounded.
    int st = 0;
    pid_t ended = 0;
    for (int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); pidfd >= 0; pidfd = -1) {
        pollfd pp{pidfd, POLLIN, 0};
        if (::poll(&pp, 1, remaining_ms(deadline)) > 0) ended = ::waitpid(pid, &st, 0);
        ::close(pidfd);
    }
    if (ended != pid) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &st, 0);
        res.report += " (killed at the time limit)";
        return res;
    }
    res.status = st;
    res.setup_failed = WIFEXITED(st) && WEXITSTATUS(st) == exit_no_setup;
    return res;
}

}  // namespace test
