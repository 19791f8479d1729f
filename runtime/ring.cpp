#include "ring.hpp"

#include <sys/resource.h>

#include <cerrno>
#include <fstream>
#include <iterator>
#include <memory>
#include <system_error>
#include <vector>

#include <fmt/format.h>

namespace ringio::detail {
namespace {

// Preferred first. DEFER_TASKRUN (6.1) runs completion work only when the loop asks for events,
// which suits a loop that already batches; it needs SINGLE_ISSUER (6.0). COOP_TASKRUN (5.19)
// avoids interrupting the thread for task work. Older kernels reject unknown flags with EINVAL.
// TASKRUN_FLAG makes the kernel raise IORING_SQ_TASKRUN when completion work is waiting, so
// a pass with nothing to submit can skip io_uring_enter entirely.
constexpr unsigned flag_sets[] = {
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    0,
};
// With SQPOLL (opt-in) the kernel thread submits, which DEFER_TASKRUN does not allow; without
// SQPOLL accepted, the sets above.
constexpr unsigned sqpoll_flag_sets[] = {
    IORING_SETUP_SQPOLL | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    IORING_SETUP_SQPOLL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
    IORING_SETUP_SQPOLL,
};

int read_sysctl(const char* path) {
    std::ifstream in(path);
    int v = -1;
    if (in) in >> v;
    return v;
}

}  // namespace

std::string setup_error_message(int err) { return fmt::format("ringio: cannot set up io_uring: {}", setup_error_cause(err)); }

ring_unavailable::ring_unavailable(int err, std::string cause)
    : std::system_error(err, std::system_category(), fmt::format("ringio: cannot set up io_uring: {}", cause)),
      cause_(std::move(cause)) {}

std::string setup_error_cause(int err) {
    std::string cause;
    switch (err) {
    case ENOSYS:
        cause = "this kernel has no io_uring (it needs Linux 5.10 or newer built with CONFIG_IO_URING)";
        break;
    case EPERM:
    case EACCES: {
        int disabled = read_sysctl("/proc/sys/kernel/io_uring_disabled");
        if (disabled == 2)
            cause = "io_uring is disabled by the sysctl kernel.io_uring_disabled=2; set it to 0";
        else if (disabled == 1)
            cause = "kernel.io_uring_disabled=1 allows io_uring only to the group in kernel.io_uring_group; "
                    "add this user to that group or set the sysctl to 0";
        else
            cause = "blocked by a seccomp filter or security policy (Docker's default seccomp profile and gVisor "
                    "block io_uring: run the container with a profile that allows io_uring_setup, "
                    "io_uring_enter and io_uring_register)";
        break;
    }
    case ENOMEM: {
        rlimit lim{};
        getrlimit(RLIMIT_MEMLOCK, &lim);
        cause = fmt::format("could not allocate the ring; kernels before 5.12 charge ring memory to RLIMIT_MEMLOCK, "
                            "which is {} bytes here: raise it (ulimit -l) or use a newer kernel",
                            lim.rlim_cur == RLIM_INFINITY ? -1 : static_cast<long long>(lim.rlim_cur));
        break;
    }
    case EMFILE:
    case ENFILE:
        cause = "out of file descriptors";
        break;
    default:
        cause = fmt::format("unexpected error ({})", std::system_category().message(err));
    }
    return cause;
}

ring::ring(const loop_options& options, ring_features& f) {
    unsigned sq = options.sq_entries ? options.sq_entries : 1024;
    unsigned cq = options.cq_entries ? options.cq_entries : sq * 8;
    int err = EINVAL;
    std::vector<unsigned> sets;
    if (options.sqpoll) sets.assign(std::begin(sqpoll_flag_sets), std::end(sqpoll_flag_sets));
    sets.insert(sets.end(), std::begin(flag_sets), std::end(flag_sets));
    for (unsigned flags : sets) {
        io_uring_params p{};
        p.flags = flags | IORING_SETUP_CQSIZE;
        p.cq_entries = cq;
        p.sq_thread_idle = static_cast<unsigned>(options.sqpoll_idle.count());
        int rc = io_uring_queue_init_params(sq, &raw, &p);
        if (rc == 0) {
            f.sqpoll = flags & IORING_SETUP_SQPOLL;
            f.single_issuer = flags & IORING_SETUP_SINGLE_ISSUER;
            f.defer_taskrun = flags & IORING_SETUP_DEFER_TASKRUN;
            f.coop_taskrun = flags & IORING_SETUP_COOP_TASKRUN;
            f.taskrun_flag = flags & IORING_SETUP_TASKRUN_FLAG;
            f.ext_arg = p.features & IORING_FEAT_EXT_ARG;
            f.nodrop = p.features & IORING_FEAT_NODROP;
            f.sq_entries = p.sq_entries;
            f.cq_entries = p.cq_entries;
            err = 0;
            break;
        }
        err = -rc;
        if (err != EINVAL) break;  // only unknown flags are worth another try
    }
    if (err != 0) throw ring_unavailable(err, setup_error_cause(err));
    // A profile may allow the setup and refuse what follows (io_uring_enter): run one NOP.
    {
        io_uring_sqe* sqe = io_uring_get_sqe(&raw);
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data64(sqe, 0);
        io_uring_cqe* cqe = nullptr;
        int rc = io_uring_submit_and_wait(&raw, 1);
        if (rc >= 0) rc = io_uring_peek_cqe(&raw, &cqe);
        if (rc < 0) {
            io_uring_queue_exit(&raw);
            throw ring_unavailable(-rc, fmt::format("io_uring is set up but cannot run an operation (io_uring_enter: {})",
                                                    std::system_category().message(-rc)));
        }
        io_uring_cqe_seen(&raw, cqe);
    }
    if (options.register_ring_fd) f.registered_ring = io_uring_register_ring_fd(&raw) == 1;

    // Features without a flag of their own are inferred from opcodes of the same kernel release.
    if (std::unique_ptr<io_uring_probe, void (*)(io_uring_probe*)> probe{io_uring_get_probe_ring(&raw),
                                                                          io_uring_free_probe};
        probe) {
        bool has_socket = io_uring_opcode_supported(probe.get(), IORING_OP_SOCKET);    // 5.19
        bool has_send_zc = io_uring_opcode_supported(probe.get(), IORING_OP_SEND_ZC);  // 6.0
        f.multishot_accept = has_socket;
        f.buf_ring = has_socket;
        f.recv_multishot = has_send_zc;
        f.send_zc = has_send_zc;
        f.msg_ring = io_uring_opcode_supported(probe.get(), IORING_OP_MSG_RING);
    }
}

ring::~ring() { io_uring_queue_exit(&raw); }

}  // namespace ringio::detail
