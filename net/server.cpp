#include "ringio/server.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <optional>
#include <utility>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "ringio/event.hpp"
#include "ringio/gather.hpp"
#include "ringio/log.hpp"
#include "ringio/task_handle.hpp"
#include "ringio/time.hpp"
#include "stream_state.hpp"

namespace ringio {
namespace detail {

/// One listening socket and its (multishot) accept.
struct listener {
    socket& sock;  // in server_state::sockets
    explicit listener(socket& s) : sock(s) {}
    struct accept_request : io_request {
        listener* l = nullptr;
    } req;
    std::vector<int> ready;  // accepted fds not yet handed out
    int error = 0;           // last accept error (-errno), 0 if none
    bool armed = false;
    bool multishot = false;
    loop_core* loop = nullptr;
    suspension* waiter = nullptr;  // the accept loop, waiting for connections

    void arm() {
        armed = true;
        socket_state* ss = sock.state_ptr();
        ss->attach(loop);
        loop->submit(&req);
        ss->begin();
    }
    void wake() noexcept {
        if (waiter) std::exchange(waiter, nullptr)->wake();
    }
};

struct connection : list_node {
    stream_state* stream = nullptr;
};

struct server_state {
    connection_handler handler;
    server_options options;
    std::vector<socket> sockets;
    std::vector<std::unique_ptr<listener>> listeners;
    intrusive_list<connection> conns;
    std::size_t conn_count = 0;
    // Set while conn_count > 0: the connections keep the server state alive through this one
    // reference rather than one each (16 bytes per connection).
    std::shared_ptr<server_state> kept_by_connections;
    std::size_t accept_loops = 0;
    bool closing = false;
    std::string unix_path;  // removed on close, if it is still the file this server bound:
    std::optional<std::pair<dev_t, ino_t>> unix_file;  // that file (none for an abstract name)
    event closed;           // close() was called
    event all_done;         // closed, listeners gone, no connection left

    void check_done() {
        if (closing && accept_loops == 0 && conn_count == 0) all_done.set();
    }
};

namespace {

bool transient_accept_error(int err) {
    return err == EMFILE || err == ENFILE || err == ENOMEM || err == ENOBUFS || err == ECONNABORTED ||
           err == EPROTO || err == EPERM || err == EINTR;
}

// One accepted connection, from its handler's start to its close. Not a coroutine: this lives
// as long as the connection, and a coroutine around the handler kept 208 bytes of frame for
// every connection (its locals and temporaries); this is 56. The handler runs as its own Task;
// this waits for that Task's end as a done_waiter.
struct connection_record : done_waiter {
    connection conn;
    server_state* server;  // kept alive by server_state::kept_by_connections

    connection_record(const std::shared_ptr<server_state>& st, stream_state* stream) noexcept : server(st.get()) {
        conn.stream = stream;
        stream->add_ref();  // our own reference, for close_clients()/abort_clients()
        server->conns.push_back(&conn);
        if (server->conn_count++ == 0) server->kept_by_connections = st;
        notify = &handler_done;
    }
    connection_record(const connection_record&) = delete;
    connection_record& operator=(const connection_record&) = delete;
    /// Leaves the server, however the connection ended.
    ~connection_record() {
        intrusive_list<connection>::erase(&conn);
        conn.stream->release();
        std::shared_ptr<server_state> last;  // freed last, possibly with the server state
        if (--server->conn_count == 0) last = std::move(server->kept_by_connections);
        server->check_done();
    }

    /// After the handler: logs its failure and closes the connection. False if it was
    /// cancelled (then the close is not waited for).
    bool handler_ended(std::exception_ptr e) noexcept {
        stream_state* ss = conn.stream;
        bool cancelled = false;
        if (e) {
            try {
                std::rethrow_exception(e);
            } catch (const cancelled_error&) {
                cancelled = true;
            } catch (const timeout_error&) {
                // server_options::read_timeout expired: closing the connection is the expected outcome
            } catch (...) {
                try {
                    log(log_level::error, "connection handler for {} failed: {}", ss->peer(), describe(e));
                } catch (...) {
                    // a log handler that throws must not take the server down
                }
            }
        }
        ss->close();  // flush what the handler wrote, then close (no-op if it did)
        return !cancelled;
    }

    /// The handler's Task has ended: the connection leaves the server once it is closed.
    static void handler_done(done_waiter* w, task_base* handler) noexcept {
        handler->mark_retrieved();  // its failure is logged here, not as "never retrieved"
        finish(std::unique_ptr<connection_record>(static_cast<connection_record*>(w)), handler->promise().exception);
    }

    static void finish(std::unique_ptr<connection_record> c, std::exception_ptr e) noexcept {
        if (!c->handler_ended(std::move(e)) || c->conn.stream->is_closed()) return;
        // Still flushing: a Task waits for the close (a frame only while the close goes on).
        // Out of memory for it, the connection leaves the server now; its close goes on.
        try {
            (void)create_task(wait_closed_then_leave(std::move(c)));
        } catch (...) {
        }
    }

    // Owns c as a parameter, so it is freed even if the Task is cancelled before it starts.
    static task<> wait_closed_then_leave(std::unique_ptr<connection_record> c) {
        co_await c->conn.stream->wait_closed();
    }
};

/// Sets up an accepted connection and starts its handler as a Task of its own. A failure here
/// (out of memory, a handler that throws before its first suspension) ends this connection only.
void start_connection(const std::shared_ptr<server_state>& st, int fd) noexcept {
    stream_reader reader;
    stream_writer writer;
    std::unique_ptr<connection_record> c;
    try {
        socket s(fd);  // closes fd if anything below throws
        if (st->unix_path.empty()) {
            try {
                s.set_nodelay(true);
            } catch (const std::system_error&) {
            }
        }
        std::tie(reader, writer) = make_streams(std::move(s), stream_options{st->options.limit, st->options.read_timeout});
        c = std::make_unique<connection_record>(st, stream_access::state(writer));
        task_handle<> h = create_task(st->handler(std::move(reader), std::move(writer)));
        h.base()->add_done_waiter(c.release());
    } catch (...) {
        if (c) {  // the handler failed to start: logged like a handler that threw
            connection_record::finish(std::move(c), std::current_exception());
            return;
        }
        try {  // (the streams, going out of scope, close the connection)
            log(log_level::error, "accepted connection could not be set up: {}", describe(std::current_exception()));
        } catch (...) {
        }
    }
}

task<> accept_loop(std::shared_ptr<server_state> st, listener* l) {
    auto backoff = std::chrono::milliseconds(100);
    bool in_burst = false;
    while (!st->closing) {
        if (!l->armed && l->error == 0) l->arm();
        if (l->ready.empty() && l->error == 0) {
            // An interrupt point: a cancelled accept loop leaves at once; the multishot
            // accept stays armed until the listener closes.
            struct awaiter : suspension {
                listener* l;
                explicit awaiter(listener* li) noexcept : l(li) {}
                bool await_ready() const noexcept { return false; }
                bool await_suspend(std::coroutine_handle<> h) {
                    if (!begin(h)) return false;
                    l->waiter = this;
                    arm([](suspension* sp) noexcept {
                        auto* a = static_cast<awaiter*>(sp);
                        a->l->waiter = nullptr;
                        a->wake(true);
                    });
                    return true;
                }
                void await_resume() { resume(); }
            };
            co_await awaiter(l);
        }
        std::vector<int> fds = std::move(l->ready);
        l->ready.clear();
        for (int fd : fds) {
            if (st->closing) {
                ::close(fd);  // accepted as the server closed: no handler sees it
                continue;
            }
            in_burst = false;
            backoff = std::chrono::milliseconds(100);
            start_connection(st, fd);
        }
        if (int err = -std::exchange(l->error, 0); err != 0 && !st->closing) {
            if (err == ECANCELED) continue;
            if (!in_burst) {
                log(log_level::warning, "accept on {} failed: {}; retrying after {} ms", l->sock.local_endpoint(),
                    std::system_category().message(err), backoff.count());
                in_burst = true;
            }
            if (!transient_accept_error(err))
                log(log_level::error, "unexpected accept error {} ({}); the listener keeps retrying", err,
                    std::system_category().message(err));
            co_await sleep(backoff);
            backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
        }
    }
}

task<> run_listener(std::shared_ptr<server_state> st, listener* l) {
    std::exception_ptr failure;
    try {
        co_await accept_loop(st, l);
    } catch (...) {
        failure = std::current_exception();
    }
    // Stop the accept in flight, wait for it, then close the listening socket.
    socket_state* ss = l->sock.state_ptr();
    if (ss && ss->inflight > 0) ss->cancel_all();
    co_await l->sock.close();
    for (int fd : l->ready) ::close(fd);
    l->ready.clear();
    --st->accept_loops;
    st->check_done();
    if (failure) {
        try {
            std::rethrow_exception(failure);
        } catch (const cancelled_error&) {
            throw;
        } catch (...) {
            log(log_level::error, "accept loop failed: {}", describe(failure));
        }
    }
}

void start_listeners(const std::shared_ptr<server_state>& st) {
    // The streams' shared receive buffers, set up before the first client rather than with it.
    loop_core& loop = loop_core::running();
    (void)loop.stream_buffers();
    for (socket& s : st->sockets) {
        auto l = std::make_unique<listener>(s);
        l->loop = &loop;
        // (the epoll backend performs a multishot accept too: every waiting connection per readiness)
        l->multishot = loop.features().multishot_accept || loop.backend() == backend_kind::epoll;
        l->req.l = l.get();
        static constexpr io_ops accept_ops{
            [](io_request* r, io_uring_sqe* sqe) noexcept {
                listener* li = static_cast<listener::accept_request*>(r)->l;
                if (li->multishot)
                    io_uring_prep_multishot_accept(sqe, li->sock.fd(), nullptr, nullptr, SOCK_CLOEXEC);
                else
                    io_uring_prep_accept(sqe, li->sock.fd(), nullptr, nullptr, SOCK_CLOEXEC);
            },
            [](io_request* r, int res, std::uint32_t flags) noexcept {
                listener* li = static_cast<listener::accept_request*>(r)->l;
                if (res >= 0) {
                    try {
                        li->ready.push_back(res);
                    } catch (const std::bad_alloc&) {  // (a completion must not throw)
                        ::close(res);  // no memory for this connection: refused, as by the kernel
                        li->error = -ENOMEM;
                    }
                } else {
                    li->error = res;
                }
                bool done = !(flags & IORING_CQE_F_MORE);
                li->wake();
                if (done) {
                    li->armed = false;
                    li->sock.state_ptr()->end();  // last: may run the socket's idle hook
                }
            }};
        l->req.ops = &accept_ops;
        st->listeners.push_back(std::move(l));
    }
    for (auto& l : st->listeners) {
        ++st->accept_loops;
        (void)create_task(run_listener(st, l.get()));
    }
}

socket listen_on(const endpoint& ep, const server_options& o, bool v6only) {
    socket s = socket::create(ep.family(), SOCK_STREAM);
    if (ep.is_ip()) {
        if (o.reuse_address) s.set_reuse_address(true);
        if (o.reuse_port) s.set_reuse_port(true);
        if (v6only && ep.family() == AF_INET6) s.set_v6only(true);
    }
    s.bind(ep);
    s.listen(o.backlog);
    return s;
}

}  // namespace
}  // namespace detail

server::server(std::shared_ptr<detail::server_state> st) noexcept : st_(std::move(st)) {}

server& server::operator=(server&& o) noexcept {
    if (this != &o) {
        if (st_) close();
        st_ = std::move(o.st_);
    }
    return *this;
}

server::~server() {
    if (st_) close();
}

const std::vector<socket>& server::sockets() const {
    static const std::vector<socket> none;
    return st_ ? st_->sockets : none;
}

std::uint16_t server::port() const {
    if (!st_ || st_->sockets.empty() || !st_->sockets.front().valid()) return 0;
    return st_->sockets.front().local_endpoint().port();
}

bool server::is_serving() const noexcept { return st_ && !st_->closing; }
std::size_t server::connections() const noexcept { return st_ ? st_->conn_count : 0; }

void server::close() {
    if (!st_ || st_->closing) return;
    st_->closing = true;
    for (auto& l : st_->listeners) {
        detail::socket_state* ss = l->sock.state_ptr();
        if (!ss) continue;
        // shutdown(2) takes a listening socket out of LISTEN at once, so connections attempted
        // from now on are refused (as after asyncio's close); the fd itself is closed once the
        // accept in flight has completed (no fd-reuse race).
        ::shutdown(ss->fd, SHUT_RDWR);
        if (ss->inflight > 0) ss->cancel_all();
        l->wake();
    }
    // Only the file this server bound: another server may have bound the path since (its file
    // replacing ours), and that one must stay (asyncio 3.13 checks the inode too).
    if (st_->unix_file) {
        struct stat sb {};
        if (::stat(st_->unix_path.c_str(), &sb) == 0 && S_ISSOCK(sb.st_mode) &&
            std::pair(sb.st_dev, sb.st_ino) == *st_->unix_file)
            ::unlink(st_->unix_path.c_str());
    }
    st_->closed.set();
    st_->check_done();
}

task<> server::wait_closed() {
    if (!st_) co_return;
    auto st = st_;
    co_await st->all_done.wait();
}

void server::close_clients() {
    if (!st_) return;
    st_->conns.for_each([](detail::connection* c) { c->stream->close(); });
}

void server::abort_clients() {
    if (!st_) return;
    st_->conns.for_each([](detail::connection* c) { c->stream->abort(); });
}

task<> server::serve_forever() {
    if (!st_) throw invalid_state_error("ringio: serve_forever on an empty server");
    auto st = st_;
    try {
        co_await st->closed.wait();
    } catch (const cancelled_error&) {
        close();
        throw;
    }
}

task<server> start_server(connection_handler handler, std::string host, std::uint16_t port, server_options options) {
    std::vector<std::string> hosts;  // (no braced list: start_server below is a coroutine)
    hosts.push_back(std::move(host));
    return start_server(std::move(handler), std::move(hosts), port, options);
}

task<server> start_server(connection_handler handler, std::vector<std::string> hosts, std::uint16_t port,
                          server_options options) {
    if (hosts.empty()) throw make_system_error(EADDRNOTAVAIL, "ringio: start_server: no host to listen on");
    auto st = std::make_shared<detail::server_state>();
    st->handler = std::move(handler);
    st->options = options;
    resolve_options ro;
    ro.passive = true;
    std::vector<task<std::vector<endpoint>>> lookups;
    for (const std::string& host : hosts) lookups.push_back(resolve(host, port, ro));
    const std::vector<std::vector<endpoint>> resolved = co_await gather(std::move(lookups));
    // Every address once, in the order of the hosts; `from` is the host that named it first.
    std::vector<endpoint> eps;
    std::vector<std::size_t> from;
    for (std::size_t h = 0; h < hosts.size(); ++h)
        for (const endpoint& ep : resolved[h])
            if (std::find(eps.begin(), eps.end(), ep) == eps.end()) {
                eps.push_back(ep);
                from.push_back(h);
            }
    const bool several = eps.size() > 1;  // then an IPv6 socket is V6ONLY, leaving IPv4 to its own
    std::vector<endpoint> bound;          // (as resolved: port 0 where 0 was asked)
    for (std::size_t i = 0; i < eps.size(); ++i) {
        endpoint ep = eps[i];
        if (port == 0 && !st->sockets.empty())  // port 0: every address on the first one's port
            ep = endpoint(ep.address(), st->sockets.front().local_endpoint().port());
        try {
            st->sockets.push_back(detail::listen_on(ep, options, several));
            bound.push_back(eps[i]);
        } catch (const std::system_error& e) {
            // An address family the machine lacks (no IPv6) is skipped for a host that has
            // addresses of another (a name, or "" for every interface); each host must get one.
            const int err = e.code().value();
            if (resolved[from[i]].size() > 1 && (err == EAFNOSUPPORT || err == EADDRNOTAVAIL)) continue;
            throw;
        }
    }
    for (std::size_t h = 0; h < hosts.size(); ++h) {
        auto is_bound = [&bound](const endpoint& ep) { return std::find(bound.begin(), bound.end(), ep) != bound.end(); };
        if (std::none_of(resolved[h].begin(), resolved[h].end(), is_bound))
            throw make_system_error(EADDRNOTAVAIL, fmt::format("ringio: no address to listen on for '{}'", hosts[h]));
    }
    server srv(st);
    detail::start_listeners(st);
    co_return srv;
}

task<server> start_unix_server(connection_handler handler, std::string path, server_options options) {
    auto st = std::make_shared<detail::server_state>();
    st->handler = std::move(handler);
    st->options = options;
    st->unix_path = path;
    endpoint ep = endpoint::unix_path(path);
    if (!ep.is_abstract()) {
        struct stat sb {};
        if (::stat(path.c_str(), &sb) == 0 && S_ISSOCK(sb.st_mode)) ::unlink(path.c_str());
    }
    st->sockets.push_back(detail::listen_on(ep, options, false));
    if (!ep.is_abstract()) {
        struct stat sb {};
        if (::stat(path.c_str(), &sb) == 0) st->unix_file = std::pair(sb.st_dev, sb.st_ino);
    }
    server srv(st);
    detail::start_listeners(st);
    co_return srv;
}

}  // namespace ringio
