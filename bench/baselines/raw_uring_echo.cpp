// raw_uring_echo: the floor of what io_uring can do for an echo server, hand-written on liburing
// without any runtime: one ring set up with SINGLE_ISSUER | DEFER_TASKRUN, one multishot accept,
// one multishot recv per connection into a provided buffer ring (registered here with
// io_uring_register_buf_ring; liburing 2.3 has no io_uring_setup_buf_ring), and a send of the
// very buffer the kernel filled. A buffer goes back to the ring when its send has completed.
//
//   raw_uring_echo [--host IPV4] [--port PORT]     (the example-server contract)
//
// With RAW_URING_DIRECT=1 in the environment the connections are registered (direct)
// descriptors: accepted straight into a sparse file table, every recv/send with
// IOSQE_FIXED_FILE, closed with close_direct. It measures what registered files could save
// (bench/README.md, "Registered (direct) file descriptors").
//
// Per connection the server keeps a few bytes (a FIFO of buffer ids waiting to be sent, so that
// bytes leave in the order they came even when a send is short) and no buffer of its own: idle
// connections cost no user-space buffer memory. When the ring runs out of buffers the kernel
// ends the multishot recv with ENOBUFS; the connection is re-armed once buffers come back.
#include "common.hpp"

#include <liburing.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include <cstdint>
#include <vector>

namespace {

constexpr unsigned n_buffers = 4096;  // a power of two (the buffer ring's size)
constexpr unsigned buffer_size = 4096;
constexpr std::uint16_t buffer_group = 0;
constexpr std::uint16_t no_buffer = 0xffff;

enum op : std::uint64_t { op_accept = 1, op_recv = 2, op_send = 3, op_close = 4, op_timeout = 5 };

std::uint64_t make_data(op o, int fd, std::uint16_t bid = 0) {
    return (std::uint64_t(o) << 56) | (std::uint64_t(std::uint32_t(fd)) << 16) | bid;
}
op data_op(std::uint64_t d) { return op(d >> 56); }
int data_fd(std::uint64_t d) { return int(std::uint32_t(d >> 16)); }
std::uint16_t data_bid(std::uint64_t d) { return std::uint16_t(d); }

struct connection {
    std::uint16_t head = no_buffer;  // FIFO of filled buffers; head is being sent
    std::uint16_t tail = no_buffer;
    bool open = false;
    bool recv_armed = false;
    bool finished = false;  // EOF or error: close once the queue has been sent
};

struct buffer_state {
    std::uint16_t next = no_buffer;
    std::uint32_t len = 0;
    std::uint32_t off = 0;
};

struct server {
    io_uring ring{};
    io_uring_buf_ring* br = nullptr;
    unsigned br_mask = 0;
    unsigned returned = 0;  // buffers added to the ring since the last advance
    unsigned in_use = 0;    // buffers the kernel filled and we have not returned yet
    unsigned char* buffers = nullptr;
    std::vector<buffer_state> bufs = std::vector<buffer_state>(n_buffers);
    std::vector<connection> conns;
    std::vector<int> rearm;  // connections whose recv ended with ENOBUFS
    int listen_fd = -1;
    bool direct = false;  // RAW_URING_DIRECT=1: registered (direct) descriptors for the connections
    __kernel_timespec accept_backoff{0, 10'000'000};

    io_uring_sqe* sqe() {
        io_uring_sqe* s = io_uring_get_sqe(&ring);
        while (!s) {  // SQ full: hand what we have to the kernel and retry
            io_uring_submit(&ring);
            s = io_uring_get_sqe(&ring);
        }
        return s;
    }

    connection& conn(int fd) {
        if (static_cast<std::size_t>(fd) >= conns.size()) conns.resize(static_cast<std::size_t>(fd) * 2 + 64);
        return conns[static_cast<std::size_t>(fd)];
    }

    void arm_accept() {
        io_uring_sqe* s = sqe();
        if (direct)
            io_uring_prep_multishot_accept_direct(s, listen_fd, nullptr, nullptr, 0);
        else
            io_uring_prep_multishot_accept(s, listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
        io_uring_sqe_set_data64(s, make_data(op_accept, listen_fd));
    }

    void arm_recv(int fd) {
        io_uring_sqe* s = sqe();
        io_uring_prep_recv_multishot(s, fd, nullptr, 0, 0);
        s->flags |= IOSQE_BUFFER_SELECT | (direct ? IOSQE_FIXED_FILE : 0);
        s->buf_group = buffer_group;
        io_uring_sqe_set_data64(s, make_data(op_recv, fd));
        conn(fd).recv_armed = true;
    }

    void send_head(int fd) {
        connection& c = conn(fd);
        buffer_state& b = bufs[c.head];
        io_uring_sqe* s = sqe();
        io_uring_prep_send(s, fd, buffers + std::size_t(c.head) * buffer_size + b.off, b.len - b.off, MSG_NOSIGNAL);
        if (direct) s->flags |= IOSQE_FIXED_FILE;
        io_uring_sqe_set_data64(s, make_data(op_send, fd, c.head));
    }

    void give_back(std::uint16_t bid) {
        io_uring_buf_ring_add(br, buffers + std::size_t(bid) * buffer_size, buffer_size, bid, br_mask,
                              static_cast<int>(returned));
        ++returned;
        --in_use;
    }

    void maybe_close(int fd) {
        connection& c = conn(fd);
        if (!c.open || !c.finished || c.recv_armed || c.head != no_buffer) return;
        c = connection{};
        io_uring_sqe* s = sqe();
        if (direct)
            io_uring_prep_close_direct(s, static_cast<unsigned>(fd));
        else
            io_uring_prep_close(s, fd);
        io_uring_sqe_set_data64(s, make_data(op_close, fd));
    }

    void on_accept(const io_uring_cqe* cqe) {
        if (cqe->res >= 0) {
            connection& c = conn(cqe->res);
            c = connection{};
            c.open = true;
            arm_recv(cqe->res);
        } else if (cqe->res != -EINTR && cqe->res != -ECONNABORTED) {
            static bool logged = false;
            if (!logged) std::fprintf(stderr, "raw_uring_echo: accept: %s (retrying)\n", std::strerror(-cqe->res));
            logged = true;
        }
        if (!(cqe->flags & IORING_CQE_F_MORE)) {
            if (cqe->res < 0) {  // EMFILE and the like: retry after a short back-off
                io_uring_sqe* s = sqe();
                io_uring_prep_timeout(s, &accept_backoff, 0, 0);
                io_uring_sqe_set_data64(s, make_data(op_timeout, listen_fd));
            } else {
                arm_accept();
            }
        }
    }

    void on_recv(const io_uring_cqe* cqe) {
        int fd = data_fd(cqe->user_data);
        connection& c = conn(fd);
        bool more = cqe->flags & IORING_CQE_F_MORE;
        if (!more) c.recv_armed = false;
        if (cqe->res > 0) {
            auto bid = static_cast<std::uint16_t>(cqe->flags >> IORING_CQE_BUFFER_SHIFT);
            ++in_use;
            bufs[bid] = buffer_state{no_buffer, static_cast<std::uint32_t>(cqe->res), 0};
            if (c.finished) {  // the connection failed: drop the data
                give_back(bid);
            } else if (c.head == no_buffer) {
                c.head = c.tail = bid;
                send_head(fd);
            } else {
                bufs[c.tail].next = bid;
                c.tail = bid;
            }
            if (!more && !c.finished) arm_recv(fd);  // the kernel ended the multishot (e.g. CQ overflow)
        } else if (cqe->res == -ENOBUFS) {
            if (!more) rearm.push_back(fd);
        } else {  // 0: EOF; < 0: the connection failed
            c.finished = true;
        }
        maybe_close(fd);
    }

    void on_send(const io_uring_cqe* cqe) {
        int fd = data_fd(cqe->user_data);
        connection& c = conn(fd);
        std::uint16_t bid = data_bid(cqe->user_data);
        buffer_state& b = bufs[bid];
        if (cqe->res > 0 && b.off + static_cast<std::uint32_t>(cqe->res) < b.len) {  // short send
            b.off += static_cast<std::uint32_t>(cqe->res);
            send_head(fd);
            return;
        }
        if (cqe->res < 0) {  // EPIPE, ECONNRESET: drop what is queued, end the recv
            c.finished = true;
            while (c.head != no_buffer) {
                std::uint16_t next = bufs[c.head].next;
                give_back(c.head);
                c.head = next;
            }
            if (c.recv_armed) {  // the recv then completes with 0
                if (direct) {
                    io_uring_sqe* s = sqe();
                    io_uring_prep_shutdown(s, fd, SHUT_RDWR);
                    s->flags |= IOSQE_FIXED_FILE;
                    io_uring_sqe_set_data64(s, make_data(op_close, fd));
                } else {
                    ::shutdown(fd, SHUT_RDWR);
                }
            }
        } else {
            c.head = b.next;
            give_back(bid);
            if (c.head != no_buffer) send_head(fd);
        }
        if (c.head == no_buffer) c.tail = no_buffer;
        maybe_close(fd);
    }

    void run() {
        while (!bench::stop_requested) {
            if (returned) {
                io_uring_buf_ring_advance(br, static_cast<int>(returned));
                returned = 0;
            }
            if (!rearm.empty() && in_use < n_buffers) {
                for (int fd : rearm)
                    if (conn(fd).open && !conn(fd).finished && !conn(fd).recv_armed) arm_recv(fd);
                    else maybe_close(fd);
                rearm.clear();
            }
            int r = io_uring_submit_and_wait(&ring, 1);
            if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
                errno = -r;
                bench::die("io_uring_submit_and_wait");
            }
            unsigned head, seen = 0;
            io_uring_cqe* cqe;
            io_uring_for_each_cqe(&ring, head, cqe) {
                ++seen;
                switch (data_op(cqe->user_data)) {
                case op_accept: on_accept(cqe); break;
                case op_recv: on_recv(cqe); break;
                case op_send: on_send(cqe); break;
                case op_timeout: arm_accept(); break;
                case op_close: break;
                }
            }
            io_uring_cq_advance(&ring, seen);
        }
    }
};

}  // namespace

int main(int argc, char** argv) {
    bench::server_args args = bench::parse_server_args("raw_uring_echo", argc, argv);
    bench::install_stop_handlers();

    static server s;  // static: the per-fd table may grow large
    io_uring_params p{};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
    p.cq_entries = 65536;
    int r = io_uring_queue_init_params(4096, &s.ring, &p);
    if (r < 0) {
        errno = -r;
        bench::die("io_uring_queue_init_params (needs Linux 6.1: SINGLE_ISSUER | DEFER_TASKRUN)");
    }

    // The provided buffer ring: ring memory mapped and registered by hand, then every buffer
    // added. The buffers are touched now, so their memory is part of the server's baseline
    // resident size (a fixed cost, not a per-connection one).
    std::size_t ring_bytes = n_buffers * sizeof(io_uring_buf);
    void* ring_mem = ::mmap(nullptr, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (ring_mem == MAP_FAILED) bench::die("mmap");
    s.br = static_cast<io_uring_buf_ring*>(ring_mem);
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uint64_t>(ring_mem);
    reg.ring_entries = n_buffers;
    reg.bgid = buffer_group;
    r = io_uring_register_buf_ring(&s.ring, &reg, 0);
    if (r < 0) {
        errno = -r;
        bench::die("io_uring_register_buf_ring (needs Linux 5.19)");
    }
    io_uring_buf_ring_init(s.br);
    s.br_mask = static_cast<unsigned>(io_uring_buf_ring_mask(n_buffers));
    s.buffers = static_cast<unsigned char*>(
        ::mmap(nullptr, std::size_t(n_buffers) * buffer_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0));
    if (s.buffers == MAP_FAILED) bench::die("mmap");
    std::memset(s.buffers, 0, std::size_t(n_buffers) * buffer_size);
    s.in_use = n_buffers;
    for (unsigned i = 0; i < n_buffers; ++i) s.give_back(static_cast<std::uint16_t>(i));
    io_uring_buf_ring_advance(s.br, static_cast<int>(s.returned));
    s.returned = 0;

    if (const char* d = std::getenv("RAW_URING_DIRECT"); d && *d == '1') {
        rlimit lim{};
        ::getrlimit(RLIMIT_NOFILE, &lim);
        r = io_uring_register_files_sparse(&s.ring, static_cast<unsigned>(lim.rlim_cur));
        if (r < 0) {
            errno = -r;
            bench::die("io_uring_register_files_sparse");
        }
        s.direct = true;
    }
    s.listen_fd = bench::listen_tcp(args, false);
    s.arm_accept();
    s.run();

    ::close(s.listen_fd);
    io_uring_queue_exit(&s.ring);  // closes nothing else: the process exits and the kernel does
    return 0;
}
