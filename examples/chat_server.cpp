// chat_server: every line a client sends goes to every other client.
//
//   chat_server [--host H] [--port P] [--threads N]   (defaults: 127.0.0.1, port 0 = any free
//                                                      port, 1 thread)
//
// Protocol, one line at a time (up to 64 KiB, the stream's default limit):
//   TEXT          -> every other client receives "NAME: TEXT\n"
//   /nick NAME    -> from now on the client is called NAME (at first it is its "ip:port")
// A line longer than the limit gets "error: line too long\n" and the client is disconnected.
//
// Slow consumers (DESIGN.md section 7). Each client has an outbox of lines waiting for its
// socket, bounded in bytes (outbox_bytes, plus at most one line), and a task of its own that
// moves them to its socket. A broadcast line is one string shared by every outbox it is in.
//   - Backpressure: a talker's handler hands its line to every outbox and waits for room in the
//     full ones before it reads its next line, so a fast talker is slowed to the pace of its
//     slowest reader, down to TCP (the kernel stops taking its bytes). A client that keeps
//     reading is never disconnected, however fast the others talk.
//   - Stalls: a client whose socket takes no byte of what is waiting for it for stall_limit
//     (3 s) is disconnected (logged on stderr) and its outbox thrown away; the talkers waiting
//     for room in it go on. So a client that stopped reading holds up nobody for longer than
//     that.
//   - Memory: per client, at most outbox_bytes plus one line in its outbox (shared with the
//     other recipients) and send_buffer_high plus one line in its stream's write buffer.
//
// With --threads N, N event loops (one per thread) each accept their share of the connections
// (SO_REUSEPORT) and keep their own room. A line goes to the talker's own room, then to every
// other loop's room through ringio::call_on, which the talker awaits: the other loop waits for
// room in its own outboxes in the same way, so backpressure (and a stall's bound) crosses loops,
// and a talker's lines reach every client in the order sent. At exit the server reports on
// stderr how many connections each loop accepted.
//
// The first line on stdout is "listening on HOST:PORT". SIGINT or SIGTERM stop the server: it
// stops accepting, closes every connection (a client that does not read is reset) and exits
// with status 0 within a second.
#include <ringio/ringio.hpp>

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <deque>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "example_support.hpp"  // the command line, the server contract, main()

using namespace std::chrono_literals;

namespace {

constexpr examples::program program{.name = "chat_server",
                                    .usage = "usage: chat_server [--host HOST] [--port PORT] [--threads N]\n",
                                    .threads = true};

// A talker waits while a recipient's outbox holds this much (one line may take it past).
constexpr std::size_t outbox_bytes = 256 * 1024;
// Lines move from the outbox to the stream's write buffer while it holds at most this much; then
// drain() waits until the socket has taken all but a quarter of it.
constexpr std::size_t send_buffer_high = 64 * 1024;
// A client whose socket takes none of the bytes waiting for it for this long is disconnected.
constexpr auto stall_limit = 3s;
// How often a client's sender, waiting for its socket, checks whether it took anything.
constexpr auto stall_check_interval = 250ms;

// A line on its way to clients: one copy, shared by every outbox it is in (and by other loops).
using line_ptr = std::shared_ptr<const std::string>;

// The lines waiting for one client's socket, bounded in bytes. Single-threaded (its loop's).
class outbox {
public:
    // open: takes lines. closing: takes no more; what it holds is still sent (the client is
    // leaving, or the server stopping). dropped: the client is disconnected; what it held is gone.
    enum class state { open, closing, dropped };

    [[nodiscard]] bool is_open() const noexcept { return state_ == state::open; }
    [[nodiscard]] bool is_dropped() const noexcept { return state_ == state::dropped; }
    [[nodiscard]] bool full() const noexcept { return bytes_ >= outbox_bytes; }
    [[nodiscard]] bool empty() const noexcept { return lines_.empty(); }
    [[nodiscard]] std::size_t bytes() const noexcept { return bytes_; }

    // Adds a line (ignored unless open). A full outbox takes one all the same (the caller decides
    // whether to wait for room first): that is the "plus one line" of the bound.
    void push(line_ptr line) {
        if (!is_open()) return;
        bytes_ += line->size();
        lines_.push_back(std::move(line));
        has_lines_.set();
        if (full()) has_room_.clear();
    }

    // Removes the oldest line; not empty.
    line_ptr pop() {
        line_ptr line = std::move(lines_.front());
        lines_.pop_front();
        bytes_ -= line->size();
        if (!full()) has_room_.set();
        if (lines_.empty() && is_open()) has_lines_.clear();
        return line;
    }

    // Takes no more lines; those it holds are still sent.
    void close() noexcept {
        if (!is_open()) return;
        state_ = state::closing;
        wake_all();
    }

    // Throws away what it holds and takes no more lines.
    void drop() noexcept {
        state_ = state::dropped;
        lines_.clear();
        bytes_ = 0;
        wake_all();
    }

    // Waits until it is not full or no longer open (for talkers). Cancel safety: safe.
    [[nodiscard]] auto room() noexcept { return has_room_.wait(); }
    // Waits until it holds a line or is no longer open (for the sender). Cancel safety: safe.
    [[nodiscard]] auto lines() noexcept { return has_lines_.wait(); }

private:
    void wake_all() noexcept {
        has_room_.set();
        has_lines_.set();
    }

    std::deque<line_ptr> lines_;
    std::size_t bytes_ = 0;
    state state_ = state::open;
    ringio::event has_room_{};   // set while !full() or !is_open()
    ringio::event has_lines_{};  // set while !empty() or !is_open()
};

// A connected client. Shared: the room holds it, and a talker waiting for room in its outbox
// keeps it alive even if the client leaves meanwhile (then the outbox is no longer open).
struct client {
    client(std::string n, ringio::stream_writer& w) : name(std::move(n)), writer(&w) {}
    std::string name;
    // The handler's writer. Touched only by the handler, its sender, and shut_down (for clients
    // in the room): valid while the client is in the room. Talkers touch only the outbox.
    ringio::stream_writer* writer;
    outbox box;
};

// Everyone connected to this loop. Each loop (with --threads N) has its own room, touched only
// by its own thread: no locking needed.
thread_local std::vector<std::shared_ptr<client>> room;
// Set once shut_down() has begun on this loop: a handler that starts after it leaves at once.
thread_local bool stopping = false;

// Makes the client's handler see EOF, so that it leaves the room and closes the connection
// itself. TRICKY: other tasks never close() or abort() a client's stream directly: the handler
// owns it, and ending its reads (shutdown of the reading side) lets the handler's own task
// leave the room, let its sender flush what is queued, and close, in that order.
void stop_reading(client& c) {
    ::shutdown(c.writer->transport().fd(), SHUT_RD);  // fd is -1 (a no-op) once it is closed
}

// Hands `line` to every client of this loop but `from`. Waits for room in the outboxes that are
// full: this is the backpressure on the talker. Bounded: an outbox stays full only while its
// client's socket takes bytes (then it empties) or for stall_limit (then it is dropped).
// Cancel safety: safe; clients not yet served miss the line.
ringio::task<> deliver(line_ptr line, const client* from) {
    std::vector<std::shared_ptr<client>> later;  // full outboxes: the others need not wait for them
    for (const std::shared_ptr<client>& c : room) {
        if (c.get() == from || !c->box.is_open()) continue;  // leaving: it gets nothing more
        if (c->box.full())
            later.push_back(c);
        else
            c->box.push(line);
    }
    for (const std::shared_ptr<client>& c : later) {
        while (c->box.is_open() && c->box.full()) co_await c->box.room();
        c->box.push(line);  // unless it stopped taking lines meanwhile
    }
}

// Sends a line to every other client: those of this loop, then those of each other loop
// (call_on runs deliver() there as a Task and the talker waits for it: backpressure across
// loops, and the lines of one talker arrive everywhere in the order sent).
ringio::task<> broadcast(const client& from, std::string_view text) {
    line_ptr line = std::make_shared<const std::string>(fmt::format("{}: {}\n", from.name, text));
    co_await deliver(line, &from);
    ringio::loop_group* group = ringio::loop_group::current();
    if (!group) co_return;
    const std::size_t here = group->index();
    for (std::size_t j = 0; j < group->size(); ++j) {
        if (j == here) continue;
        // TRICKY: named, not a temporary inside co_await: GCC 12 destroys a lambda temporary
        // with a shared_ptr capture twice there (include/ringio/run_threads.hpp, call_on).
        auto deliver_there = [line] { return deliver(line, nullptr); };
        try {
            co_await ringio::call_on(group->loop(j), std::move(deliver_there));
        } catch (const ringio::invalid_state_error&) {
            // That loop has stopped taking calls: the server is shutting down.
        }
    }
}

// Waits until the client's socket has taken what its write buffer holds beyond
// send_buffer_high, down to a quarter of it (drain()). False when the socket took no byte for
// stall_limit. Throws std::system_error if the connection failed.
ringio::task<bool> drain_unless_stalled(ringio::stream_writer& w) {
    using clock = std::chrono::steady_clock;
    clock::time_point last_progress = clock::now();
    std::size_t waiting = w.buffered();
    while (w.buffered() > send_buffer_high) {
        try {
            co_await ringio::wait_for(w.drain(), stall_check_interval);
            co_return true;
        } catch (const ringio::timeout_error&) {
        }
        if (w.buffered() < waiting) {
            waiting = w.buffered();
            last_progress = clock::now();
        } else if (clock::now() - last_progress >= stall_limit) {
            co_return false;
        }
    }
    co_return true;
}

// Disconnects a client that stopped reading: its outbox is thrown away (talkers waiting for
// room in it go on), and its handler sees EOF and resets the connection.
void drop(client& c, std::size_t waiting) {
    fmt::print(stderr, "chat_server: disconnecting {}: it took nothing for {} s ({} bytes waiting)\n", c.name,
               std::chrono::duration_cast<std::chrono::seconds>(stall_limit).count(), waiting + c.box.bytes());
    c.box.drop();
    stop_reading(c);
}

// The client's own sender: moves lines from its outbox to its socket, a write buffer's worth at
// a time. Ends once the outbox is closed and empty, or the client is dropped, or the connection
// failed.
ringio::task<> send_lines(client& c, ringio::stream_writer& w) {
    try {
        while (true) {
            co_await c.box.lines();
            if (c.box.empty()) break;  // closed and all sent, or dropped
            while (!c.box.empty() && w.buffered() <= send_buffer_high) w.write(*c.box.pop());
            // TRICKY: named, as GCC 12 miscompiles `if (!co_await f())` (docs/runtime.md).
            bool moving = co_await drain_unless_stalled(w);
            if (!moving) {
                drop(c, w.buffered());
                break;
            }
        }
    } catch (const std::system_error&) {
        c.box.drop();    // the peer is gone (reset): nobody waits for its outbox any more
        stop_reading(c);  // and its handler notices too
    } catch (const ringio::invalid_state_error&) {
        c.box.drop();  // the connection was closed under us (the server is shutting down)
    }
}

// Reads lines and broadcasts them, waiting for room in the recipients' outboxes before reading
// the next. Returns normally at EOF; throws limit_overrun_error for a line longer than the
// limit, std::system_error if the connection fails.
ringio::task<> relay_lines(ringio::stream_reader& reader, client& me) {
    while (true) {
        std::string line = co_await reader.read_line();
        if (line.empty()) co_return;  // EOF (a last line without "\n" came before it)
        if (line.back() == '\n') line.pop_back();
        if (!line.empty() && line.back() == '\r') line.pop_back();  // telnet and nc -C send CRLF
        if (line.starts_with("/nick ") && line.size() > 6)
            me.name = line.substr(6);
        else
            co_await broadcast(me, line);
    }
}

// After "error: line too long", the client may still be sending the rest of its line. Closing a
// socket with unread input makes the kernel send a reset, which can destroy the error line
// before the client reads it, so first send EOF, then read and discard until the client closes
// (bounded in time).
ringio::task<> discard_input(ringio::stream_reader& reader) {
    std::array<std::byte, 16384> sink;
    std::size_t n = 1;
    while (n > 0) n = co_await reader.read_some(sink);
}

ringio::task<> handle_client(ringio::stream_reader reader, ringio::stream_writer writer) {
    if (stopping) co_return;  // accepted just as the server stopped: closed at once
    writer.set_write_buffer_limits(send_buffer_high);
    auto me = std::make_shared<client>(fmt::format("{}", writer.peername()), writer);
    room.push_back(me);
    auto sender = ringio::create_task(send_lines(*me, writer));

    bool too_long = false;
    std::exception_ptr failure;  // rethrown after the cleanup (a cancellation, for instance)
    try {
        co_await relay_lines(reader, *me);
    } catch (const ringio::limit_overrun_error&) {
        too_long = true;
    } catch (const std::system_error&) {
        // The connection failed (reset by the peer): the client has left.
    } catch (...) {
        failure = std::current_exception();
    }

    std::erase(room, me);  // no new lines for me from here on
    if (me->box.is_dropped() || failure) {
        me->box.drop();
        writer.abort();  // reset: nothing more is sent, and a sender stuck in drain() wakes up
    } else if (too_long) {
        me->box.push(std::make_shared<const std::string>("error: line too long\n"));  // after the rest
    }
    me->box.close();  // the sender writes what is queued, then ends
    // TRICKY: the sender refers to `me` and `writer` in this frame, so it must end before this
    // handler does. It does: once the outbox is empty, or when the socket takes nothing for
    // stall_limit, or when the connection fails (at shutdown, finish_closing resets it).
    co_await sender;
    if (too_long && !writer.is_closing()) {
        writer.write_eof();
        try {
            co_await ringio::wait_for(discard_input(reader), 2s);
        } catch (const ringio::timeout_error&) {  // timed out or reset: close all the same
        } catch (const std::system_error&) {
        }
    }
    if (failure) std::rethrow_exception(failure);
    // Returning closes the connection after the buffered data is sent.
}

// Stops the server: no new connections, then a graceful close of the others (they read what
// was queued for them, then EOF). Connections still open after a grace period (a client that
// does not read) are reset, so the whole takes well under a second.
ringio::task<> shut_down(ringio::server& server) {
    stopping = true;
    server.close();
    // Every handler sees EOF, leaves, lets its sender write what is queued, and closes. Talkers
    // waiting for room in an outbox go on at once (it is no longer open).
    for (const std::shared_ptr<client>& c : room) {
        c->box.close();
        stop_reading(*c);
    }
    co_await examples::finish_closing(program, server);  // resets what is still open after 400 ms
}

}  // namespace

int main(int argc, char** argv) {
    // Parses --host, --port and --threads, listens (on every loop), runs `handle_client` for every
    // connection, prints the listening line and waits for SIGINT or SIGTERM, then calls shut_down
    // on every loop (examples::serve, examples::serve_threads).
    return examples::tcp_server_main(program, argc, argv, handle_client, shut_down);
}
