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
// A slow client never holds up the others: each client has a bounded queue of outgoing lines
// and a task of its own that writes them to its socket. Broadcasting only appends to queues and
// never waits; a client whose queue is full is disconnected (and logged on stderr).
//
// With --threads N, N event loops (one per thread) each accept their share of the connections
// (SO_REUSEPORT) and keep their own room; a line goes to the sender's room at once and is posted
// to every other loop, which hands it to its own room. At exit the server reports on stderr how
// many connections each loop accepted.
//
// The first line on stdout is "listening on HOST:PORT". SIGINT or SIGTERM stop the server: it
// stops accepting, closes every connection and exits with status 0 within a second.
#include <ringio/ringio.hpp>

#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <exception>
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

constexpr std::size_t max_queued_lines = 256;  // per client; beyond that it is too slow

// A connected client. Lives in its handler's frame; the room holds a pointer while it is in.
struct client {
    std::string name;
    ringio::stream_writer& writer;
    ringio::queue<std::string> outbox{max_queued_lines};
    bool dropped = false;  // disconnected by the server: its queued lines are thrown away
};

// Everyone connected to this loop. Each loop (with --threads N) has its own room, touched only
// by its own thread: no locking needed.
thread_local std::vector<client*> room;

// Makes the client's handler see EOF, so that it leaves the room and closes the connection
// itself. TRICKY: other tasks never close() or abort() a client's stream directly: the handler
// owns it, and ending its reads (shutdown of the reading side) lets the handler's own task
// leave the room, let its sender flush what is queued, and close, in that order.
void stop_reading(client& c) {
    ::shutdown(c.writer.transport().fd(), SHUT_RD);  // fd is -1 (a no-op) once it is closed
}

// Disconnects a client: what is queued for it is thrown away, and its handler resets the
// connection.
void drop(client& c) {
    c.dropped = true;
    c.outbox.shutdown(/*immediate=*/true);
    stop_reading(c);
}

// Appends a line to the queue of every client of this loop but `from`. Never waits, so one slow
// client cannot stall the sender or anyone else.
void deliver(const std::string& line, const client* from) {
    for (client* c : room) {
        if (c == from || c->outbox.is_shutdown()) continue;  // leaving: it gets nothing more
        try {
            c->outbox.put_nowait(line);
        } catch (const ringio::queue_full&) {
            fmt::print(stderr, "chat_server: disconnecting {}: too slow, {} lines queued (queue full)\n", c->name,
                       max_queued_lines);
            drop(*c);
        }
    }
}

// Sends a line to every other client: those of this loop at once, those of the other loops
// through their inboxes. Fire and forget (call_soon_threadsafe rather than call_on): the sender
// waits for no other loop, and the lines one loop posts to another arrive in the order sent.
void broadcast(const client& from, std::string_view text) {
    std::string line = fmt::format("{}: {}\n", from.name, text);
    deliver(line, &from);
    if (ringio::loop_group* group = ringio::loop_group::current()) {
        std::size_t here = group->index();
        for (std::size_t j = 0; j < group->size(); ++j)
            if (j != here) group->loop(j).call_soon_threadsafe([line] { deliver(line, nullptr); });
    }
}

// The client's own writer: moves queued lines to its socket. Whatever is queued goes out in
// one write, then drain() waits for this client's socket only.
ringio::task<> send_queued_lines(client& c) {
    try {
        while (true) {
            c.writer.write(co_await c.outbox.get());  // queue_shutdown once shut down and empty
            while (!c.outbox.empty()) c.writer.write(c.outbox.get_nowait());
            co_await c.writer.drain();
        }
    } catch (const ringio::queue_shutdown&) {
        // The client is leaving and everything queued has been handed to the socket.
    } catch (const std::system_error&) {
        stop_reading(c);  // the peer is gone (reset): make sure the handler notices too
    } catch (const ringio::invalid_state_error&) {
        // The connection was closed under us (the server is shutting down).
    }
}

// Reads lines and broadcasts them. Returns normally at EOF; throws limit_overrun_error for a
// line longer than the limit, std::system_error if the connection fails.
ringio::task<> relay_lines(ringio::stream_reader& reader, client& me) {
    while (true) {
        std::string line = co_await reader.read_line();
        if (line.empty()) co_return;  // EOF (a last line without "\n" came before it)
        if (line.back() == '\n') line.pop_back();
        if (!line.empty() && line.back() == '\r') line.pop_back();  // telnet and nc -C send CRLF
        if (line.starts_with("/nick ") && line.size() > 6)
            me.name = line.substr(6);
        else
            broadcast(me, line);
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
    client me{fmt::format("{}", writer.peername()), writer};
    room.push_back(&me);
    auto sender = ringio::create_task(send_queued_lines(me));

    bool too_long = false;
    std::exception_ptr failure;  // rethrown after the cleanup (a cancellation, for instance)
    try {
        co_await relay_lines(reader, me);
    } catch (const ringio::limit_overrun_error&) {
        too_long = true;
    } catch (const std::system_error&) {
        // The connection failed (reset by the peer): the client has left.
    } catch (...) {
        failure = std::current_exception();
    }

    std::erase(room, &me);  // no new lines for me from here on
    if (me.dropped || failure) {
        writer.abort();  // reset: nothing more is sent, and a sender stuck in drain() wakes up
    } else if (too_long && !me.outbox.full() && !me.outbox.is_shutdown()) {
        me.outbox.put_nowait("error: line too long\n");  // after what was already queued
    }
    me.outbox.shutdown();  // the sender writes what is queued, then ends
    // TRICKY: the sender refers to `me` and `writer` in this frame, so it must end before this
    // handler does. A client that stopped reading would keep it waiting, hence the bound.
    try {
        co_await ringio::wait_for(sender, 5s);
    } catch (const ringio::timeout_error&) {
        writer.abort();
    }
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
    server.close();
    // Every handler sees EOF, leaves, lets its sender write what is queued, and closes.
    for (client* c : room) {
        c->outbox.shutdown();
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
