// loadgen: the echo benchmarks' load generator. One thread, one level-triggered epoll set,
// non-blocking sockets; it checks every echoed byte and stops by itself.
//
//   loadgen --port P [--host 127.0.0.1] [--mode pingpong|idle] [--conns N] [--size BYTES]
//           [--pipeline K] [--duration S] [--warmup S] [--rounds R] [--window W] [--sources K]
//           [--server-pid PID] [--hold S] [--timeout S] [--stall S]
//
// Both modes start by opening the N connections, at most W at a time: each new connection
// sends one message and waits for its echo before it counts as open, so the server's accept
// queue never holds more than W connections (the servers listen with a backlog of 100).
// With more connections than one source address has ephemeral ports, connections are spread
// over the source addresses 127.0.0.1 .. 127.0.0.K (IP_BIND_ADDRESS_NO_PORT; K is chosen from
// the ephemeral port range unless given). RLIMIT_NOFILE is raised as far as allowed.
//
// pingpong: every connection then does closed-loop round trips: send one message of --size
//   bytes, read the whole echo, compare every byte, send the next. After --warmup seconds,
//   the round trips completed in the next --duration seconds are counted, their latencies
//   (send of the first byte to receipt of the last) go into a log-linear histogram (1/64
//   octave buckets, at most 1.6% error), and the server's CPU time (utime + stime from
//   /proc/PID/stat) is read at both ends of that window. Then the messages in flight are
//   finished (and checked) and the connections closed. --rounds R instead makes every
//   connection do exactly R round trips, all of them measured. --pipeline K keeps K messages in
//   flight on every connection instead of one: as each echo completes the next message goes out,
//   and the messages waiting to go are written together (one sendmsg), as a pipelining client
//   (HTTP/1.1, Redis) would. The echo is still checked byte by byte, in order; a message's
//   latency runs from its own send to its own echo.
// idle: after opening, the connections are held for --hold seconds, the server's VmRSS is
//   read (and compared with its VmRSS before the first connect), then every connection does
//   one more round trip (at most 1000 at a time) to show it still works.
//
// Messages differ per connection and per round trip (a window into a pseudo-random pattern),
// so bytes echoed on the wrong connection, twice or out of order are caught. Errors are
// counted by kind; the result is one JSON object on stdout; progress and problems go to
// stderr. The exit status is 0 when every connection did what it should, 1 otherwise.
// --timeout bounds the whole run: whatever is unfinished then counts as a timeout error. When
// no connection finishes opening for --stall seconds (default 10), opening stops there; a
// pingpong run then measures nothing (it would not be the load asked for).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::uint64_t now_ns() {
    timespec ts;
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::uint64_t(ts.tv_sec) * 1'000'000'000u + std::uint64_t(ts.tv_nsec);
}

double cpu_seconds_self() {
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return double(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + double(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// ---- the server process, through /proc ----

struct proc_stat {
    bool ok = false;
    char state = '?';
    double cpu_s = 0;  // utime + stime of every thread, living or gone
};

proc_stat read_stat(int pid) {
    proc_stat st;
    if (pid <= 0) return st;
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    auto rp = s.rfind(')');
    if (rp == std::string::npos) return st;
    std::istringstream in(s.substr(rp + 2));
    // Fields from 3 on: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    // cmajflt utime stime ...
    std::string field;
    in >> st.state;
    for (int i = 4; i <= 13; ++i) in >> field;
    unsigned long long utime = 0, stime = 0;
    in >> utime >> stime;
    st.cpu_s = double(utime + stime) / double(::sysconf(_SC_CLK_TCK));
    st.ok = bool(in);
    return st;
}

long read_rss_kib(int pid) {
    if (pid <= 0) return -1;
    std::ifstream f("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
    return -1;
}

bool server_alive(int pid) {
    if (pid <= 0) return true;
    proc_stat st = read_stat(pid);
    return st.ok && st.state != 'Z' && st.state != 'X';
}

// ---- latency histogram: 64 linear sub-buckets per power of two ----

class histogram {
public:
    void add(std::uint64_t v) {
        ++counts_[index(v)];
        ++total_;
        max_ = std::max(max_, v);
    }
    void clear() {
        std::fill(counts_.begin(), counts_.end(), 0);
        total_ = 0;
        max_ = 0;
    }
    [[nodiscard]] std::uint64_t total() const { return total_; }
    [[nodiscard]] std::uint64_t max() const { return max_; }
    /// The value at quantile q (0..1): the middle of the bucket holding it.
    [[nodiscard]] double quantile(double q) const {
        if (total_ == 0) return 0;
        auto rank = std::uint64_t(std::ceil(q * double(total_)));
        if (rank == 0) rank = 1;
        std::uint64_t seen = 0;
        for (std::size_t i = 0; i < counts_.size(); ++i) {
            seen += counts_[i];
            if (seen >= rank) return std::min(middle(i), double(max_));
        }
        return double(max_);
    }

private:
    static constexpr int sub_bits = 6;
    static constexpr std::size_t n = (64 - sub_bits + 1) << sub_bits;
    static std::size_t index(std::uint64_t v) {
        if (v < (1u << sub_bits)) return std::size_t(v);
        int e = 63 - __builtin_clzll(v);  // >= sub_bits
        std::uint64_t sub = (v >> (e - sub_bits)) & ((1u << sub_bits) - 1);
        return (std::size_t(e - sub_bits + 1) << sub_bits) + std::size_t(sub);
    }
    static double middle(std::size_t i) {
        if (i < (1u << sub_bits)) return double(i);
        int e = int(i >> sub_bits) + sub_bits - 1;
        std::uint64_t sub = i & ((1u << sub_bits) - 1);
        double lo = std::ldexp(double((1u << sub_bits) + sub), e - sub_bits);
        return lo + std::ldexp(1.0, e - sub_bits) / 2;
    }
    std::vector<std::uint64_t> counts_ = std::vector<std::uint64_t>(n);
    std::uint64_t total_ = 0;
    std::uint64_t max_ = 0;
};

// ---- options ----

constexpr int max_pipeline = 64;

struct options {
    std::string host = "127.0.0.1";
    int port = 0;
    bool idle = false;
    int conns = 1;
    std::size_t size = 64;
    int pipeline = 1;
    double duration = 3;
    double warmup = 0.5;
    long rounds = 0;
    int window = 32;
    int sources = 0;
    int server_pid = 0;
    double hold = 1;
    double timeout = 60;
    double stall = 10;
};

[[noreturn]] void usage(const char* problem) {
    std::fprintf(stderr,
                 "loadgen: %s\nusage: loadgen --port P [--host IPV4] [--mode pingpong|idle] [--conns N] "
                 "[--size BYTES] [--pipeline K] [--duration S] [--warmup S] [--rounds R] [--window W] [--sources K] "
                 "[--server-pid PID] [--hold S] [--timeout S] [--stall S]\n",
                 problem);
    std::exit(2);
}

options parse(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (i + 1 >= argc) usage(("missing value for " + a).c_str());
        std::string v = argv[++i];
        if (a == "--host") o.host = v;
        else if (a == "--port") o.port = std::atoi(v.c_str());
        else if (a == "--mode") {
            if (v != "pingpong" && v != "idle") usage("--mode is pingpong or idle");
            o.idle = v == "idle";
        } else if (a == "--conns") o.conns = std::atoi(v.c_str());
        else if (a == "--size") o.size = std::size_t(std::atol(v.c_str()));
        else if (a == "--pipeline") o.pipeline = std::atoi(v.c_str());
        else if (a == "--duration") o.duration = std::atof(v.c_str());
        else if (a == "--warmup") o.warmup = std::atof(v.c_str());
        else if (a == "--rounds") o.rounds = std::atol(v.c_str());
        else if (a == "--window") o.window = std::atoi(v.c_str());
        else if (a == "--sources") o.sources = std::atoi(v.c_str());
        else if (a == "--server-pid") o.server_pid = std::atoi(v.c_str());
        else if (a == "--hold") o.hold = std::atof(v.c_str());
        else if (a == "--timeout") o.timeout = std::atof(v.c_str());
        else if (a == "--stall") o.stall = std::atof(v.c_str());
        else usage(("unknown option " + a).c_str());
    }
    if (o.port <= 0 || o.port > 65535) usage("--port is required");
    if (o.conns < 1 || o.size < 1 || o.window < 1) usage("--conns, --size and --window must be positive");
    if (o.pipeline < 1 || o.pipeline > max_pipeline) usage("--pipeline is from 1 to 64");
    return o;
}

// ---- the run ----

enum class phase { open, run, drain, hold, verify, done };
enum class cstate : std::uint8_t { unused, connecting, busy, parked, dead };

struct connection {
    int fd = -1;
    cstate state = cstate::unused;
    bool want_out = false;      // EPOLLOUT is on (connect pending or a short send)
    std::uint32_t seq = 0;      // round trips completed (messages whose echo came back whole)
    std::uint32_t rcvd = 0;     // bytes of message `seq` received back
    std::uint32_t sseq = 0;     // messages sent whole
    std::uint32_t sent = 0;     // bytes of message `sseq` sent (0: not begun)
    std::uint32_t limit = 0;    // messages this connection may begin in the current phase
    std::uint64_t t0 = 0;       // when the connect started
    [[nodiscard]] std::uint32_t begun() const { return sseq + (sent > 0 ? 1 : 0); }
    [[nodiscard]] std::uint32_t in_flight() const { return begun() - seq; }
};

struct errors {
    long connect = 0;   // socket(), connect() failed or was refused
    long eof = 0;       // the server closed a connection
    long reset = 0;     // read/send failed (ECONNRESET, EPIPE, ...)
    long mismatch = 0;  // an echoed byte differed from the one sent, or came unasked
    long timeout = 0;   // unfinished when its deadline passed
    [[nodiscard]] long total() const { return connect + eof + reset + mismatch + timeout; }
};

class loadgen {
public:
    explicit loadgen(options o) : o_(std::move(o)) {
        // A pseudo-random pattern; message k of connection c is pattern[offset(c, k) ...].
        pattern_.resize(o_.size + 256);
        std::uint64_t x = 0x9e3779b97f4a7c15u;
        for (auto& b : pattern_) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b = static_cast<unsigned char>(x >> 24);
        }
        scratch_.resize(std::min<std::size_t>(o_.size * std::size_t(o_.pipeline), 1 << 16));
        conns_.resize(std::size_t(o_.conns));
        sent_at_.resize(std::size_t(o_.conns) * std::size_t(o_.pipeline));
        if (::inet_pton(AF_INET, o_.host.c_str(), &server_.sin_addr) != 1) usage("--host wants an IPv4 address");
        server_.sin_family = AF_INET;
        server_.sin_port = htons(std::uint16_t(o_.port));
        epfd_ = ::epoll_create1(EPOLL_CLOEXEC);
        if (o_.sources <= 0) {
            // Ports per source address: the ephemeral range, less some slack for other users.
            int lo = 32768, hi = 60999;
            if (FILE* f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
                if (std::fscanf(f, "%d %d", &lo, &hi) != 2) lo = 32768, hi = 60999;
                std::fclose(f);
            }
            int per = std::max(1000, (hi - lo + 1) * 9 / 10);
            o_.sources = (o_.conns + per - 1) / per;
        }
        o_.sources = std::clamp(o_.sources, 1, 250);
    }

    int run() {
        start_ns_ = progress_ns_ = now_ns();
        deadline_ns_ = start_ns_ + std::uint64_t(o_.timeout * 1e9);
        rss_base_kib_ = read_rss_kib(o_.server_pid);
        enter(phase::open);
        std::vector<epoll_event> evs(1024);
        std::uint64_t next_check = 0;
        while (phase_ != phase::done) {
            std::uint64_t now = now_ns();
            if (now >= next_check) {
                periodic(now);
                next_check = now + 100'000'000;
                if (phase_ == phase::done) break;
            }
            std::uint64_t wake = std::min(next_check, phase_end_ns_);
            if (phase_ == phase::run && !recording_) wake = std::min(wake, warm_end_ns_);
            int timeout_ms = wake > now ? int((wake - now + 999'999) / 1'000'000) : 0;
            int n = ::epoll_wait(epfd_, evs.data(), int(evs.size()), timeout_ms);
            if (n < 0 && errno != EINTR) {
                std::perror("epoll_wait");
                return 2;
            }
            for (int i = 0; i < n; ++i) on_event(evs[std::size_t(i)]);
            now = now_ns();
            if (phase_ == phase::run && !recording_ && o_.rounds == 0 && now >= warm_end_ns_) begin_window(now);
            if (phase_ == phase::open) start_more();
            if (phase_ == phase::verify) verify_more();
            if (now >= phase_end_ns_ || phase_done()) next_phase(now);
        }
        report();
        for (auto& c : conns_)
            if (c.fd >= 0) ::close(c.fd);
        return errs_.total() == 0 && opened_ == o_.conns && (!o_.idle || verified_ == o_.conns) ? 0 : 1;
    }

private:
    // ---- phases ----

    void enter(phase p) {
        phase_ = p;
        std::uint64_t now = now_ns();
        switch (p) {
        case phase::open:
            phase_end_ns_ = deadline_ns_;
            start_more();
            break;
        case phase::run:
            open_s_ = double(now - start_ns_) / 1e9;
            std::fprintf(stderr, "loadgen: %d connections open in %.2f s\n", opened_, open_s_);
            if (o_.rounds > 0) {
                begin_window(now);
                phase_end_ns_ = deadline_ns_;
            } else {
                warm_end_ns_ = now + std::uint64_t(o_.warmup * 1e9);
                phase_end_ns_ = std::min(deadline_ns_, warm_end_ns_ + std::uint64_t(o_.duration * 1e9));
                if (o_.warmup <= 0) begin_window(now);
            }
            for (std::size_t i = 0; i < conns_.size(); ++i)
                if (conns_[i].state == cstate::parked)  // seq counts the opening trip too
                    start(i, now, o_.rounds > 0 ? std::uint32_t(o_.rounds) + 1 : UINT32_MAX);
            break;
        case phase::drain:
            // No new messages; those in flight (and one half sent) are finished and checked.
            for (std::size_t i = 0; i < conns_.size(); ++i) {
                connection& c = conns_[i];
                if (c.state != cstate::busy) continue;
                c.limit = c.begun();
                if (c.in_flight() == 0) park(i);
            }
            end_window(now);
            phase_end_ns_ = std::min(deadline_ns_, now + 5'000'000'000u);
            break;
        case phase::hold:
            open_s_ = double(now - start_ns_) / 1e9;
            std::fprintf(stderr, "loadgen: %d connections open in %.2f s; holding %.1f s\n", opened_, open_s_, o_.hold);
            phase_end_ns_ = std::min(deadline_ns_, now + std::uint64_t(o_.hold * 1e9));
            break;
        case phase::verify:
            rss_kib_ = read_rss_kib(o_.server_pid);
            phase_end_ns_ = deadline_ns_;
            next_verify_ = 0;
            verify_more();
            break;
        case phase::done:
            break;
        }
    }

    bool phase_done() const {
        switch (phase_) {
        case phase::open: return started_ == o_.conns && pending_ == 0;
        case phase::run: return o_.rounds > 0 && busy_ == 0;
        case phase::drain: return busy_ == 0;
        case phase::verify: return next_verify_ == conns_.size() && busy_ == 0;
        default: return false;
        }
    }

    void next_phase(std::uint64_t now) {
        if (now >= deadline_ns_ && phase_ != phase::run) {
            timed_out_ = phase_ != phase::drain || busy_ > 0;
            expire_unfinished();
            if (phase_ == phase::run && recording_) end_window(now);
            enter(phase::done);
            return;
        }
        switch (phase_) {
        case phase::open:
            if (now >= phase_end_ns_) expire_unfinished();
            // A load test with fewer connections than asked for would measure something else.
            enter(opened_ < o_.conns && !o_.idle ? phase::done : opened_ == 0 ? phase::done
                  : o_.idle ? phase::hold : phase::run);
            break;
        case phase::run:
            if (o_.rounds > 0) {
                if (busy_ > 0) timed_out_ = true;
                expire_unfinished();
                end_window(now);
                enter(phase::done);
            } else if (now >= phase_end_ns_) {
                enter(phase::drain);
            }
            break;
        case phase::drain:
            if (busy_ > 0) expire_unfinished();
            enter(phase::done);
            break;
        case phase::hold: enter(phase::verify); break;
        case phase::verify:
            if (busy_ > 0 || next_verify_ < conns_.size()) timed_out_ = true;
            expire_unfinished();
            enter(phase::done);
            break;
        case phase::done: break;
        }
    }

    // Every 100 ms: is the server still there? Is opening connections still making progress?
    void periodic(std::uint64_t now) {
        if (phase_ == phase::open) {
            if (opened_ != opened_seen_) {
                opened_seen_ = opened_;
                progress_ns_ = now;
            } else if (now - progress_ns_ > std::uint64_t(o_.stall * 1e9)) {
                std::fprintf(stderr, "loadgen: no connection opened for %.0f s: giving up at %d of %d\n", o_.stall,
                             opened_, o_.conns);
                timed_out_ = true;
                phase_end_ns_ = now;  // next_phase() expires the rest
            }
        }
        if (!server_alive(o_.server_pid)) {
            std::fprintf(stderr, "loadgen: the server (pid %d) has exited\n", o_.server_pid);
            server_exited_ = true;
            if (recording_) end_window(now);
            expire_unfinished();
            enter(phase::done);
        }
    }

    void begin_window(std::uint64_t now) {
        recording_ = true;
        window_start_ns_ = now;
        hist_.clear();
        round_trips_ = 0;
        server_cpu0_ = read_stat(o_.server_pid).cpu_s;
        client_cpu0_ = cpu_seconds_self();
    }

    void end_window(std::uint64_t now) {
        if (!recording_) return;
        recording_ = false;
        window_s_ = double(now - window_start_ns_) / 1e9;
        server_cpu_s_ = read_stat(o_.server_pid).cpu_s - server_cpu0_;
        client_cpu_s_ = cpu_seconds_self() - client_cpu0_;
        rss_kib_ = read_rss_kib(o_.server_pid);
    }

    // Unfinished connections at a deadline count as timeouts.
    void expire_unfinished() {
        for (std::size_t i = 0; i < conns_.size(); ++i) {
            cstate s = conns_[i].state;
            if (s == cstate::connecting || s == cstate::busy) {
                ++errs_.timeout;
                kill(i);
            }
        }
        started_ = o_.conns;
    }

    // ---- opening connections ----

    void start_more() {
        while (pending_ < o_.window && started_ < o_.conns) open_one(std::size_t(started_++));
    }

    void open_one(std::size_t i) {
        connection& c = conns_[i];
        c.t0 = now_ns();
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            note_error("socket", errno);
            ++errs_.connect;
            c.state = cstate::dead;
            return;
        }
        int one = 1;
        ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (o_.sources > 1) {
            ::setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            sockaddr_in src{};
            src.sin_family = AF_INET;
            src.sin_addr.s_addr = htonl(0x7f000001u + std::uint32_t(i % std::size_t(o_.sources)));
            if (::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof src) < 0) {
                note_error("bind", errno);
                ::close(fd);
                ++errs_.connect;
                c.state = cstate::dead;
                return;
            }
        }
        c.fd = fd;
        ++pending_;
        int r = ::connect(fd, reinterpret_cast<const sockaddr*>(&server_), sizeof server_);
        if (r < 0 && errno != EINPROGRESS) {
            note_error("connect", errno);
            ++errs_.connect;
            kill(i);
            return;
        }
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLOUT;
        ev.data.u64 = i;
        ::epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
        c.want_out = true;
        c.state = cstate::connecting;
    }

    // ---- messages ----

    [[nodiscard]] const unsigned char* message(std::size_t i, std::uint32_t seq) const {
        return pattern_.data() + ((i * 17 + std::size_t(seq) * 29) & 255);
    }

    void set_out(std::size_t i, bool on) {
        connection& c = conns_[i];
        if (c.want_out == on) return;
        c.want_out = on;
        epoll_event ev{};
        ev.events = EPOLLIN | (on ? EPOLLOUT : 0u);
        ev.data.u64 = i;
        ::epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
    }

    // Lets connection i begin messages up to number `limit` (in total), at most --pipeline at a
    // time, and sends what it may.
    void start(std::size_t i, std::uint64_t now, std::uint32_t limit) {
        connection& c = conns_[i];
        if (c.state != cstate::busy) ++busy_;
        c.state = cstate::busy;
        c.limit = limit;
        pump(i, now);
    }

    std::uint64_t& sent_at(std::size_t i, std::uint32_t seq) {
        return sent_at_[i * std::size_t(o_.pipeline) + seq % std::uint32_t(o_.pipeline)];
    }

    // Sends the rest of the message begun and every further one allowed, together: one
    // sendmsg of up to --pipeline messages (each a window into the pattern).
    void pump(std::size_t i, std::uint64_t now) {
        connection& c = conns_[i];
        const auto depth = std::uint32_t(o_.pipeline);
        while (true) {
            iovec iov[max_pipeline];
            int n = 0;
            std::uint32_t m = c.sseq;
            std::uint32_t off = c.sent;
            while (n < max_pipeline && m < c.limit && m - c.seq < depth) {
                if (off == 0 && m >= c.begun()) sent_at(i, m) = now;  // this message begins now
                iov[n].iov_base = const_cast<unsigned char*>(message(i, m)) + off;
                iov[n].iov_len = o_.size - off;
                ++n;
                ++m;
                off = 0;
            }
            if (n == 0) break;
            msghdr mh{};
            mh.msg_iov = iov;
            mh.msg_iovlen = std::size_t(n);
            ssize_t w = ::sendmsg(c.fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w < 0 && errno == EINTR) continue;
            if (w < 0 && errno == EAGAIN) {
                set_out(i, true);
                return;
            }
            if (w <= 0) {
                note_error("send", w < 0 ? errno : EPIPE);
                ++errs_.reset;
                kill(i);
                return;
            }
            auto left = std::size_t(w);  // account the bytes message by message
            while (left > 0) {
                std::size_t part = std::min<std::size_t>(left, o_.size - c.sent);
                c.sent += std::uint32_t(part);
                left -= part;
                if (c.sent == o_.size) {
                    ++c.sseq;
                    c.sent = 0;
                }
            }
        }
        set_out(i, false);
    }

    void on_event(const epoll_event& ev) {
        std::size_t i = ev.data.u64;
        connection& c = conns_[i];
        if (c.state == cstate::connecting) {
            if (!(ev.events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
            int err = 0;
            socklen_t len = sizeof err;
            ::getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err != 0) {
                note_error("connect", err);
                ++errs_.connect;
                kill(i);
                return;
            }
            c.state = cstate::parked;  // start() makes it busy
            // One message to open; its round trip includes the handshake.
            start(i, c.t0, c.seq + 1);
            return;
        }
        if (c.state == cstate::busy && (ev.events & EPOLLOUT)) pump(i, now_ns());
        if (c.state == cstate::busy && (ev.events & (EPOLLIN | EPOLLERR | EPOLLHUP))) on_readable(i);
        else if (c.state == cstate::parked && (ev.events & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
            // Nothing is owed to a parked connection: this is EOF, an error or stray bytes.
            ssize_t r = ::read(c.fd, scratch_.data(), scratch_.size());
            if (r > 0) {
                note_error("unexpected bytes", 0);
                ++errs_.mismatch;
            } else if (r == 0) {
                note_error("server closed an idle connection", 0);
                ++errs_.eof;
            } else if (errno == EAGAIN || errno == EINTR) {
                return;
            } else {
                note_error("read", errno);
                ++errs_.reset;
            }
            kill(i);
        }
    }

    void on_readable(std::size_t i) {
        connection& c = conns_[i];
        ssize_t r = ::read(c.fd, scratch_.data(), scratch_.size());
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            note_error("read", errno);
            ++errs_.reset;
            kill(i);
            return;
        }
        if (r == 0) {
            note_error("server closed a connection before echoing", 0);
            ++errs_.eof;
            kill(i);
            return;
        }
        auto n = std::size_t(r);
        std::uint64_t sent_bytes = std::uint64_t(c.sseq) * o_.size + c.sent;
        std::uint64_t rcvd_bytes = std::uint64_t(c.seq) * o_.size + c.rcvd;
        if (rcvd_bytes + n > sent_bytes) {
            note_error("more bytes came back than were sent", 0);
            ++errs_.mismatch;
            kill(i);
            return;
        }
        std::uint64_t now = 0;
        // The bytes may end one message and begin the next (pipelining): check them in order.
        for (std::size_t off = 0; off < n;) {
            std::size_t part = std::min<std::size_t>(n - off, o_.size - c.rcvd);
            if (std::memcmp(scratch_.data() + off, message(i, c.seq) + c.rcvd, part) != 0) {
                note_error("echoed bytes differ from those sent", 0);
                ++errs_.mismatch;
                kill(i);
                return;
            }
            off += part;
            c.rcvd += std::uint32_t(part);
            if (c.rcvd < o_.size) break;
            // A round trip is complete.
            if (now == 0) now = now_ns();
            if (recording_) {
                hist_.add(now - sent_at(i, c.seq));
                ++round_trips_;
            }
            ++c.seq;
            c.rcvd = 0;
        }
        if (now == 0) return;  // no message completed
        if (c.seq < c.limit) {
            pump(i, now);  // the next messages go out as the echoes come back
            if (c.in_flight() > 0) return;
        }
        // Every message allowed in this phase is back.
        switch (phase_) {
        case phase::open:
            park(i);
            --pending_;
            ++opened_;
            break;
        case phase::verify:
            park(i);
            ++verified_;
            break;
        default:  // run (with --rounds) and drain
            park(i);
            break;
        }
    }

    void park(std::size_t i) {
        connection& c = conns_[i];
        if (c.state == cstate::busy) --busy_;
        c.state = cstate::parked;
        set_out(i, false);
    }

    void verify_more() {
        while (busy_ < 1000 && next_verify_ < conns_.size()) {
            std::size_t i = next_verify_++;
            if (conns_[i].state == cstate::parked) start(i, now_ns(), conns_[i].seq + 1);
        }
    }

    void kill(std::size_t i) {
        connection& c = conns_[i];
        if (c.state == cstate::busy) --busy_;
        if (phase_ == phase::open && (c.state == cstate::connecting || c.state == cstate::busy || c.state == cstate::unused))
            --pending_;
        if (c.fd >= 0) ::close(c.fd);  // also removes it from the epoll set
        c.fd = -1;
        c.state = cstate::dead;
    }

    void note_error(const char* what, int err) {
        if (++logged_ > 5) return;
        if (err) std::fprintf(stderr, "loadgen: %s: %s\n", what, std::strerror(err));
        else std::fprintf(stderr, "loadgen: %s\n", what);
        if (logged_ == 5) std::fprintf(stderr, "loadgen: (further errors are only counted)\n");
    }

    void report() {
        int alive = 0;
        for (auto& c : conns_) alive += c.state == cstate::parked;
        double rps = window_s_ > 0 ? double(round_trips_) / window_s_ : 0;
        std::printf("{\"mode\": \"%s\", \"conns\": %d, \"size\": %zu, \"pipeline\": %d, \"sources\": %d, "
                    "\"opened\": %d, \"open_s\": %.3f, \"alive_at_end\": %d, ",
                    o_.idle ? "idle" : "pingpong", o_.conns, o_.size, o_.pipeline, o_.sources, opened_, open_s_, alive);
        if (o_.idle) {
            std::printf("\"rss_base_kib\": %ld, \"rss_kib\": %ld, \"verified\": %d, ", rss_base_kib_, rss_kib_,
                        verified_);
        } else {
            std::printf("\"window_s\": %.4f, \"round_trips\": %llu, \"rps\": %.1f, \"p50_us\": %.2f, "
                        "\"p90_us\": %.2f, \"p99_us\": %.2f, \"p999_us\": %.2f, \"max_us\": %.2f, "
                        "\"server_cpu_s\": %.3f, \"client_cpu_s\": %.3f, \"server_cpu_us_per_rt\": %.4f, "
                        "\"rss_base_kib\": %ld, \"rss_kib\": %ld, ",
                        window_s_, static_cast<unsigned long long>(round_trips_), rps, hist_.quantile(0.5) / 1e3,
                        hist_.quantile(0.9) / 1e3, hist_.quantile(0.99) / 1e3, hist_.quantile(0.999) / 1e3,
                        double(hist_.max()) / 1e3, server_cpu_s_, client_cpu_s_,
                        round_trips_ ? server_cpu_s_ * 1e6 / double(round_trips_) : 0.0, rss_base_kib_, rss_kib_);
        }
        std::printf("\"errors\": {\"connect\": %ld, \"eof\": %ld, \"reset\": %ld, \"mismatch\": %ld, "
                    "\"timeout\": %ld}, \"error_total\": %ld, \"timed_out\": %s, \"server_exited\": %s}\n",
                    errs_.connect, errs_.eof, errs_.reset, errs_.mismatch, errs_.timeout, errs_.total(),
                    timed_out_ ? "true" : "false", server_exited_ ? "true" : "false");
        std::fflush(stdout);
    }

    options o_;
    sockaddr_in server_{};
    int epfd_ = -1;
    std::vector<unsigned char> pattern_;
    std::vector<unsigned char> scratch_;
    std::vector<std::uint64_t> sent_at_;  // when each message in flight began, --pipeline per connection
    std::vector<connection> conns_;
    histogram hist_;
    errors errs_;
    int logged_ = 0;

    phase phase_ = phase::open;
    std::uint64_t start_ns_ = 0, deadline_ns_ = 0, phase_end_ns_ = 0, warm_end_ns_ = 0, window_start_ns_ = 0;
    int started_ = 0, pending_ = 0, opened_ = 0, opened_seen_ = 0, verified_ = 0;
    std::uint64_t progress_ns_ = 0;
    long busy_ = 0;
    std::size_t next_verify_ = 0;
    bool recording_ = false, timed_out_ = false, server_exited_ = false;
    std::uint64_t round_trips_ = 0;
    double open_s_ = 0, window_s_ = 0, server_cpu0_ = 0, client_cpu0_ = 0, server_cpu_s_ = 0, client_cpu_s_ = 0;
    long rss_base_kib_ = -1, rss_kib_ = -1;
};

void raise_nofile(rlim_t want) {
    rlimit rl{};
    ::getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur >= want) return;
    rlimit up{want, std::max(want, rl.rlim_max)};
    if (::setrlimit(RLIMIT_NOFILE, &up) == 0) return;  // root may raise the hard limit too
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
    std::fprintf(stderr, "loadgen: RLIMIT_NOFILE is %llu, fewer than the %llu wanted\n",
                 static_cast<unsigned long long>(rl.rlim_max), static_cast<unsigned long long>(want));
}

}  // namespace

int main(int argc, char** argv) {
    options o = parse(argc, argv);
    ::signal(SIGPIPE, SIG_IGN);
    raise_nofile(rlim_t(o.conns) + 64);
    loadgen g(o);
    return g.run();
}
