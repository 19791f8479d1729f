// The UDP examples (examples/udp_echo and udp_ping), run as child processes on 127.0.0.1: they
// keep the contracts of DESIGN.md section 7. Every wait is bounded, so a broken example fails the
// test instead of hanging it.
#include <doctest/doctest.h>

#include <ringio/datagram.hpp>
#include <ringio/ringio.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

extern char** environ;

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

#if !defined(RINGIO_UDP_ECHO) || !defined(RINGIO_UDP_PING)

TEST_CASE("the examples are not built (RINGIO_BUILD_EXAMPLES=OFF): skipped") {
    std::exit(77);  // CTest's skip code
}

#else

namespace {

// The child-process harness, as in tests/net_examples.cpp.
int remaining_ms(steady::time_point deadline) {
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

bool exited_with(std::optional<int> status, int code) {
    return status && WIFEXITED(*status) && WEXITSTATUS(*status) == code;
}

std::string describe_status(std::optional<int> status) {
    if (!status) return "still running";
    if (WIFEXITED(*status)) return fmt::format("exit status {}", WEXITSTATUS(*status));
    if (WIFSIGNALED(*status)) return fmt::format("killed by signal {}", WTERMSIG(*status));
    return fmt::format("wait status {:#x}", *status);
}

/// udp_echo started with --port 0, and the port it announced on its first line.
struct udp_echo_process {
    child proc;
    std::uint16_t port = 0;

    explicit udp_echo_process(std::vector<std::string> extra = {}) : proc(args(std::move(extra))) {
        std::optional<std::string> first = proc.read_line(10s);
        INFO("stderr: ", proc.stderr_text());
        REQUIRE(first.has_value());
        constexpr std::string_view prefix = "listening on udp 127.0.0.1:";
        REQUIRE_MESSAGE(first->starts_with(prefix), "first line: ", *first);
        unsigned long p = std::stoul(first->substr(prefix.size()));
        REQUIRE(p > 0);
        REQUIRE(p <= 65535);
        port = static_cast<std::uint16_t>(p);
    }

    static std::vector<std::string> args(std::vector<std::string> extra) {
        std::vector<std::string> a{RINGIO_UDP_ECHO, "--host", "127.0.0.1", "--port", "0"};
        a.insert(a.end(), extra.begin(), extra.end());
        return a;
    }

    [[nodiscard]] ringio::endpoint address() const { return ringio::endpoint(ringio::ip_address::loopback_v4(), port); }

    /// Sends `sig` and checks that the server exits with status 0 within a second.
    void stop_with(int sig) {
        auto start = steady::now();
        proc.signal(sig);
        std::optional<int> status = proc.wait(1s);
        auto took = std::chrono::duration_cast<milliseconds>(steady::now() - start);
        INFO("stderr: ", proc.stderr_text());
        CHECK_MESSAGE(exited_with(status, 0), describe_status(status));
        CHECK(took < 1s);
    }
};

std::vector<std::byte> pattern(std::size_t size, std::size_t seed) {
    std::vector<std::byte> v(size);
    for (std::size_t i = 0; i < size; ++i) v[i] = static_cast<std::byte>((seed * 131 + i * 7 + i / 251) & 0xff);
    return v;
}

/// Sends `data` from `ep` to `to` and waits for the reply (resending up to 5 times, 1 s apart:
/// UDP may lose a datagram, though loopback should not). The reply, or nullopt.
ringio::task<std::optional<std::vector<std::byte>>> round_trip(ringio::datagram_endpoint& ep, ringio::endpoint to,
                                                               std::vector<std::byte> data) {
    std::vector<std::byte> buf(65536);
    for (int attempt = 0; attempt < 5; ++attempt) {
        co_await ep.send_to(data, to);
        try {
            ringio::datagram d = co_await ringio::wait_for(ep.recv_from(buf), 1s);
            CHECK_FALSE(d.truncated);
            CHECK(d.sender == to);
            buf.resize(d.size);
            co_return buf;
        } catch (const ringio::timeout_error&) {
        }
    }
    co_return std::nullopt;
}

struct ping_result {
    std::optional<int> status;  // wait status; nullopt if it did not end in time
    std::string out;            // its stdout
};

/// Runs udp_ping with `args` to completion (bounded).
ping_result run_ping(std::vector<std::string> args, milliseconds limit = 30s) {
    args.insert(args.begin(), RINGIO_UDP_PING);
    child ping(std::move(args));
    std::optional<std::string> out = ping.read_all(limit);
    std::optional<int> status = ping.wait(limit);
    INFO("udp_ping stderr: ", ping.stderr_text());
    return {status, out.value_or("<no EOF on stdout>")};
}

}  // namespace

TEST_CASE("udp_echo announces its port and echoes datagrams of 0, 1, 1472 and 65507 bytes exactly") {
    udp_echo_process server;
    ringio::run([](ringio::endpoint to) -> ringio::task<> {
        auto ep = co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("127.0.0.1:0"), std::nullopt);
        const std::size_t sizes[] = {0, 1, 1472, 65507};
        std::size_t seed = 0;
        for (std::size_t n : sizes) {
            CAPTURE(n);
            auto data = pattern(n, ++seed);
            auto back = co_await round_trip(ep, to, data);
            REQUIRE(back.has_value());
            CHECK(back->size() == n);
            CHECK(*back == data);
        }
    }(server.address()));
    server.stop_with(SIGTERM);
}

TEST_CASE("udp_echo answers each of several clients, concurrently, to its own address") {
    udp_echo_process server;
    ringio::run([](ringio::endpoint to) -> ringio::task<> {
        constexpr int clients = 8, per_client = 50;
        std::vector<ringio::datagram_endpoint> eps;
        for (int i = 0; i < clients; ++i)
            eps.push_back(co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("127.0.0.1:0"), std::nullopt));
        std::vector<ringio::task<int>> runs;
        for (int i = 0; i < clients; ++i) {
            runs.push_back([](ringio::datagram_endpoint& ep, ringio::endpoint dst, int id) -> ringio::task<int> {
                int ok = 0;
                for (int k = 0; k < per_client; ++k) {
                    auto data = pattern(static_cast<std::size_t>(100 + k * 10), static_cast<std::size_t>(id * 1000 + k));
                    auto back = co_await round_trip(ep, dst, data);
                    if (back && *back == data) ++ok;
                }
                co_return ok;
            }(eps[static_cast<std::size_t>(i)], to, i));
        }
        std::vector<int> ok = co_await ringio::wait_for(ringio::gather(std::move(runs)), 60s);
        for (int n : ok) CHECK(n == per_client);
    }(server.address()));
    server.stop_with(SIGINT);
}

TEST_CASE("udp_ping --count 200 against udp_echo: exit 0, 0% loss, round-trip figures") {
    udp_echo_process server;
    ping_result r = run_ping({"--host", "127.0.0.1", "--port", std::to_string(server.port), "--count", "200"});
    INFO("udp_ping output:\n", r.out);
    CHECK_MESSAGE(exited_with(r.status, 0), describe_status(r.status));
    CHECK(r.out.find("200 sent, 200 received, 0% loss") != std::string::npos);
    CHECK(r.out.find("rtt min/median/p99/max = ") != std::string::npos);
    // The other options: big datagrams on a fixed schedule.
    ping_result r2 = run_ping({"--host", "127.0.0.1", "--port", std::to_string(server.port), "--count", "20",
                                     "--size", "65507", "--interval-ms", "2", "--timeout-ms", "2000"});
    INFO("udp_ping output:\n", r2.out);
    CHECK_MESSAGE(exited_with(r2.status, 0), describe_status(r2.status));
    CHECK(r2.out.find("20 datagrams of 65507 bytes") != std::string::npos);
    CHECK(r2.out.find(", 0% loss") != std::string::npos);
    server.stop_with(SIGTERM);
}

TEST_CASE("udp_ping reports 100% loss and exits 1 when nothing answers") {
    // A port with nobody on it: bind one, note it, close it.
    std::uint16_t port = ringio::run([]() -> ringio::task<std::uint16_t> {
        auto ep = co_await ringio::create_datagram_endpoint(ringio::endpoint::parse("127.0.0.1:0"), std::nullopt);
        std::uint16_t p = ep.local_endpoint().port();
        co_await ep.close();
        co_return p;
    }());
    ping_result r = run_ping({"--host", "127.0.0.1", "--port", std::to_string(port), "--count", "3",
                              "--timeout-ms", "200"});
    INFO("udp_ping output:\n", r.out);
    CHECK_MESSAGE(exited_with(r.status, 1), describe_status(r.status));
    CHECK(r.out.find("3 sent, 0 received, 100% loss") != std::string::npos);
}

TEST_CASE("udp_echo and udp_ping: usage errors exit with status 2") {
    for (std::vector<std::string> args : {std::vector<std::string>{RINGIO_UDP_ECHO, "--port", "70000"},
                                          std::vector<std::string>{RINGIO_UDP_ECHO, "--bogus"},
                                          std::vector<std::string>{RINGIO_UDP_PING, "--port", "7"},
                                          std::vector<std::string>{RINGIO_UDP_PING, "--host", "127.0.0.1"},
                                          std::vector<std::string>{RINGIO_UDP_PING, "--host", "127.0.0.1", "--port",
                                                                   "7", "--size", "65508"},
                                          std::vector<std::string>{RINGIO_UDP_PING, "--host", "127.0.0.1", "--port",
                                                                   "7", "--count", "x"}}) {
        CAPTURE(args.back());
        child c(args);
        std::optional<int> status = c.wait(5s);
        CHECK_MESSAGE(exited_with(status, 2), describe_status(status));
        CHECK(c.stderr_text().find("usage:") != std::string::npos);
    }
}

TEST_CASE("udp_echo stops with exit status 0 within a second on SIGINT and on SIGTERM, even while busy") {
    for (int sig : {SIGINT, SIGTERM}) {
        CAPTURE(sig);
        udp_echo_process server;
        // Keep it busy: a ping with datagrams in flight while the signal arrives.
        child ping({RINGIO_UDP_PING, "--host", "127.0.0.1", "--port", std::to_string(server.port), "--count",
                    "100000", "--interval-ms", "1", "--timeout-ms", "200"});
        REQUIRE(ping.read_line(10s).has_value());  // "UDP PING ..." : it runs
        ::poll(nullptr, 0, 50);
        server.stop_with(sig);
    }
}

#endif
