// udp_threads_echo: the blocking-socket baseline of the UDP echo benchmark. Each of N threads
// (default 1) owns a UDP socket bound to the same port (SO_REUSEPORT: the kernel spreads the
// senders over them) and loops on recvfrom / sendto: two system calls per datagram, nothing else.
//
//   udp_threads_echo [--host IP] [--port P] [--threads N]
//
// Keeps the example-server contract of DESIGN.md section 7: the first stdout line is
// "listening on udp HOST:PORT" (flushed), datagrams of 0..65507 bytes are echoed, and SIGINT or
// SIGTERM end it with status 0 (the threads notice within their 100 ms receive timeout; the
// timeout costs nothing while datagrams flow).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

std::atomic<bool> stop{false};

[[noreturn]] void die(const char* what) {
    std::fprintf(stderr, "udp_threads_echo: %s: %s\n", what, std::strerror(errno));
    std::exit(1);
}

[[noreturn]] void usage(const char* problem) {
    std::fprintf(stderr, "udp_threads_echo: %s\nusage: udp_threads_echo [--host IP] [--port P] [--threads N]\n",
                 problem);
    std::exit(2);
}

/// A UDP socket with SO_REUSEPORT bound to `sa`; returns the fd.
int bound_socket(const sockaddr_storage& sa, socklen_t len) {
    int fd = ::socket(sa.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    int big = 4 << 20;  // absorb bursts, like udp_echo (capped by net.core.rmem_max)
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
    timeval tv{0, 100'000};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (::bind(fd, reinterpret_cast<const sockaddr*>(&sa), len) < 0) die("bind");
    return fd;
}

void serve(int fd) {
    std::vector<char> buf(65536);
    while (!stop.load(std::memory_order_relaxed)) {
        sockaddr_storage from{};
        socklen_t flen = sizeof from;
        ssize_t n = ::recvfrom(fd, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &flen);
        if (n < 0) continue;  // EAGAIN (the timeout), EINTR, or an error for one datagram
        ::sendto(fd, buf.data(), static_cast<std::size_t>(n), 0, reinterpret_cast<sockaddr*>(&from), flen);
    }
}

}  // namespace

int main(int argc, char** argv) {
    std::string host = "127.0.0.1";
    int port = 0, threads = 1;
    for (int i = 1; i < argc; ++i) {
        std::string arg = argv[i];
        if (i + 1 == argc) usage(("missing value for " + arg).c_str());
        std::string v = argv[++i];
        if (arg == "--host") host = v;
        else if (arg == "--port") port = std::atoi(v.c_str());
        else if (arg == "--threads") threads = std::atoi(v.c_str());
        else usage(("unknown argument " + arg).c_str());
    }
    if (port < 0 || port > 65535 || threads < 1 || threads > 256) usage("bad --port or --threads");

    sockaddr_storage sa{};
    socklen_t len = 0;
    if (auto* s4 = reinterpret_cast<sockaddr_in*>(&sa); ::inet_pton(AF_INET, host.c_str(), &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(static_cast<std::uint16_t>(port));
        len = sizeof(sockaddr_in);
    } else if (auto* s6 = reinterpret_cast<sockaddr_in6*>(&sa); ::inet_pton(AF_INET6, host.c_str(), &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(static_cast<std::uint16_t>(port));
        len = sizeof(sockaddr_in6);
    } else {
        usage("--host wants a numeric IP address");
    }

    // The signals go to sigwait() in this thread only: block them before starting the others.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    // The first socket picks the port (for --port 0); the others bind the same one.
    std::vector<int> fds{bound_socket(sa, len)};
    socklen_t got = sizeof sa;
    ::getsockname(fds[0], reinterpret_cast<sockaddr*>(&sa), &got);
    for (int i = 1; i < threads; ++i) fds.push_back(bound_socket(sa, len));
    char ip[INET6_ADDRSTRLEN];
    unsigned actual_port;
    if (sa.ss_family == AF_INET) {
        auto* s4 = reinterpret_cast<sockaddr_in*>(&sa);
        ::inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        actual_port = ntohs(s4->sin_port);
        std::printf("listening on udp %s:%u\n", ip, actual_port);
    } else {
        auto* s6 = reinterpret_cast<sockaddr_in6*>(&sa);
        ::inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
        actual_port = ntohs(s6->sin6_port);
        std::printf("listening on udp [%s]:%u\n", ip, actual_port);
    }
    std::fflush(stdout);

    std::vector<std::thread> workers;
    for (int fd : fds) workers.emplace_back(serve, fd);
    int sig = 0;
    sigwait(&stop_signals, &sig);
    stop = true;
    for (auto& t : workers) t.join();
    for (int fd : fds) ::close(fd);
    return 0;
}
