// Test helpers for the example servers run as child processes (net_examples, net_chat): a server
// started with --port 0 (and --threads N) and the port it announced, and TCP connections to it
// on 127.0.0.1. Every wait is bounded, so a broken example fails the test instead of hanging it.
#pragma once

#include <ringio/ringio.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "child_process.hpp"

namespace test {

/// An example server started with --port 0, and the port it announced on its first line.
struct server_process {
    child proc;
    std::uint16_t port = 0;

    explicit server_process(const char* path) : proc({path, "--host", "127.0.0.1", "--port", "0"}) {
        port = read_announced_port(proc, "listening on 127.0.0.1:");
    }

    /// Sends `sig` and checks that the server exits with status 0 within a second.
    void stop_with(int sig) { test::stop_with(proc, sig); }
};

/// An example server started with --port 0 --threads N.
struct threaded_server {
    child proc;
    std::uint16_t port = 0;

    threaded_server(const char* path, int threads)
        : proc({path, "--host", "127.0.0.1", "--port", "0", "--threads", std::to_string(threads)}) {
        port = read_announced_port(proc, "listening on 127.0.0.1:");
    }

    /// The counts of "NAME: connections per loop: A B ..." (printed on stderr at exit).
    std::vector<std::size_t> connections_per_loop() {
        const std::string& err = proc.stderr_text();
        std::vector<std::size_t> counts;
        auto at = err.find("connections per loop:");
        if (at == std::string::npos) return counts;
        std::size_t i = at + std::strlen("connections per loop:");
        while (i < err.size() && err[i] != '\n') {
            if (err[i] == ' ') {
                ++i;
                continue;
            }
            std::size_t used = 0;
            counts.push_back(std::stoul(err.substr(i), &used));
            i += used;
        }
        return counts;
    }
};

using connection = std::pair<ringio::stream_reader, ringio::stream_writer>;

inline ringio::task<connection> connect_to(std::uint16_t port) {
    co_return co_await ringio::wait_for(ringio::open_connection("127.0.0.1", port), std::chrono::seconds(5));
}

/// Everything until EOF (bounded in time).
inline ringio::task<std::string> read_to_eof(ringio::stream_reader& r,
                                             std::chrono::seconds limit = std::chrono::seconds(10)) {
    co_return co_await ringio::wait_for(
        [](ringio::stream_reader& rd) -> ringio::task<std::string> {
            std::string all;
            while (true) {
                std::string chunk = co_await rd.read(65536);
                if (chunk.empty()) co_return all;
                all += chunk;
            }
        }(r),
        limit);
}

inline ringio::task<> close_connection(connection& c) {
    c.second.close();
    co_await ringio::wait_for(c.second.wait_closed(), std::chrono::seconds(5));
}

}  // namespace test
