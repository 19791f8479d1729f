// Shared by the C++ baseline servers: the example-server contract (DESIGN.md section 7).
//
//   server --host H --port P     (port 0 = any free port)
//
// prints "listening on HOST:PORT" as its first stdout line (flushed), echoes every byte, and
// exits with status 0 on SIGINT or SIGTERM. The baselines are benchmark opponents, so this file
// holds only what every one of them needs and nothing that would make one faster.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace bench {

struct server_args {
    std::string host = "127.0.0.1";
    int port = 0;
};

inline server_args parse_server_args(const char* name, int argc, char** argv) {
    server_args a;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if ((arg == "--host" || arg == "--port") && i + 1 < argc) {
            if (arg == "--host") a.host = argv[++i];
            else a.port = std::atoi(argv[++i]);
        } else {
            std::fprintf(stderr, "usage: %s [--host IPV4] [--port PORT]\n", name);
            std::exit(2);
        }
    }
    return a;
}

[[noreturn]] inline void die(const char* what) {
    std::fprintf(stderr, "%s: %s\n", what, std::strerror(errno));
    std::exit(1);
}

/// A listening IPv4 socket (backlog 100) with SO_REUSEADDR and TCP_NODELAY (inherited by accepted sockets on
/// Linux, as asyncio and ringio set it on every connection). Prints the contract line.
inline int listen_tcp(const server_args& a, bool nonblocking) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) die("socket");
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<std::uint16_t>(a.port));
    if (::inet_pton(AF_INET, a.host.c_str(), &sa.sin_addr) != 1) {
        std::fprintf(stderr, "--host wants a numeric IPv4 address, not '%s'\n", a.host.c_str());
        std::exit(2);
    }
    if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) die("bind");
    if (::listen(fd, 100) < 0) die("listen");  // asyncio's and ringio's default backlog
    socklen_t len = sizeof sa;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
    char ip[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
    std::printf("listening on %s:%u\n", ip, ntohs(sa.sin_port));
    std::fflush(stdout);
    return fd;
}

/// Set by SIGINT/SIGTERM. The handlers are installed without SA_RESTART, so a blocking
/// epoll_wait / io_uring_enter / accept returns EINTR and the server notices.
inline volatile sig_atomic_t stop_requested = 0;

inline void install_stop_handlers() {
    struct sigaction sa {};
    sa.sa_handler = [](int) { stop_requested = 1; };
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    ::sigaction(SIGINT, &sa, nullptr);
    ::sigaction(SIGTERM, &sa, nullptr);
    ::signal(SIGPIPE, SIG_IGN);
}

}  // namespace bench
