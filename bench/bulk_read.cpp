// bench_bulk_read: how fast one connection streams through a stream_reader into 1 MiB buffers,
// with the loop's shared receive buffers and without them (stream_buffers = 0), against a raw
// liburing receive loop.
//
//   bench_bulk_read [GIB] [ROUNDS]      (defaults: 1 GiB, 5 rounds)
//
// One loopback TCP connection per measurement; a thread sends GIB through it with blocking
// send(2) from a 1 MiB buffer. The receiver (pinned nowhere; pin the process with taskset) is:
//   ring read_some       read_some(1 MiB span), the default loop (shared receive buffers)
//   ring read_exactly    read_exactly(1 MiB span), the same loop
//   no-ring read_some    read_some, loop_options{.stream_buffers = 0}
//   no-ring read_exactly read_exactly, the same
//   raw liburing         IORING_OP_RECV into a 1 MiB buffer, one at a time
// The rounds are interleaved (every receiver once, then again). Prints GB/s per receiver as
// the median [min-max] of the rounds, and each ringio receiver's ratio to the no-ring
// read_some median. The receiver checks the byte count; the sender's pattern is not checked
// here (tests/net_buffers.cpp checks the bytes).
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ringio/ringio.hpp>
#include <ringio/stream.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr std::size_t chunk = 1 << 20;

[[noreturn]] void die(const char* what) {
    std::perror(what);
    std::exit(1);
}

// A connected pair on 127.0.0.1: {receiving end, sending end}.
std::pair<int, int> connected_pair() {
    int lst = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (lst < 0 || ::bind(lst, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(lst, 1) != 0 ||
        ::getsockname(lst, reinterpret_cast<sockaddr*>(&a), &len) != 0)
        die("listen");
    int out = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (out < 0 || ::connect(out, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) die("connect");
    int in = ::accept4(lst, nullptr, nullptr, SOCK_CLOEXEC);
    if (in < 0) die("accept");
    ::close(lst);
    return {in, out};
}

void send_all(int fd, std::size_t total) {
    std::vector<char> b(chunk, 'x');
    for (std::size_t sent = 0; sent < total;) {
        ssize_t n = ::send(fd, b.data(), std::min(b.size(), total - sent), MSG_NOSIGNAL);
        if (n <= 0) die("send");
        sent += static_cast<std::size_t>(n);
    }
    ::close(fd);
}

enum class how { ring_some, ring_exactly, plain_some, plain_exactly, raw };
const char* name(how h) {
    switch (h) {
    case how::ring_some: return "ring read_some";
    case how::ring_exactly: return "ring read_exactly";
    case how::plain_some: return "no-ring read_some";
    case how::plain_exactly: return "no-ring read_exactly";
    case how::raw: return "raw liburing";
    }
    return "";
}

ringio::task<std::size_t> read_stream(int fd, bool exactly, std::size_t total) {
    auto [r, w] = ringio::make_streams(ringio::socket(fd));
    std::vector<std::byte> buf(chunk);
    std::size_t got = 0;
    while (got < total) {
        if (exactly) {
            auto part = std::span(buf).first(std::min(chunk, total - got));
            co_await r.read_exactly(part);
            got += part.size();
        } else {
            std::size_t n = co_await r.read_some(buf);
            if (n == 0) break;
            got += n;
        }
    }
    w.close();
    co_await w.wait_closed();
    co_return got;
}

std::size_t read_raw(int fd, std::size_t total) {
    io_uring ring;
    if (io_uring_queue_init(8, &ring, 0) < 0) die("io_uring_queue_init");
    std::vector<char> buf(chunk);
    std::size_t got = 0;
    while (got < total) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring);
        io_uring_prep_recv(sqe, fd, buf.data(), buf.size(), 0);
        io_uring_submit_and_wait(&ring, 1);
        io_uring_cqe* cqe;
        if (io_uring_wait_cqe(&ring, &cqe) < 0) die("io_uring_wait_cqe");
        int res = cqe->res;
        io_uring_cqe_seen(&ring, cqe);
        if (res <= 0) break;
        got += static_cast<std::size_t>(res);
    }
    io_uring_queue_exit(&ring);
    ::close(fd);
    return got;
}

double run(how h, std::size_t total) {
    auto [in, out] = connected_pair();
    std::thread sender(send_all, out, total);
    auto t0 = std::chrono::steady_clock::now();
    std::size_t got;
    if (h == how::raw) {
        got = read_raw(in, total);
    } else {
        ringio::loop_options o;
        if (h == how::plain_some || h == how::plain_exactly) o.stream_buffers = 0;
        ringio::event_loop loop(o);
        got = loop.run_until_complete(read_stream(in, h == how::ring_exactly || h == how::plain_exactly, total));
    }
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sender.join();
    if (got != total) {
        std::fprintf(stderr, "%s: received %zu of %zu bytes\n", name(h), got, total);
        std::exit(1);
    }
    return static_cast<double>(total) / s / 1e9;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
    const double gib = argc > 1 ? std::atof(argv[1]) : 1.0;
    const int rounds = argc > 2 ? std::atoi(argv[2]) : 5;
    if (gib <= 0 || rounds <= 0) {
        std::fprintf(stderr, "usage: bench_bulk_read [GIB] [ROUNDS]\n");
        return 2;
    }
    const auto total = static_cast<std::size_t>(gib * static_cast<double>(std::size_t{1} << 30));
    const how all[] = {how::ring_some, how::ring_exactly, how::plain_some, how::plain_exactly, how::raw};
    std::vector<std::vector<double>> gbps(std::size(all));
    for (int r = 0; r < rounds; ++r)
        for (std::size_t i = 0; i < std::size(all); ++i) gbps[i].push_back(run(all[i], total));
    const double base = median(gbps[2]);
    std::printf("%.2f GiB through one loopback connection into 1 MiB buffers, %d interleaved rounds\n", gib, rounds);
    for (std::size_t i = 0; i < std::size(all); ++i) {
        auto [lo, hi] = std::minmax_element(gbps[i].begin(), gbps[i].end());
        std::printf("%-22s %5.2f GB/s [%.2f-%.2f]  %.2fx no-ring read_some\n", name(all[i]), median(gbps[i]), *lo, *hi,
                    median(gbps[i]) / base);
    }
}
