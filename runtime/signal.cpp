#include "ringio/signal.hpp"

#include <poll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <stdexcept>

#include "ringio/io.hpp"

namespace ringio {
namespace {
struct fd_closer {
    int fd;
    ~fd_closer() { ::close(fd); }
};
}  // namespace

task<int> wait_signal(signal_set signals) {
    sigset_t set;
    sigemptyset(&set);
    for (int s : signals.signals())
        if (sigaddset(&set, s) != 0) throw std::invalid_argument("ringio: wait_signal: invalid signal number");
    detail::loop_core& loop = detail::loop_core::running();
    loop.block_signals(&set);
    int fd = ::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0) throw make_system_error(errno, "ringio: signalfd for wait_signal");
    fd_closer closer{fd};
    // Poll through the ring, then read here on the loop thread: a signalfd yields the signals
    // of the thread that reads it, so the read must not run on a kernel worker.
    while (true) {
        signalfd_siginfo info{};
        ssize_t n = ::read(fd, &info, sizeof info);
        if (n == static_cast<ssize_t>(sizeof info)) co_return static_cast<int>(info.ssi_signo);
        if (n < 0 && errno != EAGAIN && errno != EINTR) throw make_system_error(errno, "ringio: reading the signalfd");
        io_result r = co_await io::poll(fd, POLLIN);
        if (!r && r.res != -EINTR) throw make_system_error(-r.res, "ringio: polling the signalfd");
    }
}

}  // namespace ringio
