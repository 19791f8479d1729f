// Seccomp filters for a child process: io_uring blocked, as Docker's default seccomp profile
// does (runtime_loop, net_examples_nouring: what happens when io_uring cannot be set up), and
// socket(2) failing for one address family (net_connect).
#pragma once

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include <cerrno>
#include <cstddef>

namespace test {

#if defined(__x86_64__)
inline constexpr unsigned native_arch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
inline constexpr unsigned native_arch = AUDIT_ARCH_AARCH64;
#else
inline constexpr unsigned native_arch = 0;  // no filter for this machine: callers skip
#endif

/// In this (child) process, makes system call `nr` fail with EPERM, as a container's seccomp
/// profile does; the filter stays through execve. Returns false if the filter could not be
/// installed. Only async-signal-safe calls: usable between fork() and execve().
inline bool block_syscall(unsigned nr) {
    sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, native_arch, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(sizeof code / sizeof code[0]), code};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
    return ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

/// io_uring_setup fails with EPERM (Docker's default profile, gVisor, kernel.io_uring_disabled).
inline bool block_io_uring_setup() { return block_syscall(__NR_io_uring_setup); }
/// The ring can be made, but io_uring_enter fails with EPERM (a profile that blocks only that).
inline bool block_io_uring_enter() { return block_syscall(__NR_io_uring_enter); }

}  // namespace test

namespace test {

/// In this (child) process, makes socket(2) for address family `family` fail with `err` (say
/// EAFNOSUPPORT, as in a namespace without that family, or EMFILE); other families and every
/// other call are allowed. Returns false if the filter could not be installed. Only
/// async-signal-safe calls.
inline bool block_socket_family(int family, int err) {
    // The low 32 bits of the first argument (little-endian machines: x86-64, AArch64).
    constexpr unsigned arg0_low = offsetof(seccomp_data, args[0]);
    sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, native_arch, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_socket, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, arg0_low),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, static_cast<unsigned>(family), 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (static_cast<unsigned>(err) & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog prog{static_cast<unsigned short>(sizeof code / sizeof code[0]), code};
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
    return ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

}  // namespace test
