// udp_ping: sends numbered datagrams to a UDP echo server and reports loss and round-trip times.
//
//   udp_ping --host H --port P [--count N] [--size B] [--interval-ms X] [--timeout-ms T]
//
//   --count N        datagrams to send (default 10)
//   --size B         bytes per datagram, 8 to 65507 (default 64): a sequence number, then a
//                    pattern derived from it, checked in every reply
//   --interval-ms X  time between sends; 0 (the default) sends the next one as soon as the reply
//                    to the previous one arrives, or its timeout passes
//   --timeout-ms T   how long to wait for a reply (default 1000)
//
// Prints, e.g.:
//   UDP PING 127.0.0.1:7: 200 datagrams of 64 bytes
//   200 sent, 200 received, 0% loss
//   rtt min/median/p99/max = 0.018/0.025/0.061/0.094 ms
// Exit status: 0 when every reply came back intact, 1 on loss (or a corrupt reply, or an error
// such as an unknown host), 2 on a usage error.
#include <ringio/datagram.hpp>
#include <ringio/ringio.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include "example_support.hpp"  // the command line, main()

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

constexpr examples::program program{
    "udp_ping",
    "usage: udp_ping --host HOST --port PORT [--count N] [--size BYTES] [--interval-ms MS] [--timeout-ms MS]\n"};

struct options {
    std::string host;
    std::optional<std::uint16_t> port;
    unsigned count = 10;
    std::size_t size = 64;
    unsigned interval_ms = 0;
    unsigned timeout_ms = 1000;
};

options parse_args(int argc, char** argv) {
    using examples::parse_number;
    options o;
    auto option = [&](std::string_view arg, std::string_view value) {
        if (arg == "--host")
            o.host = examples::parse_host(program, value);
        else if (arg == "--port")
            o.port = parse_number<std::uint16_t>(program, arg, value, 1, 65535);
        else if (arg == "--count")
            o.count = parse_number<unsigned>(program, arg, value, 1, 100'000'000);
        else if (arg == "--size")
            o.size = parse_number<std::size_t>(program, arg, value, 8, 65507);
        else if (arg == "--interval-ms")
            o.interval_ms = parse_number<unsigned>(program, arg, value, 0, 3'600'000);
        else
            o.timeout_ms = parse_number<unsigned>(program, arg, value, 1, 3'600'000);
    };
    examples::parse_options(program, argc, argv,
                            {"--host", "--port", "--count", "--size", "--interval-ms", "--timeout-ms"}, option);
    if (o.host.empty()) examples::usage_error(program, "--host is required");
    if (!o.port) examples::usage_error(program, "--port is required");
    return o;
}

/// Datagram `seq`: the sequence number (8 bytes), then bytes derived from it.
void fill(std::span<std::byte> p, std::uint64_t seq) {
    std::memcpy(p.data(), &seq, sizeof seq);
    for (std::size_t i = sizeof seq; i < p.size(); ++i) p[i] = static_cast<std::byte>((seq * 131 + i * 7) & 0xff);
}

/// The sequence number of an intact reply of `size` bytes, or nullopt.
std::optional<std::uint64_t> check(std::span<const std::byte> p, std::size_t size) {
    if (p.size() != size) return std::nullopt;
    std::uint64_t seq = 0;
    std::memcpy(&seq, p.data(), sizeof seq);
    for (std::size_t i = sizeof seq; i < p.size(); ++i)
        if (p[i] != static_cast<std::byte>((seq * 131 + i * 7) & 0xff)) return std::nullopt;
    return seq;
}

struct session {
    const options& opt;
    ringio::datagram_endpoint& ep;
    std::vector<steady::time_point> sent_at;
    std::vector<double> rtt_ms;     // per reply received in time
    std::vector<bool> replied;
    std::uint64_t awaited = 0;      // the sequence number the sender waits for (interval 0)
    ringio::event got_awaited;      // set when that reply arrives
    ringio::event all_replied;
    unsigned received = 0, duplicates = 0, corrupt = 0, late = 0, errors = 0;
    std::string last_error;

    session(const options& o, ringio::datagram_endpoint& e)
        : opt(o), ep(e), sent_at(o.count), replied(o.count) {}

    ringio::task<> receive() {
        std::vector<std::byte> buf(65536);
        const auto timeout = std::chrono::milliseconds(opt.timeout_ms);
        while (received < opt.count) {
            ringio::datagram d;
            try {
                d = co_await ep.recv(buf);
            } catch (const std::system_error& e) {
                // ECONNREFUSED: nothing listens there (an ICMP error); each send may cause one.
                ++errors;
                last_error = e.what();
                continue;
            }
            auto now = steady::now();
            auto seq = d.truncated ? std::nullopt : check(std::span(buf).first(d.size), opt.size);
            if (!seq || *seq >= opt.count || sent_at[*seq] == steady::time_point{}) {
                ++corrupt;
                continue;
            }
            if (replied[*seq]) {
                ++duplicates;
                continue;
            }
            replied[*seq] = true;
            if (now - sent_at[*seq] > timeout) {
                ++late;  // counted as lost, like ping does
                continue;
            }
            ++received;
            rtt_ms.push_back(std::chrono::duration<double, std::milli>(now - sent_at[*seq]).count());
            if (*seq == awaited) got_awaited.set();
            if (received == opt.count) all_replied.set();
        }
    }

    ringio::task<> send_all() {
        std::vector<std::byte> out(opt.size);
        const auto timeout = std::chrono::milliseconds(opt.timeout_ms);
        for (std::uint64_t seq = 0; seq < opt.count; ++seq) {
            fill(out, seq);
            awaited = seq;
            got_awaited.clear();
            sent_at[seq] = steady::now();
            try {
                co_await ep.send(out);
            } catch (const std::system_error& e) {
                // A connected UDP socket reports a pending ICMP error on the next send as well.
                ++errors;
                last_error = e.what();
            }
            if (seq + 1 == opt.count) break;
            if (opt.interval_ms > 0) {
                co_await ringio::sleep(std::chrono::milliseconds(opt.interval_ms));
            } else if (!replied[seq]) {
                try {
                    co_await ringio::wait_for(got_awaited.wait(), timeout);
                } catch (const ringio::timeout_error&) {
                }
            }
        }
        // The last replies get their full timeout.
        if (received < opt.count) {
            try {
                co_await ringio::wait_for(all_replied.wait(), timeout);
            } catch (const ringio::timeout_error&) {
            }
        }
    }
};

double percentile(const std::vector<double>& sorted, double p) {
    // Nearest rank: the smallest value with at least p% of the values at or below it.
    auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
    return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

ringio::task<int> amain(options opt) {
    ringio::resolve_options ro;
    ro.socktype = SOCK_DGRAM;
    std::vector<ringio::endpoint> found = co_await ringio::resolve(opt.host, *opt.port, ro);
    ringio::endpoint server = found.front();
    ringio::datagram_endpoint ep = co_await ringio::create_datagram_endpoint(std::nullopt, server);
    fmt::print("UDP PING {}: {} datagrams of {} bytes\n", server, opt.count, opt.size);
    std::fflush(stdout);

    session s(opt, ep);
    auto receiver = ringio::create_task(s.receive());
    co_await s.send_all();
    receiver.cancel();
    try {
        co_await receiver;
    } catch (const ringio::cancelled_error&) {
    }
    co_await ep.close();

    unsigned lost = opt.count - s.received;
    double loss = 100.0 * lost / opt.count;
    fmt::print("{} sent, {} received, {:g}% loss", opt.count, s.received, std::round(loss * 100) / 100);
    if (s.late) fmt::print(", {} late", s.late);
    if (s.duplicates) fmt::print(", {} duplicates", s.duplicates);
    if (s.corrupt) fmt::print(", {} corrupt", s.corrupt);
    fmt::print("\n");
    if (!s.rtt_ms.empty()) {
        std::vector<double> v = s.rtt_ms;
        std::sort(v.begin(), v.end());
        fmt::print("rtt min/median/p99/max = {:.3f}/{:.3f}/{:.3f}/{:.3f} ms\n", v.front(), percentile(v, 50),
                   percentile(v, 99), v.back());
    }
    if (s.errors) fmt::print("{} errors, the last: {}\n", s.errors, s.last_error);
    co_return (lost == 0 && s.corrupt == 0) ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    options opt = parse_args(argc, argv);       // exits with status 2 on bad arguments
    return examples::run(program, amain(opt));  // status 1 on an unknown host, no io_uring, ...
}
