// Receiving: the shared buffer ring's receive, the reader's wait for data (arrival), and the
// one receive per read used without the ring.
#include "ringio/stream.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "ringio/errors.hpp"
#include "stream_state.hpp"

namespace ringio::detail {

//
// The first read that finds nothing buffered arms the stream's receive, which selects its
// buffers from the loop's ring (IOSQE_BUFFER_SELECT): the kernel takes a buffer only when data
// arrives, the reader copies straight out of it and gives it back, so a buffer is held only
// from the data's arrival to its reading, never by an idle connection. Where the kernel has it
// the receive is multishot: armed once, it stays armed across reads (no SQE and no poll to set
// up per read). It is paused (cancelled) when more than pause_mark piles up for a reader that
// is not reading, so a fast peer cannot fill the server's memory, and armed again by the next
// read that finds nothing. Every final completion (EOF, an error, our cancel, or -ENOBUFS,
// which is how a FIN that arrives while the ring is dry shows up) leaves it unarmed; a waiting
// reader arms it again at once (or when a buffer comes back), any other by its next read.
// Without multishot (the epoll backend, kernels before 6.0) the same receive is one-shot.
//
// A read into more memory than a ring buffer holds receives straight into it instead (see
// recv_into), so bulk reads are neither cut into ring-buffer pieces nor copied; only while no
// receive is armed, so a stream that read through the ring before stays with it.

void stream_state::arm_recv() {
    if (armed_ || recv_done()) return;
    armed_ = true;
    // No reference: the socket's in-flight count keeps this state alive until the receive
    // ends, and the reader and writer going away must still close the connection.
    socket_state* ss = sock.state_ptr();
    ss->begin();
    loop_->submit_later(&recv_req());
}

void stream_state::push_chunk(std::uint16_t bid, std::uint32_t len) noexcept {
    if (chunk_count_ == max_chunks) spill_front();
    chunks_[(chunk_head_ + chunk_count_) % max_chunks] = chunk{bid, 0, len};
    ++chunk_count_;
}

void stream_state::spill_front() noexcept {
    chunk& c = chunks_[chunk_head_];
    std::size_t n = c.len - c.off;
    try {
        std::memcpy(rbuf.prepare(n).data(), bufs_->buffer(c.bid) + c.off, n);
        rbuf.commit(n);
    } catch (const std::bad_alloc&) {
        // Out of memory for the data: fail the connection rather than lose bytes silently.
        if (recv_error_ == 0) recv_error_ = ENOMEM;
    }
    bufs_->recycle(c.bid);
    chunk_head_ = (chunk_head_ + 1) % max_chunks;
    --chunk_count_;
}

void stream_state::spill_all() noexcept {
    while (chunk_count_ > 0) spill_front();
}

std::size_t stream_state::copy_received(std::span<std::byte> out) noexcept {
    std::size_t done = 0;
    while (chunk_count_ > 0 && done < out.size()) {
        chunk& c = chunks_[chunk_head_];
        std::size_t n = std::min<std::size_t>(c.len - c.off, out.size() - done);
        std::memcpy(out.data() + done, bufs_->buffer(c.bid) + c.off, n);
        done += n;
        c.off += static_cast<std::uint32_t>(n);
        if (c.off == c.len) {
            bufs_->recycle(c.bid);
            chunk_head_ = (chunk_head_ + 1) % max_chunks;
            --chunk_count_;
        }
    }
    // The rest goes to rbuf: a buffer is never held while the reader's caller runs (it may
    // wait on something that needs this very buffer back, e.g. its own drain()).
    spill_all();
    return done;
}

void stream_state::on_recv(int res, std::uint32_t flags) noexcept {
    if (flags & IORING_CQE_F_BUFFER) {
        auto bid = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
        bufs_->taken();
        // Received is received: kept even if the stream began closing meanwhile (a read then
        // gets it before EOF, as without the ring).
        if (res > 0)
            push_chunk(bid, static_cast<std::uint32_t>(res));
        else
            bufs_->recycle(bid);
    }
    if (res == -ENOBUFS) bufs_->ran_dry();
    if (res == 0)
        eof_received_ = true;
    else if (res < 0 && res != -ENOBUFS && res != -ECANCELED && res != -EINTR && recv_error_ == 0)
        recv_error_ = static_cast<std::uint16_t>(-res);
    // Nobody to hand the buffer to (no read in progress, or the receive was armed when a buffer
    // came back): it goes back now. A reader woken and not yet run takes it itself.
    suspension::state reader = static_cast<stream_reader_wait&>(*this).current_state();
    if (reader == suspension::state::idle) spill_all();
    if (flags & IORING_CQE_F_MORE) {
        // A multishot receive goes on. Paused (cancelled) once a reader that is not reading lets
        // more than the pause mark pile up: data is taken from the kernel only about as fast
        // as the reader asks for it (its final completion comes later and may still bring data).
        if (reader != suspension::state::waiting && !pausing_ && buffered() > pause_mark) {
            pausing_ = true;
            loop_->cancel_io(&recv_req());
        }
        if (reader == suspension::state::waiting && chunk_count_ > 0) wake_reader();
        return;
    }
    // The receive has ended. Whatever ended it (EOF, an error, our cancel, or -ENOBUFS: a FIN
    // that arrives while the ring is dry ends a multishot receive that way), it is armed again
    // below while a reader waits, or by the next read.
    pausing_ = false;
    armed_ = false;
    bool waiting = reader == suspension::state::waiting;
    bool arrived = chunk_count_ > 0;
    if (waiting && !arrived && !recv_done()) {
        // Out of buffers (ENOBUFS) while a reader waits. If no buffer came back since the
        // receive was armed, wait for one (every taken buffer is about to be read and given
        // back); otherwise try again at once.
        if (res == -ENOBUFS && bufs_->recycled() == recycled_mark_)
            bufs_->wait(&buffers_back());
        else
            arm_recv();
    }
    if (waiting && (arrived || recv_done())) wake_reader();
    sock.state_ptr()->end();  // last: may finish a close and free this
}

void stream_state::wake_reader() noexcept {
    if (reader_waiting()) reader_wait().wake();
}

stream_state::arrival stream_state::arrived(std::size_t had, bool spill) noexcept {
    spill_on_arrival_ = spill;
    return arrival{this, had};
}

std::size_t stream_state::take_into(std::span<std::byte> buf) noexcept {
    if (rbuf.empty()) return copy_received(buf);
    spill_all();  // (behind rbuf: no ring buffer stays taken while the caller runs)
    std::size_t n = std::min(buf.size(), rbuf.size());  // spilled while the reader waited to run
    std::memcpy(buf.data(), rbuf.data(), n);
    rbuf.consume(n);
    return n;
}

std::string stream_state::take(std::size_t n) {
    if (!rbuf.empty()) {
        spill_all();  // (behind rbuf: no ring buffer stays taken while the caller runs)
        return rbuf.take(n);
    }
    std::string out(std::min(n, buffered()), '\0');
    copy_received(std::as_writable_bytes(std::span(out)));
    return out;
}

// Stops receiving at once (close(), abort()): the receive in flight is cancelled (what it had
// received before the cancel took effect is kept and read before EOF), a reader waiting for
// ring buffers is woken; nothing new is received after this.
void stream_state::stop_receiving() noexcept {
    if (has_buffer_ring() && !direct_) {
        buffer_ring::cancel_wait(&buffers_back());
        if (armed_) loop_->cancel_io(&recv_req());  // its completion wakes the reader
        wake_reader();  // (if no receive was armed: it waited for buffers, or is woken already)
    } else if (direct_recv_) {
        loop_->cancel_io(direct_recv_);
    }
}

// After close() the stream reads nothing more (as asyncio's transport stops reading): that is
// its EOF, so read_until/read_line end instead of asking again.
task<std::size_t> stream_state::recv_into(std::span<std::byte> buf) {
    const bool ring = has_buffer_ring();
    if (ring && (!rbuf.empty() || !direct_fits(buf.size()))) {
        bool more = co_await arrived(0, false);
        co_return more ? take_into(buf) : 0;
    }
    co_return co_await recv_direct(buf);
}

task<std::size_t> stream_state::recv_direct(std::span<std::byte> buf) {
    const bool ring = has_buffer_ring();
    if (eof_ || phase_ != phase::open) {
        eof_ = true;
        co_return 0;
    }
    // A bulk read with the ring: the kernel writes straight into buf, as without the ring, and
    // one receive can return more than a ring buffer holds. Nothing else receives meanwhile
    // (one read at a time, and no ring receive is armed), so no chunk needs the union's room.
    int fd = sock.fd();
    auto op = sock.op([fd, buf](io_uring_sqe* s) noexcept { io_uring_prep_recv(s, fd, buf.data(), io_length(buf.size()), 0); });
    direct_recv_ = op.request();
    direct_ = ring;
    struct forget {
        stream_state* st;
        bool ring;
        ~forget() {
            st->direct_ = false;
            if (ring)
                st->chunks_ = {};
            else
                st->direct_recv_ = nullptr;
        }
    } forget_on_exit{this, ring};
    io_result r = co_await op;
    // EOF, or our own close() ended the read (our cancellation would have thrown instead).
    if (r.res == 0 || ((r.res == -ECANCELED || r.res == -EINTR) && phase_ != phase::open)) {
        eof_ = true;
        if (r.res == 0) eof_received_ = true;  // (the ring's reads must not ask again)
        co_return 0;
    }
    if (!r) throw io_error(-r.res, "read from");
    co_return r.value();
}

task<bool> stream_state::fill(std::size_t hint) {
    // With the ring, a fill for more than a ring buffer (read_all, a mid-sized read_exactly)
    // receives straight into rbuf, as without it; smaller ones wait for ring buffers, so that a
    // waiting reader holds no memory.
    if (has_buffer_ring() && !direct_fits(hint)) co_return co_await arrived(rbuf.size(), true);
    // Without the ring the receive needs memory while it waits; not more than a large one's.
    rbuf.release_if_empty(max_chunk);
    std::span<std::byte> room = rbuf.prepare(std::clamp(hint, min_chunk, max_chunk));
    std::size_t n = co_await recv_direct(room);
    rbuf.commit(n);
    co_return n > 0;
}

}  // namespace ringio::detail
