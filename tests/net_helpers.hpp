// Test helpers shared by the network tests (net_server, net_stream, net_socket): a bounded run,
// catching an expected exception, polling a condition, capturing log lines, an echo handler.
#pragma once

#include <doctest/doctest.h>

#include <ringio/ringio.hpp>
#include <ringio/stream.hpp>

#include <signal.h>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace test {

using namespace std::chrono_literals;

/// Runs `body` on a fresh loop; past `limit` it is cancelled and the test fails with
/// timeout_error instead of hanging.
inline void run_bounded(ringio::task<> body, std::chrono::seconds limit = 15s, ringio::loop_options options = {}) {
    ringio::run([](ringio::task<> b, std::chrono::seconds l) -> ringio::task<> {
        co_await ringio::wait_for(std::move(b), l);
    }(std::move(body), limit), options);
}

/// Awaits `t` (a task or a task_handle) and returns the exception of type E it threw (nullopt if
/// it returned).
template <class E, class Awaitable>
ringio::task<std::optional<E>> thrown(Awaitable t) {
    try {
        co_await std::move(t);
    } catch (const E& e) {
        co_return e;
    }
    co_return std::nullopt;
}

/// Polls `pred` once a millisecond until it holds; false after `limit`.
template <class Pred>
inline ringio::task<bool> eventually(Pred pred, std::chrono::milliseconds limit = 5000ms) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) co_return false;
        co_await ringio::sleep(1ms);
    }
    co_return true;
}

inline bool contains(std::string_view haystack, std::string_view needle) { return haystack.find(needle) != std::string_view::npos; }

/// Restores the log handler on destruction; records every line meanwhile.
struct log_capture {
    std::vector<std::string> lines;
    ringio::log_handler prev;
    log_capture() {
        prev = ringio::set_log_handler([this](ringio::log_level, std::string_view m) { lines.emplace_back(m); });
    }
    ~log_capture() { ringio::set_log_handler(std::move(prev)); }
    log_capture(const log_capture&) = delete;
    log_capture& operator=(const log_capture&) = delete;
};

/// Echoes everything it reads until EOF (a connection handler for start_server).
inline ringio::task<> echo(ringio::stream_reader r, ringio::stream_writer w) {
    while (true) {
        std::string data = co_await r.read(65536);
        if (data.empty()) break;
        w.write(data);
        co_await w.drain();
    }
}

/// Requires SIGPIPE's disposition to be the default one (so that a test that writes to a reset
/// peer would be killed by a SIGPIPE, were one raised).
inline void require_default_sigpipe() {
    struct sigaction sa {};
    REQUIRE(::sigaction(SIGPIPE, nullptr, &sa) == 0);
    const bool default_action = sa.sa_handler == SIG_DFL;
    REQUIRE(default_action);  // a SIGPIPE would kill the test
}

/// Everything until EOF.
inline ringio::task<std::string> read_to_eof(ringio::stream_reader& r) {
    std::string all;
    for (int i = 0; i < 1'000'000; ++i) {
        std::string chunk = co_await r.read();
        if (chunk.empty()) break;
        all += chunk;
    }
    co_return all;
}

/// One end of a connection: its reader and writer.
struct conn {
    ringio::stream_reader r;
    ringio::stream_writer w;
};

/// Two ends of a TCP connection on 127.0.0.1, each wrapped in streams.
inline ringio::task<std::pair<conn, conn>> tcp_pair(std::size_t limit_a = ringio::default_stream_limit,
                                             std::size_t limit_b = ringio::default_stream_limit) {
    auto lst = ringio::socket::create(AF_INET, SOCK_STREAM);
    lst.bind(ringio::endpoint(ringio::ip_address::loopback_v4(), 0));
    lst.listen(4);
    auto cli = ringio::socket::create(AF_INET, SOCK_STREAM);
    cli.set_nodelay(true);  // small pieces go out at once
    co_await cli.connect(lst.local_endpoint());
    auto [srv, peer] = co_await lst.accept();
    srv.set_nodelay(true);
    auto [ar, aw] = ringio::make_streams(std::move(cli), ringio::stream_options{limit_a});
    auto [br, bw] = ringio::make_streams(std::move(srv), ringio::stream_options{limit_b});
    co_return std::pair<conn, conn>{conn{std::move(ar), std::move(aw)}, conn{std::move(br), std::move(bw)}};
}

inline ringio::task<> close_both(conn& a, conn& b) {
    a.w.close();
    b.w.close();
    co_await a.w.wait_closed();
    co_await b.w.wait_closed();
}

}  // namespace test
