#include "ringio/datagram.hpp"

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>

#include <fmt/format.h>

#include "ringio/detail/buffer_ring.hpp"
#include "ringio/detail/intrusive_list.hpp"
#include "ringio/event.hpp"
#include "ringio/mutex.hpp"

namespace ringio {
namespace detail {

/// A receive waiting for a datagram from the multishot ring: an interrupt point (a cancelled
/// receive leaves the queue and takes no datagram).
struct recv_waiter : list_node, suspension {
    std::span<std::byte> buf;
    datagram result;
    int error = 0;  // -errno delivered instead of a datagram
    bool closed = false;  // the endpoint was closed while waiting
};

class datagram_state {
public:
    explicit datagram_state(socket s) : sock(std::move(s)) {}
    ~datagram_state() = default;

    socket sock;
    int family = AF_INET;
    std::optional<endpoint> remote;
    bool closing = false;
    mutex recv_turn;  // one recvmsg in flight at a time without multishot: receivers in FIFO order
    // Tasks inside recv_from. The state is freed only when none is left (they hold references
    // to it) and no operation is in flight.
    std::size_t receivers = 0;
    bool orphaned = false;  // the endpoint object is gone: free when idle
    event receivers_gone;

    /// Frees an orphaned state once nothing refers to it any more.
    void maybe_free() noexcept {
        if (orphaned && receivers == 0 && sock.in_flight() == 0) delete this;
    }

    /// Who sent a datagram that came without an address: the peer of a connected endpoint, or
    /// an unbound Unix socket (an unnamed Unix endpoint).
    [[nodiscard]] endpoint nameless_sender() const {
        if (remote) return *remote;
        if (family == AF_UNIX) {
            sockaddr_un sa{};
            sa.sun_family = AF_UNIX;
            return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&sa), sizeof(sa_family_t));
        }
        return endpoint{};
    }

    // ---- the multishot receive (when enabled) ----
    std::unique_ptr<buffer_ring> ring;
    struct recv_request : io_request {
        datagram_state* st = nullptr;
    } recv_req;
    msghdr ms_hdr{};  // sizes reserved for the name and control parts of each buffer
    bool armed = false;
    loop_core* loop = nullptr;
    struct ready_datagram {
        std::uint16_t bid;
        unsigned len;
    };
    std::deque<ready_datagram> ready;  // received, no waiter yet (each holds a ring buffer)
    int pending_error = 0;             // an error with no waiter to take it (-errno)
    intrusive_list<recv_waiter> waiters;

    void setup_multishot(loop_core& l, const datagram_options& o) {
        loop = &l;
        ms_hdr.msg_namelen = sizeof(sockaddr_storage);
        std::size_t size = sizeof(io_uring_recvmsg_out) + sizeof(sockaddr_storage) + o.max_datagram;
        size = (size + 63) & ~std::size_t{63};  // each buffer starts aligned for its header
        ring = std::make_unique<buffer_ring>(l, o.ring_buffers, size);
        recv_req.st = this;
        static constexpr io_ops recv_ops{
            [](io_request* r, io_uring_sqe* sqe) noexcept {
                datagram_state* st = static_cast<recv_request*>(r)->st;
                io_uring_prep_recvmsg_multishot(sqe, st->sock.fd(), &st->ms_hdr, 0);
                sqe->flags |= IOSQE_BUFFER_SELECT;
                sqe->buf_group = st->ring->group();
            },
            [](io_request* r, int res, std::uint32_t flags) noexcept { static_cast<recv_request*>(r)->st->on_recv(res, flags); }};
        recv_req.ops = &recv_ops;
    }

    // Submitted at the end of the pass (never fails here: it also runs from completions).
    void arm() noexcept {
        if (armed || closing) return;
        armed = true;
        socket_state* ss = sock.state_ptr();
        ss->attach(loop);
        ss->begin();
        loop->submit_later(&recv_req);
    }

    /// Copies datagram buffer `bid` into the waiter's buffer and gives it back to the kernel.
    void copy_out(recv_waiter* w, std::uint16_t bid, unsigned len) noexcept {
        std::byte* buf = ring->buffer(bid);
        io_uring_recvmsg_out* out = io_uring_recvmsg_validate(buf, static_cast<int>(len), &ms_hdr);
        if (!out) {
            w->error = -EBADMSG;
        } else {
            auto* payload = static_cast<std::byte*>(io_uring_recvmsg_payload(out, &ms_hdr));
            unsigned have = io_uring_recvmsg_payload_length(out, static_cast<int>(len), &ms_hdr);
            std::size_t n = std::min<std::size_t>(have, w->buf.size());
            std::memcpy(w->buf.data(), payload, n);
            w->result.size = n;
            // payloadlen is the datagram's real size, even when it did not fit.
            w->result.truncated = (out->flags & MSG_TRUNC) || out->payloadlen > w->buf.size();
            try {
                w->result.sender = out->namelen > 0
                                       ? endpoint::from_sockaddr(static_cast<sockaddr*>(io_uring_recvmsg_name(out)),
                                                                 std::min<socklen_t>(out->namelen, ms_hdr.msg_namelen))
                                       : nameless_sender();
            } catch (const std::exception&) {
            }
        }
        ring->recycle(bid);
        if (!armed && !closing) arm();  // a buffer is free again (after ENOBUFS)
    }

    void deliver(recv_waiter* w, std::uint16_t bid, unsigned len) noexcept {
        copy_out(w, bid, len);
        finish(w);
    }

    void finish(recv_waiter* w) noexcept {
        intrusive_list<recv_waiter>::erase(w);
        w->wake();
    }

    void on_recv(int res, std::uint32_t flags) noexcept {
        bool more = flags & IORING_CQE_F_MORE;
        if (res >= 0 && (flags & IORING_CQE_F_BUFFER)) {
            auto bid = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
            ring->taken();
            if (recv_waiter* w = waiters.front())
                deliver(w, bid, static_cast<unsigned>(res));
            else
                try {
                    ready.push_back({bid, static_cast<unsigned>(res)});
                } catch (const std::bad_alloc&) {  // (a completion must not throw)
                    ring->recycle(bid);  // no memory to queue it: dropped, as a full socket buffer would
                }
        } else if (res < 0 && res != -ENOBUFS && res != -ECANCELED) {
            // An error for the socket (ICMP port unreachable on a connected endpoint, ...):
            // the first waiter gets it, or the next receive does.
            if (recv_waiter* w = waiters.front()) {
                w->error = res;
                finish(w);
            } else {
                pending_error = res;
            }
        }
        if (!more) {
            armed = false;
            // Re-arm at once while someone waits. After ENOBUFS too: with a waiter present no
            // datagram is queued, so every buffer is back in the ring. Without one, the next
            // receive (or a buffer given back) re-arms.
            if (!waiters.empty() && !closing && pending_error == 0) arm();
            sock.state_ptr()->end();  // last: may run the socket's idle hook
        }
    }

    void close_waiters() noexcept {
        while (recv_waiter* w = waiters.front()) {
            w->closed = true;
            finish(w);
        }
    }
};

namespace {

[[noreturn]] void throw_errno(int err, const std::string& what) { throw make_system_error(err, what); }

struct recv_awaiter {
    datagram_state* st;
    recv_waiter w;

    bool await_ready() noexcept {
        if (st->pending_error != 0) {
            w.error = std::exchange(st->pending_error, 0);
            return true;
        }
        if (st->ready.empty()) return false;
        auto d = st->ready.front();
        st->ready.pop_front();
        st->copy_out(&w, d.bid, d.len);
        return true;
    }
    bool await_suspend(std::coroutine_handle<> h) {
        if (!w.begin(h)) return false;
        st->arm();
        st->waiters.push_back(&w);
        w.arm([](suspension* sp) noexcept {
            auto* rw = static_cast<recv_waiter*>(sp);
            intrusive_list<recv_waiter>::erase(rw);
            rw->wake(true);
        });
        return true;
    }
    datagram await_resume() {
        w.resume();
        // st may be gone already when the endpoint was closed under us: use only the waiter.
        if (w.closed) throw_errno(EBADF, "ringio: datagram endpoint closed");
        if (w.error != 0) {
            std::string where = st->remote ? fmt::format("ringio: receive from {}", *st->remote) : "ringio: receive";
            throw_errno(-w.error, where);
        }
        return std::move(w.result);
    }
};

}  // namespace
}  // namespace detail

datagram_endpoint::datagram_endpoint() noexcept = default;
datagram_endpoint::datagram_endpoint(std::unique_ptr<detail::datagram_state> st) noexcept : st_(std::move(st)) {}
datagram_endpoint::datagram_endpoint(datagram_endpoint&&) noexcept = default;
datagram_endpoint& datagram_endpoint::operator=(datagram_endpoint&&) noexcept = default;

datagram_endpoint::~datagram_endpoint() {
    if (!st_) return;
    detail::datagram_state* st = st_.get();
    st->closing = true;
    st->close_waiters();
    if (st->sock.in_flight() == 0 && st->receivers == 0) return;  // the socket closes with the state
    // Operations in flight (the multishot receive) or receivers still unwinding: cancel what is
    // in flight and free the state (with its buffer ring) when the last of them is done.
    st_.release();
    st->orphaned = true;
    detail::socket_state* ss = st->sock.state_ptr();
    ss->idle_ctx = st;
    ss->idle_hook = [](void* p) noexcept { static_cast<detail::datagram_state*>(p)->maybe_free(); };
    // TRICKY: a receive not submitted yet completes inside cancel_io, and its completion may
    // run the idle hook that frees the state: pinned (as a receiver) until both cancels are out.
    ++st->receivers;
    if (st->armed) st->loop->cancel_io(&st->recv_req);
    ss->cancel_all();
    --st->receivers;
    st->maybe_free();
}

namespace {
detail::datagram_state& need(const std::unique_ptr<detail::datagram_state>& st) {
    if (!st || st->closing) throw invalid_state_error("ringio: datagram endpoint is closed");
    return *st;
}
}  // namespace

task<> datagram_endpoint::send_to(std::span<const std::byte> data, const endpoint& to) {
    detail::datagram_state& st = need(st_);
    endpoint dest = to;
    iovec iov{const_cast<std::byte*>(data.data()), data.size()};
    msghdr msg{};
    msg.msg_name = dest.data();
    msg.msg_namelen = dest.size();
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    int fd = st.sock.fd();
    io_result r = co_await st.sock.op(
        [&](io_uring_sqe* s) noexcept { io_uring_prep_sendmsg(s, fd, &msg, MSG_NOSIGNAL); });
    if (!r) detail::throw_errno(-r.res, fmt::format("ringio: send to {}", dest));
}

task<> datagram_endpoint::send(std::span<const std::byte> data) {
    detail::datagram_state& st = need(st_);
    if (!st.remote) throw make_system_error(EDESTADDRREQ, "ringio: send on an unconnected datagram endpoint");
    int fd = st.sock.fd();
    io_result r = co_await st.sock.op(
        [&](io_uring_sqe* s) noexcept { io_uring_prep_send(s, fd, data.data(), data.size(), MSG_NOSIGNAL); });
    if (!r) detail::throw_errno(-r.res, fmt::format("ringio: send to {}", *st.remote));
}

task<datagram> datagram_endpoint::recv_from(std::span<std::byte> buf) {
    detail::datagram_state& st = need(st_);
    struct receiver_scope {
        detail::datagram_state& s;
        explicit receiver_scope(detail::datagram_state& d) : s(d) { ++s.receivers; }
        ~receiver_scope() {
            if (--s.receivers == 0) {
                s.receivers_gone.set();
                s.maybe_free();  // last: may free the state
            }
        }
    } scope(st);
    if (st.ring) {
        detail::recv_awaiter a{&st, {}};
        a.w.buf = buf;
        co_return co_await a;
    }
    // One recvmsg straight into the caller's buffer; receivers take turns in arrival order (the
    // kernel would wake several pending receives in no particular order).
    mutex_guard turn = co_await st.recv_turn.scoped_lock();
    if (st.closing) detail::throw_errno(EBADF, "ringio: datagram endpoint closed");
    datagram d;
    iovec iov{buf.data(), buf.size()};
    msghdr msg{};
    msg.msg_name = d.sender.data();
    msg.msg_namelen = endpoint::capacity();
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    int fd = st.sock.fd();
    io_result r = co_await st.sock.op([&](io_uring_sqe* s) noexcept { io_uring_prep_recvmsg(s, fd, &msg, MSG_TRUNC); });
    if (!r) {
        if (r.res == -ECANCELED && st.closing) detail::throw_errno(EBADF, "ringio: datagram endpoint closed");
        detail::throw_errno(-r.res, st.remote ? fmt::format("ringio: receive from {}", *st.remote) : "ringio: receive");
    }
    // With MSG_TRUNC in the flags, the result is the datagram's real length.
    d.truncated = (msg.msg_flags & MSG_TRUNC) || r.value() > buf.size();
    d.size = std::min(r.value(), buf.size());
    d.sender.resize(msg.msg_namelen);
    if (msg.msg_namelen == 0) d.sender = st.nameless_sender();
    co_return d;
}

endpoint datagram_endpoint::local_endpoint() const { return need(st_).sock.local_endpoint(); }
std::optional<endpoint> datagram_endpoint::remote_endpoint() const { return need(st_).remote; }
bool datagram_endpoint::is_closing() const noexcept { return !st_ || st_->closing; }
bool datagram_endpoint::multishot() const noexcept { return st_ && st_->ring; }
const socket& datagram_endpoint::transport() const { return need(st_).sock; }

task<> datagram_endpoint::close() {
    if (!st_ || st_->closing) co_return;
    detail::datagram_state* st = st_.get();
    st->closing = true;
    st->close_waiters();
    if (st->armed) st->loop->cancel_io(&st->recv_req);
    co_await st->sock.close();  // cancels the rest and waits for every completion
    if (st->receivers > 0) co_await st->receivers_gone.wait();  // they hold references to *st
    st_.reset();
}

// ---- multicast ----

namespace {
void set_opt(socket& s, int level, int name, const void* v, socklen_t n) { s.set_option_raw(level, name, v, n); }
}  // namespace

void datagram_endpoint::join_group(const ip_address& group, unsigned interface_index) {
    socket& s = need(st_).sock;
    if (group.is_v4()) {
        ip_mreqn m{};
        std::memcpy(&m.imr_multiaddr, group.bytes().data(), 4);
        m.imr_ifindex = static_cast<int>(interface_index);
        set_opt(s, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof m);
    } else {
        ipv6_mreq m{};
        std::memcpy(&m.ipv6mr_multiaddr, group.bytes().data(), 16);
        m.ipv6mr_interface = interface_index;
        set_opt(s, IPPROTO_IPV6, IPV6_JOIN_GROUP, &m, sizeof m);
    }
}

void datagram_endpoint::join_group(const ip_address& group, const ip_address& interface_address) {
    if (!group.is_v4() || !interface_address.is_v4())
        throw std::invalid_argument("ringio: joining by interface address is IPv4 only; use an interface index");
    ip_mreqn m{};
    std::memcpy(&m.imr_multiaddr, group.bytes().data(), 4);
    std::memcpy(&m.imr_address, interface_address.bytes().data(), 4);
    set_opt(need(st_).sock, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof m);
}

void datagram_endpoint::leave_group(const ip_address& group, unsigned interface_index) {
    socket& s = need(st_).sock;
    if (group.is_v4()) {
        ip_mreqn m{};
        std::memcpy(&m.imr_multiaddr, group.bytes().data(), 4);
        m.imr_ifindex = static_cast<int>(interface_index);
        set_opt(s, IPPROTO_IP, IP_DROP_MEMBERSHIP, &m, sizeof m);
    } else {
        ipv6_mreq m{};
        std::memcpy(&m.ipv6mr_multiaddr, group.bytes().data(), 16);
        m.ipv6mr_interface = interface_index;
        set_opt(s, IPPROTO_IPV6, IPV6_LEAVE_GROUP, &m, sizeof m);
    }
}

void datagram_endpoint::leave_group(const ip_address& group, const ip_address& interface_address) {
    if (!group.is_v4() || !interface_address.is_v4())
        throw std::invalid_argument("ringio: leaving by interface address is IPv4 only; use an interface index");
    ip_mreqn m{};
    std::memcpy(&m.imr_multiaddr, group.bytes().data(), 4);
    std::memcpy(&m.imr_address, interface_address.bytes().data(), 4);
    set_opt(need(st_).sock, IPPROTO_IP, IP_DROP_MEMBERSHIP, &m, sizeof m);
}

void datagram_endpoint::set_multicast_ttl(int ttl) {
    socket& s = need(st_).sock;
    if (s.local_endpoint().family() == AF_INET6)
        s.set_option<int>(IPPROTO_IPV6, IPV6_MULTICAST_HOPS, ttl);
    else
        s.set_option<int>(IPPROTO_IP, IP_MULTICAST_TTL, ttl);
}

void datagram_endpoint::set_multicast_loopback(bool on) {
    socket& s = need(st_).sock;
    if (s.local_endpoint().family() == AF_INET6)
        s.set_option<int>(IPPROTO_IPV6, IPV6_MULTICAST_LOOP, on);
    else
        s.set_option<int>(IPPROTO_IP, IP_MULTICAST_LOOP, on);
}

void datagram_endpoint::set_multicast_interface(const ip_address& interface_address) {
    if (!interface_address.is_v4()) throw std::invalid_argument("ringio: use an interface index for IPv6");
    in_addr a{};
    std::memcpy(&a, interface_address.bytes().data(), 4);
    set_opt(need(st_).sock, IPPROTO_IP, IP_MULTICAST_IF, &a, sizeof a);
}

void datagram_endpoint::set_multicast_interface(unsigned interface_index) {
    socket& s = need(st_).sock;
    if (s.local_endpoint().family() == AF_INET6) {
        s.set_option<unsigned>(IPPROTO_IPV6, IPV6_MULTICAST_IF, interface_index);
    } else {
        ip_mreqn m{};
        m.imr_ifindex = static_cast<int>(interface_index);
        set_opt(s, IPPROTO_IP, IP_MULTICAST_IF, &m, sizeof m);
    }
}

// ---- creation ----

task<datagram_endpoint> create_datagram_endpoint(std::optional<endpoint> local, std::optional<endpoint> remote,
                                                 datagram_options options) {
    if (local && remote && local->family() != remote->family())
        throw std::invalid_argument("ringio: local and remote addresses of different families");
    int family = local ? local->family() : remote ? remote->family() : (options.family ? options.family : AF_INET);
    socket s = socket::create(family, SOCK_DGRAM);
    if (family != AF_UNIX) {
        if (options.reuse_address) s.set_reuse_address(true);
        if (options.reuse_port) s.set_reuse_port(true);
        if (options.allow_broadcast) s.set_broadcast(true);
        if (family == AF_INET6 && options.v6only) s.set_v6only(*options.v6only);
    }
    if (options.recv_buffer_size) s.set_recv_buffer_size(*options.recv_buffer_size);
    if (options.send_buffer_size) s.set_send_buffer_size(*options.send_buffer_size);
    if (local) s.bind(*local);
    if (remote) co_await s.connect(*remote);
    auto st = std::make_unique<detail::datagram_state>(std::move(s));
    st->family = family;
    st->remote = remote;
    detail::loop_core& loop = detail::loop_core::running();
    if (options.multishot && loop.features().recv_multishot && loop.features().buf_ring) {
        try {
            st->setup_multishot(loop, options);
        } catch (const std::system_error&) {
            st->ring.reset();  // the kernel refused the ring: one recvmsg per receive instead
        }
    }
    co_return datagram_endpoint(std::move(st));
}

}  // namespace ringio
