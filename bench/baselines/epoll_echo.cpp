// epoll_echo: the classic readiness-based echo server. Non-blocking sockets, one level-triggered
// epoll set, one thread. A readable socket gets one read() into a shared 64 KiB buffer and one
// write() of what came; only when the write is short is the rest kept in a per-connection
// buffer, EPOLLIN switched off and EPOLLOUT on until it is sent (backpressure). So the common
// path is epoll_wait + read + write per message, and an idle connection costs a few bytes.
//
//   epoll_echo [--host IPV4] [--port PORT]     (the example-server contract)
#include "common.hpp"

#include <sys/epoll.h>

#include <memory>
#include <string>
#include <vector>

namespace {

struct connection {
    bool open = false;
    std::string pending;  // bytes read but not yet written (only after a short write)
};

std::vector<connection> conns;

connection& conn(int fd) {
    if (static_cast<std::size_t>(fd) >= conns.size()) conns.resize(static_cast<std::size_t>(fd) * 2 + 64);
    return conns[static_cast<std::size_t>(fd)];
}

void close_conn(int epfd, int fd) {
    ::epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    conn(fd) = connection{};
}

void watch(int epfd, int op, int fd, std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    ::epoll_ctl(epfd, op, fd, &ev);
}

}  // namespace

int main(int argc, char** argv) {
    bench::server_args args = bench::parse_server_args("epoll_echo", argc, argv);
    bench::install_stop_handlers();
    int lfd = bench::listen_tcp(args, true);
    int epfd = ::epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) bench::die("epoll_create1");
    watch(epfd, EPOLL_CTL_ADD, lfd, EPOLLIN);

    static char buf[65536];
    std::vector<epoll_event> events(1024);
    while (!bench::stop_requested) {
        int n = ::epoll_wait(epfd, events.data(), static_cast<int>(events.size()), -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            bench::die("epoll_wait");
        }
        for (int i = 0; i < n; ++i) {
            int fd = events[static_cast<std::size_t>(i)].data.fd;
            std::uint32_t ev = events[static_cast<std::size_t>(i)].events;
            if (fd == lfd) {
                for (int k = 0; k < 64; ++k) {  // a bounded batch, so a connect storm cannot starve the rest
                    int cfd = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (cfd < 0) {
                        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                            static bool logged = false;
                            if (!logged) std::fprintf(stderr, "epoll_echo: accept: %s\n", std::strerror(errno));
                            logged = true;
                        }
                        break;
                    }
                    conn(cfd).open = true;
                    watch(epfd, EPOLL_CTL_ADD, cfd, EPOLLIN);
                }
                continue;
            }
            connection& c = conn(fd);
            if (!c.open) continue;
            if (!c.pending.empty()) {  // waiting for EPOLLOUT to finish a short write
                if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) continue;
                ssize_t w = ::send(fd, c.pending.data(), c.pending.size(), MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN && errno != EINTR) {
                    close_conn(epfd, fd);
                    continue;
                }
                if (w > 0) c.pending.erase(0, static_cast<std::size_t>(w));
                if (c.pending.empty()) {
                    std::string().swap(c.pending);  // give the memory back
                    watch(epfd, EPOLL_CTL_MOD, fd, EPOLLIN);
                }
                continue;
            }
            ssize_t r = ::read(fd, buf, sizeof buf);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) {  // EOF (nothing is pending, so everything owed was sent) or error
                close_conn(epfd, fd);
                continue;
            }
            ssize_t w = ::send(fd, buf, static_cast<std::size_t>(r), MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN && errno != EINTR) {
                close_conn(epfd, fd);
                continue;
            }
            if (w < 0) w = 0;
            if (w < r) {
                c.pending.assign(buf + w, buf + r);
                watch(epfd, EPOLL_CTL_MOD, fd, EPOLLOUT);
            }
        }
    }
    return 0;
}
