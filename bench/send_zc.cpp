// bench_send_zc: does IORING_OP_SEND_ZC beat IORING_OP_SEND for large writes here?
//
//   bench_send_zc [CHUNK_BYTES...]      (default: 65536 1048576)
//
// One loopback TCP connection; a thread drains the receiving end with read(2). The sender
// pushes 4 GiB through io_uring in CHUNK_BYTES sends, one at a time, first with SEND, then with
// SEND_ZC (which completes twice: the result, then a notification once the buffer may be
// reused), three rounds each, interleaved. Prints GB/s and the sender's CPU seconds.
#include <liburing.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <thread>
#include <vector>

namespace {

constexpr std::size_t total = std::size_t{4} << 30;

struct result {
    double gbps;
    double cpu_s;
};

result run(bool zc, std::size_t chunk) {
    int lst = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (lst < 0 || ::bind(lst, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(lst, 1) != 0 ||
        ::getsockname(lst, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
        std::perror("listen");
        std::exit(1);
    }
    int out = ::socket(AF_INET, SOCK_STREAM, 0);
    if (::connect(out, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        std::perror("connect");
        std::exit(1);
    }
    int in = ::accept(lst, nullptr, nullptr);
    std::thread drain([in] {
        std::vector<char> b(1 << 20);
        while (::read(in, b.data(), b.size()) > 0) {
        }
    });

    io_uring ring;
    if (int rc = io_uring_queue_init(64, &ring, 0); rc < 0) {
        std::fprintf(stderr, "io_uring_queue_init: %d\n", rc);
        std::exit(1);
    }
    std::vector<char> buf(chunk, 'x');
    auto t0 = std::chrono::steady_clock::now();
    std::clock_t c0 = std::clock();
    std::size_t sent = 0;
    while (sent < total) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring);
        if (zc)
            io_uring_prep_send_zc(sqe, out, buf.data(), chunk, 0, 0);
        else
            io_uring_prep_send(sqe, out, buf.data(), chunk, 0);
        io_uring_submit(&ring);
        bool have_result = false;
        bool buffer_free = !zc;
        while (!have_result || !buffer_free) {
            io_uring_cqe* cqe;
            if (io_uring_wait_cqe(&ring, &cqe) != 0) std::exit(1);
            if (cqe->flags & IORING_CQE_F_NOTIF) {
                buffer_free = true;
            } else {
                if (cqe->res < 0) {
                    std::fprintf(stderr, "send: %d\n", cqe->res);
                    std::exit(1);
                }
                sent += static_cast<std::size_t>(cqe->res);
                have_result = true;
                if (!(cqe->flags & IORING_CQE_F_MORE)) buffer_free = true;
            }
            io_uring_cqe_seen(&ring, cqe);
        }
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
    io_uring_queue_exit(&ring);
    ::close(out);
    drain.join();
    ::close(in);
    ::close(lst);
    return {static_cast<double>(total) / secs / 1e9, cpu};
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::size_t> chunks;
    for (int i = 1; i < argc; ++i) chunks.push_back(std::strtoull(argv[i], nullptr, 10));
    if (chunks.empty()) chunks = {65536, 1048576};
    for (std::size_t chunk : chunks) {
        for (int round = 0; round < 3; ++round) {
            for (bool zc : {false, true}) {
                result r = run(zc, chunk);
                std::printf("%-8s %5zu KiB sends: %5.2f GB/s, sender CPU %.2f s for 4 GiB\n", zc ? "send_zc" : "send",
                            chunk >> 10, r.gbps, r.cpu_s);
                std::fflush(stdout);
            }
        }
    }
}
