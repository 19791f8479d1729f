// Connection churn: 100,000 connect / echo / close cycles (10,000 under AddressSanitizer, which
// is ~10x slower) against one start_server echo server in the same process, 128 at a time; one
// in five ends with an abrupt reset (writer.abort(): SO_LINGER 0, then close). Afterwards the
// server has no connection left, the process's fds are back to the baseline, no coroutine frame
// or task state is left (ringio::detail::live_frames()) and the heap in use is back to within
// 2 MiB of the baseline (taken after a warm-up, so that the loop's and allocator's caches are
// already grown).
//
// TIME_WAIT: the client closes first on the graceful connections, so the TIME_WAIT entries are
// on the client's side and hold its (source address, port) pairs for 60 s. 80,000 of them would
// exhaust 127.0.0.1's ~28,000 ephemeral ports, so the clients bind to 64 source addresses,
// 127.0.0.1 to 127.0.0.64 (all of 127/8 is loopback on Linux): ~1,250 TIME_WAIT entries each.
// Resets leave no TIME_WAIT.
#include <doctest/doctest.h>

#include <ringio/detail/frame_cache.hpp>
#include <ringio/ringio.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "net_helpers.hpp"
#include "stress_helpers.hpp"

using namespace std::chrono_literals;

namespace {

struct churn_state {
    std::uint16_t port = 0;
    std::size_t total = 0;
    std::size_t next = 0;     // cycles handed out
    std::size_t done = 0;     // cycles finished
    std::size_t resets = 0;   // cycles that ended with abort()
    std::size_t bad_echo = 0;
    std::size_t client_errors = 0;
    std::string first_error;
    // the server's side
    std::size_t handled = 0;        // handlers started
    std::size_t server_eofs = 0;    // handlers that saw EOF
    std::size_t server_resets = 0;  // handlers that saw ECONNRESET
    std::size_t server_other = 0;
    std::mt19937_64 rng;
};

// The echo handler: everything it reads goes back, until EOF or a reset.
ringio::task<> echo(churn_state& st, ringio::stream_reader r, ringio::stream_writer w) {
    ++st.handled;
    std::array<std::byte, 8192> buf;
    try {
        while (true) {
            std::size_t n = co_await r.read_some(buf);
            if (n == 0) break;
            w.write(std::span(buf).first(n));
            co_await w.drain();
        }
        ++st.server_eofs;
    } catch (const std::system_error& e) {
        if (e.code().value() == ECONNRESET)
            ++st.server_resets;
        else
            ++st.server_other;
    }
}

ringio::task<> one_cycle(churn_state& st, std::size_t i) {
    ringio::connect_options o;
    // 127.0.0.1 .. 127.0.0.64 as source addresses: see TIME_WAIT above.
    auto src = static_cast<std::uint8_t>(1 + i % 64);
    o.local_address = ringio::endpoint(ringio::ip_address::v4({127, 0, 0, src}), 0);
    std::pair<ringio::stream_reader, ringio::stream_writer> conn = co_await ringio::open_connection("127.0.0.1", st.port, o);
    ringio::stream_reader& r = conn.first;
    ringio::stream_writer& w = conn.second;
    std::size_t size = 1 + static_cast<std::size_t>(st.rng() % 2048);
    std::vector<unsigned char> msg(size);
    stress::fill_pattern(i, 0, msg.data(), size);
    w.write(std::as_bytes(std::span(msg)));
    std::string back = co_await r.read_exactly(size);
    if (stress::check_pattern(i, 0, reinterpret_cast<const unsigned char*>(back.data()), size) != size) ++st.bad_echo;
    if (i % 5 == 4) {
        w.abort();  // RST
        ++st.resets;
    } else {
        w.close();  // the client closes first (its side keeps the TIME_WAIT)
    }
    co_await w.wait_closed();
}

ringio::task<> worker(churn_state& st) {
    while (st.next < st.total) {
        std::size_t i = st.next++;
        try {
            co_await ringio::wait_for(one_cycle(st, i), 10s);
        } catch (const std::exception& e) {
            if (st.first_error.empty()) st.first_error = e.what();
            ++st.client_errors;
        }
        ++st.done;
    }
}

ringio::task<> run_cycles(churn_state& st, std::size_t count, std::size_t concurrency) {
    st.total += count;
    std::vector<ringio::task<>> workers;
    for (std::size_t k = 0; k < concurrency; ++k) workers.push_back(worker(st));
    co_await ringio::gather(std::move(workers));
}

}  // namespace

TEST_CASE("connection churn: 100,000 connect/echo/close cycles, one in five reset; nothing is left behind") {
    const std::size_t cycles = stress::sanitized ? 10'000 : 100'000;
    const std::size_t warmup = 2'000;
    const std::size_t concurrency = 128;
    const std::size_t slack = 2u << 20;  // 2 MiB: the allocator's and the loop's caches
    churn_state st;
    st.rng.seed(stress::seed("stress_churn"));
    const std::size_t fds_before = test::open_fds();
    const std::size_t frames_before = ringio::detail::live_frames();
    ringio::run([](churn_state& s, std::size_t n, std::size_t w, std::size_t c, std::size_t sl) -> ringio::task<> {
        ringio::server_options opts;
        opts.backlog = 1024;
        ringio::server srv = co_await ringio::start_server(
            [&s](ringio::stream_reader r, ringio::stream_writer wr) { return echo(s, std::move(r), std::move(wr)); },
            "127.0.0.1", 0, opts);
        s.port = srv.port();

        // Warm-up, then the baseline: every cache has grown to its working size.
        co_await run_cycles(s, w, c);
        CHECK(co_await test::eventually([&] { return srv.connections() == 0; }, 10000ms));
        const std::size_t fds0 = test::open_fds();
        const std::size_t frames0 = ringio::detail::live_frames();
        stress::trim_heap();
        const std::size_t heap0 = stress::heap_in_use();
        const std::size_t rss0 = stress::rss_bytes();
        auto start = std::chrono::steady_clock::now();

        co_await run_cycles(s, n - w, c);

        auto took = std::chrono::steady_clock::now() - start;
        CHECK(co_await test::eventually([&] { return srv.connections() == 0; }, 10000ms));
        CHECK(srv.connections() == 0);
        CHECK(co_await test::eventually([&] { return test::open_fds() == fds0; }, 10000ms));
        CHECK(test::open_fds() == fds0);
        CHECK(ringio::detail::live_frames() == frames0);
        stress::trim_heap();
        const std::size_t heap1 = stress::heap_in_use();
        const std::size_t rss1 = stress::rss_bytes();
        MESSAGE((n - w) << " cycles in " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                      << " ms; heap in use " << heap0 << " -> " << heap1 << " bytes, VmRSS " << rss0 / 1024 << " -> "
                      << rss1 / 1024 << " KiB, live frames " << frames0);
        CHECK(heap1 <= heap0 + sl);

        srv.close();
        co_await ringio::wait_for(srv.wait_closed(), 10s);
    }(st, cycles, warmup, concurrency, slack));

    INFO("first client error: ", st.first_error);
    CHECK(st.done == cycles);
    CHECK(st.client_errors == 0);
    CHECK(st.bad_echo == 0);
    CHECK(st.handled == cycles);  // every connection reached a handler
    CHECK(st.server_other == 0);
    CHECK(st.server_eofs + st.server_resets == cycles);  // and every handler ended
    CHECK(st.server_resets <= st.resets);
    MESSAGE(cycles << " cycles: " << st.resets << " resets by the client; the server saw " << st.server_eofs << " EOFs and "
                   << st.server_resets << " resets");
    CHECK(test::open_fds() == fds_before);
    CHECK(ringio::detail::live_frames() == frames_before);
}
