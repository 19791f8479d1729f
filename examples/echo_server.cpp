// echo_server: sends back every byte it receives (RFC 862 over TCP).
//
//   echo_server [--host H] [--port P] [--threads N]   (defaults: 127.0.0.1, port 0 = any free
//                                                      port, 1 thread)
//
// With --threads N the server runs N event loops, one per thread, sharing nothing: each
// listens on the same port with its own socket (SO_REUSEPORT), so the kernel spreads the
// connections over the loops, and each serves its own. At exit it reports on stderr how many
// connections each loop accepted.
//
// The first line on stdout is "listening on HOST:PORT", so that a test or a benchmark started
// with --port 0 learns the port. When a client sends EOF, the server finishes sending what it
// owes, then closes. SIGINT or SIGTERM stop the server: it stops accepting, closes every
// connection and exits with status 0 within a second.
#include <ringio/ringio.hpp>

#include <string>
#include <string_view>
#include <system_error>

#include "example_support.hpp"  // the command line, the server contract, main()

namespace {

constexpr examples::program program{.name = "echo_server",
                                    .usage = "usage: echo_server [--host HOST] [--port PORT] [--threads N]\n",
                                    .threads = true};

// One task per connection. read() hands over what arrived, copied out of the loop's shared
// receive buffers (which go straight back to the kernel), so a connection waiting for data
// holds no buffer at all: an idle connection costs about 1 KiB
// in all (bench/README.md).
ringio::task<> echo(ringio::stream_reader reader, ringio::stream_writer writer) {
    try {
        while (true) {
            std::string data = co_await reader.read(64 * 1024);
            if (data.empty()) break;          // EOF: the client has sent everything
            if (writer.is_closing()) break;   // the server is shutting down (close_clients)
            writer.write(data);
            co_await writer.drain();          // backpressure: wait while the client reads slowly
        }
    } catch (const std::system_error&) {
        // The peer reset the connection (or the server aborted it on shutdown): nothing more to
        // echo, and nothing worth logging for an echo server.
    }
    // Returning lets start_server close the connection after the buffered bytes are sent: the
    // client reads every byte it sent, then EOF.
}

// Stops the server: no new connections, then a graceful close of the others. A client that does
// not read would keep a graceful close waiting forever, so after a grace period connections are
// reset instead; the whole takes well under a second.
ringio::task<> shut_down(ringio::server& server) {
    server.close();
    server.close_clients();
    co_await examples::finish_closing(program, server);  // resets what is still open after 400 ms
}

}  // namespace

int main(int argc, char** argv) {
    // Parses --host, --port and --threads, listens (on every loop), runs `echo` for every
    // connection, prints the listening line and waits for SIGINT or SIGTERM, then calls shut_down
    // on every loop (examples::serve, examples::serve_threads).
    return examples::tcp_server_main(program, argc, argv, echo, shut_down);
}
