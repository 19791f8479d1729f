// The stream state's life: construction, the peer's address, closing (close, abort, wait_closed).
#include "ringio/stream.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "ringio/errors.hpp"
#include "stream_state.hpp"

namespace ringio {
namespace detail {

stream_state::stream_state(socket s, std::size_t lim) : sock(std::move(s)), limit(lim), loop_(&loop_core::running()) {
    if (limit == 0) throw std::invalid_argument("ringio: stream limit must be positive");
    // Receiving into the loop's shared buffers (registered with the ring, or in userspace on
    // the epoll backend): an idle connection holds none. Without them (stream_buffers = 0, old
    // kernels) one receive per read, into rbuf or the caller's memory.
    bufs_ = loop_->stream_buffers();
    if (bufs_) {
        static constexpr io_ops ring_recv_ops{
            [](io_request* r, io_uring_sqe* sqe) noexcept {
                stream_state* st = of(static_cast<stream_recv_request*>(r));
                st->recycled_mark_ = st->bufs_->recycled();
                if (st->loop_->features().recv_multishot)
                    io_uring_prep_recv_multishot(sqe, st->sock.fd(), nullptr, 0, 0);
                else
                    io_uring_prep_recv(sqe, st->sock.fd(), nullptr, 0, 0);
                sqe->flags |= IOSQE_BUFFER_SELECT;
                sqe->buf_group = st->bufs_->group();
            },
            [](io_request* r, int res, std::uint32_t flags) noexcept { of(static_cast<stream_recv_request*>(r))->on_recv(res, flags); }};
        recv_req().ops = &ring_recv_ops;
        buffers_back().ready = [](buffer_waiter* w) noexcept {
            stream_state* st = of(static_cast<stream_buffers_back*>(w));
            st->arm_recv();  // even if its reader left: the next buffer returned must wake someone
        };
    } else {
        direct_recv_ = nullptr;  // (the union's other member)
    }
    socket_state* ss = sock.state_ptr();
    ss->attach(loop_);
    ss->idle_hook = &stream_state::on_socket_idle;
    ss->idle_ctx = this;
    // Recorded now: after a reset or a close, getpeername can no longer tell, and error
    // messages and peername() must still name the peer.
    try {
        endpoint e = sock.remote_endpoint();
        const sa_family_t family = e.size() >= sizeof(sa_family_t) ? e.data()->sa_family : AF_UNSPEC;
        const bool fits = (family == AF_INET && e.size() == sizeof(sockaddr_in)) ||
                          (family == AF_INET6 && e.size() == sizeof(sockaddr_in6)) ||
                          (family == AF_UNIX && e.size() == sizeof(sa_family_t));
        if (fits) {
            std::memcpy(&peer_addr_, e.data(), e.size());
        } else if (e.size() != 0) {
            peer_big_ = std::make_unique<endpoint>(e);
        }
    } catch (const std::system_error&) {
    }
}

stream_state::~stream_state() {
    free_write_side();
    if (bufs_) {
        buffer_ring::cancel_wait(&buffers_back());
        for (; chunk_count_ > 0; --chunk_count_, chunk_head_ = (chunk_head_ + 1) % max_chunks)
            bufs_->recycle(chunks_[chunk_head_].bid);
    }
}

void stream_state::release() noexcept {
    if (--refs_ != 0) return;
    // Both halves are gone. An abandoned connection is flushed and closed, never leaked; the
    // state lives on while that happens (the send holds its own reference). TRICKY: the
    // reference taken around close() keeps a completion that close() runs at once (a receive
    // not yet submitted) from freeing this under it through the idle hook.
    if (phase_ == phase::open) {
        ++refs_;
        close();
        --refs_;
    }
    if (phase_ == phase::closed && !send_queued_ && sock.in_flight() == 0) delete this;
}

endpoint stream_state::peer() const noexcept {
    if (peer_big_) return *peer_big_;
    endpoint e;  // byte for byte what getpeername gave, whatever the family (as remote_endpoint())
    std::memcpy(e.data(), &peer_addr_, peer_len());
    e.resize(peer_len());
    return e;
}

socklen_t stream_state::peer_len() const noexcept {
    switch (peer_addr_.sa.sa_family) {
    case AF_INET: return sizeof(sockaddr_in);
    case AF_INET6: return sizeof(sockaddr_in6);
    case AF_UNIX: return sizeof(sa_family_t);  // an unnamed peer (a named one is in peer_big_)
    default: return 0;                         // unknown
    }
}

endpoint stream_state::local() const {
    // Not cached: rarely asked for, and 144 bytes in every connection's state.
    return sock.valid() ? sock.local_endpoint() : endpoint{};
}

std::system_error stream_state::io_error(int err, const char* what) {
    return make_system_error(err, fmt::format("ringio: {} {}", what, peer()));
}

// ---- reading ----

void stream_state::begin_read() {
    if (reading_)
        throw invalid_state_error("ringio: another task is already reading from this stream");
    reading_ = true;
}


void stream_state::close() {
    if (phase_ != phase::open) return;
    phase_ = phase::closing;
    stop_receiving();  // a pending read ends at once: with what had arrived, else EOF
    maybe_finish_close();
}

void stream_state::abort() {
    if (phase_ == phase::closed) return;
    aborted_ = true;
    if (ws_) {
        ws_->pending.clear();
        // (With a send in flight the kernel may hold the buffers: on_sent drops them.)
        if (!send_queued_) ws_->adopted.reset();
        drop_write_side();
    }
    if (sock.valid()) {
        try {
            sock.set_linger(std::chrono::seconds(0));  // close() then sends RST
        } catch (const std::system_error&) {
        }
    }
    if (phase_ == phase::open) {
        phase_ = phase::closing;
        stop_receiving();
    }
    maybe_finish_close();
}

void stream_state::maybe_finish_close() noexcept {
    if (phase_ != phase::closing) return;
    if (send_queued_ && !aborted_) return;  // still flushing; on_sent() calls again
    socket_state* ss = sock.state_ptr();
    if (ss->inflight > 0) {
        ss->cancel_all();  // the idle hook finishes the close
        return;
    }
    finish_close();
}

void stream_state::finish_close() noexcept {
    phase_ = phase::closed;
    if (bufs_) {
        buffer_ring::cancel_wait(&buffers_back());
        // What arrived stays readable, in the stream's own memory: a closed stream may be kept
        // for long, and must not keep ring buffers other connections need.
        spill_all();
        wake_reader();
    }
    sock = socket();  // closes it (nothing is in flight), without release()'s work (restoring O_NONBLOCK)
    if (closed_event_) closed_event_->set();
    wake_drainer();
}

void stream_state::on_socket_idle(void* self) noexcept {
    auto* st = static_cast<stream_state*>(self);
    st->maybe_finish_close();
    if (st->phase_ == phase::closed && st->refs_ == 0 && !st->send_queued_) delete st;
}

task<> stream_state::wait_closed() {
    add_ref();
    struct releaser {
        stream_state* s;
        ~releaser() { s->release(); }
    } guard{this};
    if (phase_ == phase::closed) co_return;
    if (!closed_event_) closed_event_ = std::make_unique<event>();
    co_await closed_event_->wait();
}

}  // namespace detail

// ---- construction ----

std::pair<stream_reader, stream_writer> make_streams(socket connected, stream_options options) {
    auto* st = new detail::stream_state(std::move(connected), options.limit);
    st->read_timeout = options.read_timeout.value_or(detail::stream_state::no_timeout);
    st->add_ref();
    st->add_ref();
    return {stream_reader(st), stream_writer(st)};
}

}  // namespace ringio

// Every connection keeps one for its whole life (bench/README.md, idle memory): 248 bytes, 256
// with malloc's header. The reader's suspension and the explicit phases cost nothing over the
// flags they replaced; the write side (112 bytes) exists only while something is being written.
static_assert(sizeof(void*) != 8 || sizeof(ringio::detail::stream_state) <= 248, "stream_state grew past 248 bytes");
