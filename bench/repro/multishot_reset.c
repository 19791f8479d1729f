// Plain liburing check (no ringio): does a multishot recv armed on a TCP socket that the peer
// reset while no receive was armed (data still queued) end with a final CQE once the queued data
// is read? The sequence the variant pause rule produced in tests/net_chat.cpp (docs/net.md, "Open
// question"): arm, get data, cancel while data flows (a pause), the peer resets, arm again and
// read everything without cancelling.
//
//   cc -O2 -o /tmp/multishot_reset bench/repro/multishot_reset.c -luring && /tmp/multishot_reset
//
// Prints one line per round: bytes received, how the receive ended (or "NO FINAL CQE").
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

enum { nbufs = 1024, bufsize = 4096, group = 7 };

static void die(const char* what, int err) {
    fprintf(stderr, "%s: %s\n", what, strerror(err));
    exit(2);
}

static void pair(int* client, int* server) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (bind(l, (struct sockaddr*)&a, sizeof a) || listen(l, 1) || getsockname(l, (struct sockaddr*)&a, &len)) die("listen", errno);
    *client = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(*client, (struct sockaddr*)&a, sizeof a)) die("connect", errno);
    *server = accept(l, NULL, NULL);
    close(l);
}

// Sends from the server side without blocking until the client's window is full.
static size_t fill(int fd, const char* chunk, size_t size) {
    size_t sent = 0;
    for (;;) {
        ssize_t n = send(fd, chunk, size, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n <= 0) return sent;
        sent += (size_t)n;
    }
}

// Counts a receive's bytes and gives its buffer back to the ring at once.
static size_t take(struct io_uring_buf_ring* br, char* mem, const struct io_uring_cqe* cqe) {
    if (cqe->flags & IORING_CQE_F_BUFFER) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        io_uring_buf_ring_add(br, mem + (size_t)bid * bufsize, bufsize, (unsigned short)bid, io_uring_buf_ring_mask(nbufs), 0);
        io_uring_buf_ring_advance(br, 1);
    }
    return cqe->res > 0 ? (size_t)cqe->res : 0;
}

int main(void) {
    struct io_uring ring;
    struct io_uring_params p = {.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN};
    int rc = io_uring_queue_init_params(256, &ring, &p);
    if (rc) die("io_uring_queue_init_params", -rc);
    // (liburing 2.3 has no io_uring_setup_buf_ring)
    struct io_uring_buf_ring* br = mmap(NULL, nbufs * sizeof(struct io_uring_buf), PROT_READ | PROT_WRITE,
                                        MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (br == MAP_FAILED) die("mmap", errno);
    io_uring_buf_ring_init(br);
    struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)br, .ring_entries = nbufs, .bgid = group};
    rc = io_uring_register_buf_ring(&ring, &reg, 0);
    if (rc) die("io_uring_register_buf_ring", -rc);
    char* mem = malloc((size_t)nbufs * bufsize);
    for (int i = 0; i < nbufs; ++i) io_uring_buf_ring_add(br, mem + (size_t)i * bufsize, bufsize, (unsigned short)i, io_uring_buf_ring_mask(nbufs), i);
    io_uring_buf_ring_advance(br, nbufs);
    static char chunk[65536];
    memset(chunk, 'x', sizeof chunk);
    int failures = 0;
    for (int round = 0; round < 20; ++round) {
        int c, s;
        pair(&c, &s);
        size_t total = 0, got = 0;
        // 1. Armed, data flowing, then cancelled (a pause) while the server keeps sending.
        struct io_uring_sqe* sqe = io_uring_get_sqe(&ring);
        io_uring_prep_recv_multishot(sqe, c, NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = group;
        io_uring_sqe_set_data64(sqe, 1);
        io_uring_submit(&ring);
        total += fill(s, chunk, sizeof chunk);
        int cancelled = 0, ended = 0;
        for (int spins = 0; !ended && spins < 100000; ++spins) {
            struct io_uring_cqe* cqe;
            struct __kernel_timespec ts = {.tv_sec = 1};
            if (io_uring_wait_cqe_timeout(&ring, &cqe, &ts)) break;
            if (cqe->user_data == 1) {
                got += take(br, mem, cqe);
                if (!(cqe->flags & IORING_CQE_F_MORE)) ended = 1;
                if (!cancelled && got > 64 * 1024) {
                    cancelled = 1;
                    struct io_uring_sqe* cs = io_uring_get_sqe(&ring);
                    io_uring_prep_cancel64(cs, 1, 0);
                    io_uring_sqe_set_data64(cs, 2);
                    io_uring_submit(&ring);
                }
            }
            io_uring_cqe_seen(&ring, cqe);
            total += fill(s, chunk, sizeof chunk);
        }
        // 2. The server fills the window, then resets the connection (unread data pending).
        total += fill(s, chunk, sizeof chunk);
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(s);
        // 3. Armed again; everything queued is read without cancelling; a final CQE must come.
        sqe = io_uring_get_sqe(&ring);
        io_uring_prep_recv_multishot(sqe, c, NULL, 0, 0);
        sqe->flags |= IOSQE_BUFFER_SELECT;
        sqe->buf_group = group;
        io_uring_sqe_set_data64(sqe, 3);
        io_uring_submit(&ring);
        int final_res = 1;
        while (final_res == 1) {
            struct io_uring_cqe* cqe;
            struct __kernel_timespec ts = {.tv_sec = 5};
            if (io_uring_wait_cqe_timeout(&ring, &cqe, &ts)) break;
            if (cqe->user_data == 3) {
                got += take(br, mem, cqe);
                if (!(cqe->flags & IORING_CQE_F_MORE)) final_res = cqe->res;
            }
            io_uring_cqe_seen(&ring, cqe);
        }
        if (final_res == 1) {
            ++failures;
            printf("round %2d: sent %zu, received %zu: NO FINAL CQE within 5 s\n", round, total, got);
        } else {
            printf("round %2d: sent %zu, received %zu, ended with %d (%s)\n", round, total, got, final_res,
                   final_res < 0 ? strerror(-final_res) : "EOF");
        }
        close(c);
    }
    printf("%d of 20 rounds without a final CQE\n", failures);
    return failures ? 1 : 0;
}
