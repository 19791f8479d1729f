// udp_loadgen: the UDP echo benchmark's client. One thread, one connected non-blocking UDP
// socket, a fixed window of datagrams in flight; every echo is checked.
//
//   udp_loadgen --port P [--host 127.0.0.1] [--window K] [--size B] [--seconds D]
//               [--warmup-ms W] [--server-pid PID] [--loss-timeout-ms T]
//
// It sends K datagrams of B bytes (default 64 and 64), then sends one new datagram for each echo
// that comes back, so K are always in flight (closed loop). Echoes are read with recvmmsg and the
// replacements sent with one sendmmsg per batch, so the client spends few system calls per
// datagram and the server is the bottleneck. Each datagram carries a sequence number and bytes
// derived from it; an echo of the wrong size or content counts as bad. When nothing comes back
// for T ms (default 200) the datagrams in flight count as lost and a fresh window is sent; an
// echo of an older window that arrives after that counts as late.
//
// After W ms of warm-up (default 500, not counted), the echoes received in the next D seconds
// (default 5) are counted, and with --server-pid the server's CPU time (utime + stime of
// /proc/PID/stat, every thread) is read at both ends of that window. The result is one line of
// key=value pairs on stdout:
//
//   echoes=1234567 seconds=5.000 rate=246913 lost=0 late=0 bad=0 server_cpu_s=4.98 cpu_us_per_datagram=4.03
//
// Exit status: 0, or 1 when an echo was bad, nothing came back at all, or on an error; 2 on a
// usage error.
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
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

[[noreturn]] void usage(const char* problem) {
    std::fprintf(stderr,
                 "udp_loadgen: %s\nusage: udp_loadgen --port P [--host H] [--window K] [--size B] [--seconds D] "
                 "[--warmup-ms W] [--server-pid PID] [--loss-timeout-ms T]\n",
                 problem);
    std::exit(2);
}

[[noreturn]] void die(const char* what) {
    std::fprintf(stderr, "udp_loadgen: %s: %s\n", what, std::strerror(errno));
    std::exit(1);
}

long number(const char* arg, const char* value, long lo, long hi) {
    char* end = nullptr;
    errno = 0;
    long v = std::strtol(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || v < lo || v > hi) {
        std::string msg = std::string(arg) + " wants a number from " + std::to_string(lo) + " to " + std::to_string(hi);
        usage(msg.c_str());
    }
    return v;
}

/// utime + stime of every thread of `pid`, in seconds; -1 if unreadable.
double process_cpu_seconds(long pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(f, line)) return -1;
    // The command name (field 2) may hold spaces: fields are counted after its closing ')'.
    std::istringstream rest(line.substr(line.rfind(')') + 2));
    std::string field;
    unsigned long long utime = 0, stime = 0;
    for (int i = 3; rest >> field; ++i) {
        if (i == 14) utime = std::stoull(field);
        if (i == 15) {
            stime = std::stoull(field);
            break;
        }
    }
    return double(utime + stime) / double(::sysconf(_SC_CLK_TCK));
}

struct config {
    std::string host = "127.0.0.1";
    std::string port;
    int window = 64;
    std::size_t size = 64;
    double seconds = 5;
    long warmup_ms = 500;
    long server_pid = 0;
    long loss_timeout_ms = 200;
};

// Datagram `seq`: the sequence number, then bytes derived from it.
void fill(unsigned char* p, std::size_t size, std::uint64_t seq) {
    std::memcpy(p, &seq, sizeof seq);
    for (std::size_t i = sizeof seq; i < size; ++i) p[i] = static_cast<unsigned char>((seq * 131 + i * 7) & 0xff);
}

bool intact(const unsigned char* p, std::size_t len, std::size_t size, std::uint64_t& seq) {
    if (len != size) return false;
    std::memcpy(&seq, p, sizeof seq);
    for (std::size_t i = sizeof seq; i < size; ++i)
        if (p[i] != static_cast<unsigned char>((seq * 131 + i * 7) & 0xff)) return false;
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    config c;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (i + 1 == argc) usage(("missing value for " + arg).c_str());
        const char* v = argv[++i];
        if (arg == "--host") c.host = v;
        else if (arg == "--port") c.port = std::to_string(number("--port", v, 1, 65535));
        else if (arg == "--window") c.window = static_cast<int>(number("--window", v, 1, 4096));
        else if (arg == "--size") c.size = static_cast<std::size_t>(number("--size", v, 8, 65507));
        else if (arg == "--seconds") c.seconds = double(number("--seconds", v, 1, 3600));
        else if (arg == "--warmup-ms") c.warmup_ms = number("--warmup-ms", v, 0, 600'000);
        else if (arg == "--server-pid") c.server_pid = number("--server-pid", v, 1, 1L << 30);
        else if (arg == "--loss-timeout-ms") c.loss_timeout_ms = number("--loss-timeout-ms", v, 1, 60'000);
        else usage(("unknown argument " + arg).c_str());
    }
    if (c.port.empty()) usage("--port is required");

    addrinfo hints{};
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    addrinfo* ai = nullptr;
    if (int rc = ::getaddrinfo(c.host.c_str(), c.port.c_str(), &hints, &ai); rc != 0) {
        std::fprintf(stderr, "udp_loadgen: --host wants a numeric address: %s\n", ::gai_strerror(rc));
        return 2;
    }
    int fd = ::socket(ai->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int big = 4 << 20;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
    if (::connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) die("connect");
    ::freeaddrinfo(ai);

    constexpr int batch = 64;
    const std::size_t slot = c.size;
    // Receive buffers: room for a datagram larger than expected, so a wrong size is seen.
    const std::size_t rslot = 65536;
    std::vector<unsigned char> rbuf(rslot * batch), sbuf(slot * std::size_t(c.window));
    std::vector<iovec> riov(batch), siov(std::size_t(c.window));
    std::vector<mmsghdr> rmsg(batch), smsg(std::size_t(c.window));
    for (int i = 0; i < batch; ++i) {
        riov[std::size_t(i)] = {rbuf.data() + rslot * std::size_t(i), rslot};
        rmsg[std::size_t(i)].msg_hdr.msg_iov = &riov[std::size_t(i)];
        rmsg[std::size_t(i)].msg_hdr.msg_iovlen = 1;
    }

    std::uint64_t next_seq = 0;
    std::uint64_t window_start = 0;  // echoes of datagrams before this one are late
    long in_flight = 0;
    // Sends n new datagrams (one sendmmsg call, repeated only if the kernel takes fewer).
    auto send_new = [&](int n) {
        for (int i = 0; i < n; ++i) {
            unsigned char* p = sbuf.data() + slot * std::size_t(i);
            fill(p, c.size, next_seq++);
            siov[std::size_t(i)] = {p, c.size};
            smsg[std::size_t(i)].msg_hdr = msghdr{};
            smsg[std::size_t(i)].msg_hdr.msg_iov = &siov[std::size_t(i)];
            smsg[std::size_t(i)].msg_hdr.msg_iovlen = 1;
        }
        int done = 0;
        while (done < n) {
            int r = ::sendmmsg(fd, smsg.data() + done, unsigned(n - done), 0);
            if (r < 0) {
                if (errno == EAGAIN || errno == ENOBUFS) {
                    pollfd p{fd, POLLOUT, 0};
                    ::poll(&p, 1, 10);
                    continue;
                }
                if (errno == ECONNREFUSED) die("send (is the server running?)");
                die("sendmmsg");
            }
            done += r;
        }
        in_flight += n;
    };

    unsigned long long counted = 0, lost = 0, late = 0, bad = 0;  // counted: echoes in the window
    const std::uint64_t start = now_ns();
    const std::uint64_t measure_from = start + std::uint64_t(c.warmup_ms) * 1'000'000u;
    const std::uint64_t measure_to = measure_from + std::uint64_t(c.seconds * 1e9);
    bool measuring = false;
    double cpu0 = 0, cpu1 = 0;
    std::uint64_t t0 = 0, t1 = 0;

    send_new(c.window);
    while (true) {
        std::uint64_t now = now_ns();
        if (!measuring && now >= measure_from) {
            measuring = true;
            t0 = now;
            counted = 0;
            if (c.server_pid) cpu0 = process_cpu_seconds(c.server_pid);
        }
        if (now >= measure_to) {
            t1 = now;
            if (c.server_pid) cpu1 = process_cpu_seconds(c.server_pid);
            break;
        }
        int n = ::recvmmsg(fd, rmsg.data(), batch, MSG_DONTWAIT, nullptr);
        if (n < 0) {
            if (errno == ECONNREFUSED) die("receive (is the server running?)");
            if (errno != EAGAIN && errno != EINTR) die("recvmmsg");
            pollfd p{fd, POLLIN, 0};
            int ready = ::poll(&p, 1, int(c.loss_timeout_ms));
            if (ready == 0) {  // nothing for a while: what is in flight is lost; start a new window
                lost += static_cast<unsigned long long>(in_flight);
                in_flight = 0;
                window_start = next_seq;
                send_new(c.window);
            }
            continue;
        }
        int refill = 0;
        for (int i = 0; i < n; ++i) {
            std::uint64_t seq = 0;
            if (!intact(rbuf.data() + rslot * std::size_t(i), rmsg[std::size_t(i)].msg_len, c.size, seq) ||
                seq >= next_seq) {
                ++bad;
            } else if (seq < window_start) {
                ++late;
            } else {
                ++counted;
                --in_flight;
                ++refill;
            }
        }
        if (refill > 0) send_new(refill);
    }
    ::close(fd);

    double secs = double(t1 - t0) / 1e9;
    double rate = secs > 0 ? double(counted) / secs : 0;
    std::printf("echoes=%llu seconds=%.3f rate=%.0f lost=%llu late=%llu bad=%llu", counted, secs, rate, lost, late, bad);
    if (c.server_pid) {
        double cpu = cpu1 - cpu0;
        std::printf(" server_cpu_s=%.2f cpu_us_per_datagram=%.3f", cpu, counted ? cpu * 1e6 / double(counted) : 0.0);
    }
    std::printf("\n");
    return (bad == 0 && counted > 0) ? 0 : 1;
}
