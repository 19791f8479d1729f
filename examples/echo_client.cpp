// echo_client: talks to an echo server and checks every byte that comes back.
//
//   echo_client --port P [--host H]                         lines from stdin, each printed
//                                                           back with its round-trip time
//   echo_client --port P [--host H] --count N [--size B]    N messages of B bytes (default 64),
//                                                           then latency statistics
//
// Exit status: 0 when every byte came back as sent and the server closed the connection after
// our EOF; 1 on a connection error, a timeout or a mismatch (with a message on stderr saying
// which); 2 on bad arguments.
#include <ringio/ringio.hpp>

#include <algorithm>
#include <array>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include "example_support.hpp"  // the command line, main()

using namespace std::chrono_literals;

namespace {

constexpr examples::program program{
    "echo_client", "usage: echo_client --port PORT [--host HOST] [--count N [--size BYTES]]\n", /*help=*/false};

// A server that does not answer within this time counts as broken, rather than hanging us.
constexpr auto reply_deadline = 10s;

struct options {
    std::string host = "127.0.0.1";
    std::uint16_t port = 0;
    std::optional<std::size_t> count;  // message mode when set
    std::size_t size = 64;
};

options parse_args(int argc, char** argv) {
    using examples::parse_number;
    options o;
    bool have_port = false;
    bool have_size = false;
    auto option = [&](std::string_view arg, std::string_view value) {
        if (arg == "--host") {
            o.host = examples::parse_host(program, value);
        } else if (arg == "--port") {
            o.port = parse_number<std::uint16_t>(program, arg, value, 1, 65535);
            have_port = true;
        } else if (arg == "--count") {
            o.count = parse_number<std::size_t>(program, arg, value, 1, 100'000'000);
        } else {
            o.size = parse_number<std::size_t>(program, arg, value, 1, 64 << 20);
            have_size = true;
        }
    };
    examples::parse_options(program, argc, argv, {"--host", "--port", "--count", "--size"}, option);
    if (!have_port) examples::usage_error(program, "--port is required");
    if (have_size && !o.count) examples::usage_error(program, "--size goes with --count");
    return o;
}

// What makes the client fail: the message goes to stderr, the exit status is 1.
struct failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

using clock = ringio::clock;

double micros(clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

// Sends `msg` and waits for exactly as many bytes back; returns the round-trip time.
// No drain() before reading: the echo comes back while we send, and with a message larger than
// the socket buffers, waiting for our send to finish before reading would deadlock. Once the
// whole echo is read, everything we wrote has been sent.
ringio::task<clock::duration> round_trip(ringio::stream_reader& reader, ringio::stream_writer& writer,
                                         std::span<const std::byte> msg, std::span<std::byte> echoed,
                                         std::size_t number) {
    auto start = clock::now();
    writer.write(msg);
    try {
        co_await ringio::wait_for(reader.read_exactly(echoed), reply_deadline);
    } catch (const ringio::incomplete_read_error& e) {
        throw failure(fmt::format("the server closed the connection after echoing {} of the {} bytes of message {}",
                                  e.partial().size(), msg.size(), number));
    } catch (const ringio::timeout_error&) {
        throw failure(fmt::format("no echo of message {} within {} s", number, reply_deadline.count()));
    }
    auto elapsed = clock::now() - start;
    auto [sent, got] = std::mismatch(msg.begin(), msg.end(), echoed.begin());
    if (sent != msg.end())
        throw failure(fmt::format("message {}: byte {} came back as {:#04x}, sent {:#04x}", number,
                                  sent - msg.begin(), static_cast<unsigned>(*got), static_cast<unsigned>(*sent)));
    co_return elapsed;
}

// --count mode: N messages, each with its own byte pattern (so that a reordered or stale echo
// is caught too), then the statistics.
ringio::task<> send_messages(ringio::stream_reader& reader, ringio::stream_writer& writer, std::size_t count,
                             std::size_t size) {
    std::vector<std::byte> msg(size), echoed(size);
    std::vector<double> rtt_us;
    rtt_us.reserve(count);
    auto start = clock::now();
    for (std::size_t i = 0; i < count; ++i) {
        for (std::size_t j = 0; j < size; ++j) msg[j] = static_cast<std::byte>((i * 131 + j * 7 + j / 251) & 0xff);
        rtt_us.push_back(micros(co_await round_trip(reader, writer, msg, echoed, i)));
    }
    double seconds = std::chrono::duration<double>(clock::now() - start).count();

    std::sort(rtt_us.begin(), rtt_us.end());
    auto percentile = [&](double p) {  // nearest rank
        std::size_t rank = static_cast<std::size_t>(p / 100.0 * static_cast<double>(count) + 0.999999);
        return rtt_us[std::clamp<std::size_t>(rank, 1, count) - 1];
    };
    fmt::print("{} messages of {} bytes echoed and verified in {:.1f} ms: {:.0f} msgs/s\n", count, size,
               seconds * 1e3, static_cast<double>(count) / seconds);
    fmt::print("round trip: min {:.1f} us, median {:.1f} us, p99 {:.1f} us, max {:.1f} us\n", rtt_us.front(),
               percentile(50), percentile(99), rtt_us.back());
}

// Line mode: stdin is read through the ring too (io::read), so the loop never blocks on it.
ringio::task<> send_lines(ringio::stream_reader& reader, ringio::stream_writer& writer) {
    std::string pending;  // read from stdin, not yet sent
    std::array<std::byte, 4096> chunk;
    std::size_t number = 0;
    bool eof = false;
    while (!eof || !pending.empty()) {
        std::size_t nl = pending.find('\n');
        if (nl == std::string::npos && !eof) {
            ringio::io_result r = co_await ringio::io::read(0, chunk);
            if (!r) throw failure(fmt::format("reading stdin: {}", r.error().message()));
            if (r.value() == 0) eof = true;
            pending.append(reinterpret_cast<const char*>(chunk.data()), r.value());
            continue;
        }
        // One line with its "\n" (a last line without one gets one).
        std::string line = pending.substr(0, nl == std::string::npos ? pending.size() : nl + 1);
        pending.erase(0, line.size());
        if (line.back() != '\n') line += '\n';
        std::string echoed(line.size(), '\0');
        clock::duration rtt = co_await round_trip(reader, writer, std::as_bytes(std::span(line)),
                                                  std::as_writable_bytes(std::span(echoed)), number++);
        fmt::print("{}  ({:.1f} us)\n", std::string_view(echoed).substr(0, echoed.size() - 1), micros(rtt));
        std::fflush(stdout);
    }
}

ringio::task<int> amain(options opt) {
    ringio::connect_options co;
    co.timeout = reply_deadline;
    std::pair<ringio::stream_reader, ringio::stream_writer> conn;
    try {
        conn = co_await ringio::open_connection(opt.host, opt.port, co);
    } catch (const std::exception& e) {  // refused, unreachable, timed out, unknown host
        throw failure(fmt::format("cannot connect to {}:{}: {}", opt.host, opt.port, e.what()));
    }
    auto& [reader, writer] = conn;

    try {
        if (opt.count)
            co_await send_messages(reader, writer, *opt.count, opt.size);
        else
            co_await send_lines(reader, writer);
        // An echo server closes after our EOF once it has sent everything: check that nothing
        // else arrives.
        writer.write_eof();
        std::string extra = co_await ringio::wait_for(reader.read(65536), reply_deadline);
        if (!extra.empty()) throw failure(fmt::format("the server sent {} bytes nobody asked for", extra.size()));
    } catch (const ringio::timeout_error&) {
        throw failure("the server did not close the connection after our EOF");
    } catch (const std::system_error& e) {  // reset, broken pipe
        throw failure(fmt::format("connection to {}:{} failed: {}", opt.host, opt.port, e.what()));
    }
    writer.close();
    co_await writer.wait_closed();
    co_return 0;
}

}  // namespace

int main(int argc, char** argv) {
    options opt = parse_args(argc, argv);       // exits with status 2 on bad arguments
    return examples::run(program, amain(opt));  // a failure's message on stderr, status 1
}
