// threads_echo: thread-per-connection with blocking sockets, the "socket + threads" server.
// The main thread accepts; every connection gets its own std::thread (default stack size)
// that reads into a 16 KiB buffer on its stack and writes it all back.
//
//   threads_echo [--host IPV4] [--port PORT]     (the example-server contract)
//
// When a thread cannot be created (thread or memory-map limits), the connection is closed and
// the server goes on; the first such failure is reported on stderr.
#include "common.hpp"

#include <pthread.h>

#include <system_error>
#include <thread>

namespace {

void serve(int fd) {
    char buf[16384];
    for (;;) {
        ssize_t r = ::read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        for (ssize_t off = 0; off < r;) {
            ssize_t w = ::send(fd, buf + off, static_cast<std::size_t>(r - off), MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                ::close(fd);
                return;
            }
            off += w;
        }
    }
    ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
    bench::server_args args = bench::parse_server_args("threads_echo", argc, argv);
    ::signal(SIGPIPE, SIG_IGN);
    // Every thread inherits a mask with SIGINT and SIGTERM blocked; one thread waits for them.
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, nullptr);
    std::thread([stop] {
        int sig = 0;
        sigwait(&stop, &sig);
        std::fflush(stdout);
        ::_exit(0);  // the kernel closes every connection; detached threads need no joining
    }).detach();

    int lfd = bench::listen_tcp(args, false);
    bool logged = false;
    for (;;) {
        int fd = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (!logged) std::fprintf(stderr, "threads_echo: accept: %s\n", std::strerror(errno));
            logged = true;
            ::usleep(10'000);
            continue;
        }
        try {
            std::thread(serve, fd).detach();
        } catch (const std::system_error& e) {
            if (!logged) std::fprintf(stderr, "threads_echo: cannot start a thread: %s\n", e.what());
            logged = true;
            ::close(fd);
        }
    }
}
