// Cancellation storm: about 10,000 tasks at once doing connects, accepts, reads, writes with
// drain(), sleeps and queue waits on real loopback sockets, cancelled at random moments (seeded
// PRNG, seed printed) by a canceller task, round after round. Every cancelled task is restarted
// on the same socket or stream, so the storm also checks that cancelling loses nothing. After
// each round and at the end: no fd leaked (/proc/self/fd), no coroutine frame or task state
// leaked (ringio::detail::live_frames()), no task left (loop.live_tasks()), and on every
// connection that was neither aborted nor reset, every byte write() accepted reached the peer,
// in order (a pattern that depends on the stream and the offset, checked byte by byte).
#include <doctest/doctest.h>

#include <ringio/detail/frame_cache.hpp>
#include <ringio/ringio.hpp>

#include <netinet/in.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "net_helpers.hpp"
#include "stress_helpers.hpp"

using namespace std::chrono_literals;

namespace {

// How each connection ends; chosen at random per connection.
enum class ending {
    graceful,        // the sender writes its whole target, close(); the peer reads it all, then EOF
    abandoned,       // the sender drops both halves mid-way without close(): flushed and closed
    sender_abort,    // the sender aborts (RST) mid-way: the peer sees a prefix, then EOF or a reset
    receiver_abort,  // the receiver aborts mid-way: the sender's writes fail (EPIPE/ECONNRESET)
};

struct round_state;

// One connection: a listening socket of its own (so that an accepted socket is known to belong
// to this pair; stale ones from cancelled connects are told apart by the client's port), the
// client side sending a pattern and the accepted side receiving and checking it.
struct pair_state {
    std::uint64_t id = 0;
    std::size_t slot = 0;  // slots[slot]: connect/send steps; slots[slot + 1]: accept/receive steps
    ending end = ending::graceful;
    std::uint64_t target = 0;    // bytes the sender means to write
    std::uint64_t cut_at = 0;    // where abandoned/sender_abort/receiver_abort happen

    ringio::socket listener;
    ringio::endpoint listen_ep;
    ringio::socket client;
    std::uint16_t client_port = 0;
    std::vector<std::pair<std::uint16_t, ringio::socket>> accepted;  // not yet matched
    ringio::socket server;
    bool matched = false;
    ringio::event matched_ev;
    ringio::task_handle<> accept_step;

    ringio::stream_reader cr, sr;
    ringio::stream_writer cw, sw;
    std::uint64_t sent = 0;      // bytes write() accepted (it never suspends: no cancel can split it)
    std::uint64_t received = 0;  // bytes read and checked
    bool send_finished = false;
    bool recv_finished = false;
    bool eof = false;
    int send_error = 0;
    int recv_error = 0;
    std::string failure;
};

struct round_state {
    std::mt19937_64 rng;
    std::vector<ringio::task_handle<>> slots;  // the cancellable tasks, as the canceller sees them
    std::vector<std::unique_ptr<pair_state>> pairs;
    bool stop = false;
    std::size_t cancels = 0;
    std::size_t cancel_ticks = 0;
    std::size_t restarts = 0;
    std::size_t sleeps = 0;
    // queue accounting: each value is put at most once; it must be taken exactly once
    ringio::queue<std::uint32_t> q{64};
    std::uint32_t next_value = 0;
    std::vector<std::uint8_t> taken;  // per value
    std::size_t produced = 0;
    std::size_t consumed = 0;
    std::size_t duplicates = 0;

    explicit round_state(std::uint64_t seed) : rng(seed) {}
    std::size_t below(std::size_t n) { return static_cast<std::size_t>(rng() % n); }
};

// ---- connecting ----

void try_match(pair_state& p) {
    if (p.matched || !p.client.valid()) return;
    for (auto it = p.accepted.begin(); it != p.accepted.end(); ++it) {
        if (it->first != p.client_port) continue;
        p.server = std::move(it->second);
        p.accepted.erase(it);
        p.matched = true;
        p.matched_ev.set();
        if (p.accept_step.valid() && !p.accept_step.done()) p.accept_step.cancel();  // blocked in accept()
        return;
    }
}

ringio::task<> connect_step(pair_state& p) {
    ringio::socket s = ringio::socket::create(AF_INET, SOCK_STREAM);
    co_await s.connect(p.listen_ep);
    // No suspension from here on: once connect() returned, the socket is kept.
    p.client_port = s.local_endpoint().port();
    p.client = std::move(s);
    try_match(p);
}

ringio::task<> accept_step(pair_state& p) {
    while (!p.matched) {
        std::pair<ringio::socket, ringio::endpoint> conn = co_await p.listener.accept();
        p.accepted.emplace_back(conn.second.port(), std::move(conn.first));
        try_match(p);
    }
}

ringio::task<> accept_driver(round_state& rs, pair_state& p) {
    while (!p.matched) {
        p.accept_step = ringio::create_task(accept_step(p));
        rs.slots[p.slot + 1] = p.accept_step;
        try {
            co_await p.accept_step;
        } catch (const ringio::cancelled_error&) {
            ++rs.restarts;
        }
    }
}

// ---- sending and receiving ----

ringio::task<> send_step(round_state& rs, pair_state& p) {
    std::vector<unsigned char> buf;
    std::size_t writes = 1 + rs.below(8);
    for (std::size_t i = 0; i < writes && !p.send_finished; ++i) {
        if (p.end == ending::sender_abort && p.sent >= p.cut_at) {
            p.cw.abort();
            p.send_finished = true;
            co_return;
        }
        if (p.end == ending::abandoned && p.sent >= p.cut_at) {
            ringio::stream_reader r = std::move(p.cr);  // both halves dropped, no close()
            ringio::stream_writer w = std::move(p.cw);
            p.send_finished = true;
            co_return;
        }
        std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(1 + rs.below(16384), p.target - p.sent));
        buf.resize(n);
        stress::fill_pattern(p.id, p.sent, buf.data(), n);
        p.cw.write(std::as_bytes(std::span(buf)));
        p.sent += n;
        if (p.sent == p.target) p.send_finished = true;
        co_await p.cw.drain();
    }
}

ringio::task<> sender(round_state& rs, pair_state& p) {
    while (!p.send_finished) {
        auto h = ringio::create_task(send_step(rs, p));
        rs.slots[p.slot] = h;
        try {
            co_await h;
        } catch (const ringio::cancelled_error&) {
            ++rs.restarts;
        } catch (const std::system_error& e) {
            p.send_error = e.code().value();
            p.send_finished = true;
        }
    }
    if (p.end == ending::graceful && !p.send_error) {
        p.cw.close();
        try {
            co_await ringio::wait_for(p.cw.wait_closed(), 30s);
        } catch (const ringio::timeout_error&) {
            p.failure = "the sender's close did not finish within 30 s";
        }
    }
    p.cr = {};
    p.cw = {};
}

// Takes `n` received bytes: checks them against the pattern, counts them.
void take(pair_state& p, const void* data, std::size_t n) {
    if (n == 0) {
        p.eof = true;
        p.recv_finished = true;
        return;
    }
    std::size_t bad = stress::check_pattern(p.id, p.received, static_cast<const unsigned char*>(data), n);
    if (bad != n && p.failure.empty())
        p.failure = "byte " + std::to_string(p.received + bad) + " differs from what was sent";
    p.received += n;
}

ringio::task<> recv_step(round_state& rs, pair_state& p) {
    std::vector<std::byte> buf(128 * 1024);
    std::size_t reads = 1 + rs.below(8);
    for (std::size_t i = 0; i < reads && !p.recv_finished; ++i) {
        std::size_t mode = rs.below(4);
        try {
            if (mode == 0) {
                std::size_t n = co_await p.sr.read_some(std::span(buf).first(1 + rs.below(buf.size())));
                take(p, buf.data(), n);
            } else if (mode == 1) {
                std::string s = co_await p.sr.read(1 + rs.below(65536));
                take(p, s.data(), s.size());
            } else if (mode == 2) {
                std::string s = co_await p.sr.read_exactly(1 + rs.below(4096));  // gathers in the buffer
                take(p, s.data(), s.size());
            } else {
                auto dest = std::span(buf).first(65536 + rs.below(65536));  // straight into buf
                co_await p.sr.read_exactly(dest);
                take(p, dest.data(), dest.size());
            }
        } catch (const ringio::incomplete_read_error& e) {
            take(p, e.partial().data(), e.partial().size());
            take(p, nullptr, 0);  // EOF
        }
        if (p.end == ending::receiver_abort && p.received >= p.cut_at && !p.recv_finished) {
            p.sw.abort();
            p.recv_finished = true;
        }
    }
}

ringio::task<> receiver(round_state& rs, pair_state& p) {
    while (!p.recv_finished) {
        auto h = ringio::create_task(recv_step(rs, p));
        rs.slots[p.slot + 1] = h;
        try {
            co_await h;
        } catch (const ringio::cancelled_error&) {
            ++rs.restarts;
        } catch (const std::system_error& e) {
            p.recv_error = e.code().value();
            p.recv_finished = true;
        }
    }
    p.sr = {};
    p.sw = {};
}

ringio::task<> pair_driver(round_state& rs, pair_state& p) {
    auto acceptor = ringio::create_task(accept_driver(rs, p));
    while (!p.client.valid()) {
        auto h = ringio::create_task(connect_step(p));
        rs.slots[p.slot] = h;
        try {
            co_await h;
        } catch (const ringio::cancelled_error&) {
            ++rs.restarts;
        }
    }
    try {
        co_await ringio::wait_for(p.matched_ev.wait(), 30s);
    } catch (const ringio::timeout_error&) {
        p.failure = "the accepted side of the connection never came";
        acceptor.cancel();
    }
    try {
        co_await acceptor;
    } catch (const ringio::cancelled_error&) {
    }
    co_await p.listener.close();
    p.accepted.clear();  // connections of cancelled connects
    if (!p.matched) co_return;

    // TRICKY: no structured bindings here: GCC 12 miscompiles `auto [r, w] = make_streams(...)`
    // in a coroutine (the streams came out closed: every read saw EOF at once).
    std::pair<ringio::stream_reader, ringio::stream_writer> client_side = ringio::make_streams(std::move(p.client));
    std::pair<ringio::stream_reader, ringio::stream_writer> server_side = ringio::make_streams(std::move(p.server));
    p.cr = std::move(client_side.first);
    p.cw = std::move(client_side.second);
    p.sr = std::move(server_side.first);
    p.sw = std::move(server_side.second);
    std::size_t high = 4096 + rs.below(32768);  // small marks, so that drain() really waits
    p.cw.set_write_buffer_limits(high);
    auto s = ringio::create_task(sender(rs, p));
    auto r = ringio::create_task(receiver(rs, p));
    co_await s;
    co_await r;
}

// ---- sleeps and queue waits ----

ringio::task<> sleep_step(round_state& rs) {
    while (!rs.stop) {
        co_await ringio::sleep(std::chrono::microseconds(rs.below(5000)));
        ++rs.sleeps;
    }
}

// Getters take slowly (a pause after each item), so the queue fills and putters wait too.
ringio::task<> get_step(round_state& rs) {
    while (true) {
        std::uint32_t v = co_await rs.q.get();  // throws queue_shutdown once shut down and empty
        // No suspension before it is counted: a cancellation after the hand-over comes below.
        if (rs.taken[v]++ != 0) ++rs.duplicates;
        ++rs.consumed;
        if (!rs.stop) co_await ringio::sleep(std::chrono::microseconds(rs.below(20000)));
    }
}

ringio::task<> put_step(round_state& rs) {
    while (!rs.stop) {
        if (rs.next_value >= rs.taken.size()) {  // out of values: idle until the round ends
            co_await ringio::sleep(1ms);
            continue;
        }
        std::uint32_t v = rs.next_value++;
        co_await rs.q.put(v);  // returned: the value is in the queue (cancelled: it is not)
        ++rs.produced;
    }
}

enum class worker { sleeper, getter, putter };

ringio::task<> worker_driver(round_state& rs, std::size_t slot, worker kind) {
    while (!rs.stop || kind == worker::getter) {
        ringio::task_handle<> h = kind == worker::sleeper  ? ringio::create_task(sleep_step(rs))
                                  : kind == worker::getter ? ringio::create_task(get_step(rs))
                                                           : ringio::create_task(put_step(rs));
        rs.slots[slot] = h;
        try {
            co_await h;
            co_return;
        } catch (const ringio::cancelled_error&) {
            ++rs.restarts;
        } catch (const ringio::queue_shutdown&) {
            co_return;
        }
    }
}

// ---- the canceller ----

ringio::task<> canceller(round_state& rs) {
    while (!rs.stop) {
        if (rs.below(3) == 0)
            co_await ringio::yield_now();
        else
            co_await ringio::sleep(std::chrono::microseconds(rs.below(600)));
        ++rs.cancel_ticks;
        std::size_t k = 1 + rs.below(256);
        for (std::size_t i = 0; i < k; ++i) {
            ringio::task_handle<>& h = rs.slots[rs.below(rs.slots.size())];
            if (h.valid() && !h.done() && h.cancel()) ++rs.cancels;
        }
    }
}

ringio::task<> wait_handle(ringio::task_handle<> h) { co_await h; }

struct totals {
    std::size_t rounds = 0, pairs = 0, cancels = 0, restarts = 0, bytes = 0, checked_exact = 0;
};

ringio::task<> one_round(std::uint64_t seed, std::size_t n_pairs, std::size_t n_sleepers, std::size_t n_getters,
                         std::size_t n_putters, totals& tot) {
    auto& loop = ringio::event_loop::running();
    const std::size_t fds0 = test::open_fds();
    const std::size_t tasks0 = loop.live_tasks();
    const std::size_t frames0 = ringio::detail::live_frames();
    auto rs = std::make_unique<round_state>(seed);
    rs->slots.resize(2 * n_pairs + n_sleepers + n_getters + n_putters);
    rs->taken.resize(4'000'000);

    std::vector<ringio::task_handle<>> drivers;
    for (std::size_t i = 0; i < n_pairs; ++i) {
        auto p = std::make_unique<pair_state>();
        p->id = seed * 1'000'003 + i;
        p->slot = 2 * i;
        std::size_t e = rs->below(20);
        p->end = e < 12 ? ending::graceful : e < 15 ? ending::abandoned : e < 18 ? ending::sender_abort : ending::receiver_abort;
        p->target = 4096 + rs->below(128 * 1024);
        p->cut_at = rs->below(static_cast<std::size_t>(p->target));
        p->listener = ringio::socket::create(AF_INET, SOCK_STREAM);
        p->listener.bind(ringio::endpoint(ringio::ip_address::loopback_v4(), 0));
        p->listener.listen(16);
        p->listen_ep = p->listener.local_endpoint();
        rs->pairs.push_back(std::move(p));
    }
    for (auto& p : rs->pairs) drivers.push_back(ringio::create_task(pair_driver(*rs, *p)));
    std::vector<ringio::task_handle<>> workers;
    std::size_t slot = 2 * n_pairs;
    for (std::size_t i = 0; i < n_sleepers; ++i) workers.push_back(ringio::create_task(worker_driver(*rs, slot++, worker::sleeper)));
    for (std::size_t i = 0; i < n_getters; ++i) workers.push_back(ringio::create_task(worker_driver(*rs, slot++, worker::getter)));
    for (std::size_t i = 0; i < n_putters; ++i) workers.push_back(ringio::create_task(worker_driver(*rs, slot++, worker::putter)));
    auto cancel_task = ringio::create_task(canceller(*rs));

    std::size_t peak_tasks = 0;
    bool timed_out = false;
    try {
        co_await ringio::yield_now();
        peak_tasks = loop.live_tasks() - tasks0;
        for (auto& d : drivers) co_await d;  // never cancelled; their failures are in pair_state
        rs->stop = true;
        co_await cancel_task;
        rs->q.shutdown();  // getters take what is left, then stop; waiting putters stop
        for (auto& w : workers) co_await w;
    } catch (const ringio::cancelled_error&) {
        timed_out = true;  // the round hung and wait_for cancelled it: the test fails
    }
    if (timed_out) {
        // Stop every task that refers to *rs before it goes away, then report.
        rs->stop = true;
        cancel_task.cancel();
        for (auto& h : rs->slots)
            if (h.valid()) h.cancel();
        for (auto& d : drivers) d.cancel();
        for (auto& w : workers) w.cancel();
        for (auto& d : drivers) co_await ringio::gather_settled(wait_handle(d));
        for (auto& w : workers) co_await ringio::gather_settled(wait_handle(w));
        co_await ringio::gather_settled(wait_handle(cancel_task));
        for (auto& pp : rs->pairs)
            MESSAGE("pair " << pp->id << ": matched " << pp->matched << " sent " << pp->sent << "/" << pp->target
                            << " received " << pp->received << " send finished " << pp->send_finished
                            << " recv finished " << pp->recv_finished);
        FAIL("the round did not finish within its time limit (a hang)");
    }

    // ---- the round's checks ----
    std::size_t exact = 0;
    for (auto& pp : rs->pairs) {
        pair_state& p = *pp;
        INFO("pair ", p.id, " ending ", static_cast<int>(p.end), " target ", p.target, " cut at ", p.cut_at, " sent ",
             p.sent, " received ", p.received, " eof ", p.eof, " send error ", p.send_error, " recv error ", p.recv_error);
        CHECK(p.failure.empty());
        if (!p.failure.empty()) MESSAGE(p.failure);
        CHECK(p.matched);
        CHECK(p.received <= p.sent);
        tot.bytes += p.received;
        switch (p.end) {
            case ending::graceful:
                CHECK(p.send_error == 0);
                CHECK(p.recv_error == 0);
                CHECK(p.sent == p.target);
                CHECK(p.eof);
                CHECK(p.received == p.sent);  // every byte written arrived, in order (checked on the way)
                ++exact;
                break;
            case ending::abandoned:
                CHECK(p.send_error == 0);
                CHECK(p.recv_error == 0);
                CHECK(p.eof);
                CHECK(p.received == p.sent);  // the dropped writer was flushed
                ++exact;
                break;
            case ending::sender_abort: {
                // a prefix (checked byte by byte), then EOF or a reset
                bool ended = p.eof || p.recv_error == ECONNRESET;
                CHECK(ended);
                break;
            }
            case ending::receiver_abort:
                // the receiver saw a prefix; the sender may or may not have noticed the reset
                CHECK((p.send_error == 0 || p.send_error == ECONNRESET || p.send_error == EPIPE));
                break;
        }
    }
    CHECK(rs->duplicates == 0);
    CHECK(rs->consumed == rs->produced);  // nothing lost, nothing taken twice
    std::size_t taken_total = 0;
    for (std::uint8_t t : rs->taken) taken_total += t;
    CHECK(taken_total == rs->consumed);
    CHECK(rs->q.empty());

    tot.rounds += 1;
    tot.pairs += n_pairs;
    tot.cancels += rs->cancels;
    tot.restarts += rs->restarts;
    tot.checked_exact += exact;
    MESSAGE("round: " << n_pairs << " connections, " << peak_tasks << " tasks at the start, " << rs->cancels
                      << " cancels in " << rs->cancel_ticks << " ticks, " << rs->restarts << " restarts, "
                      << rs->produced << " queue items, " << rs->sleeps << " sleeps");

    // Nothing left behind by the round: tasks, frames, fds (closes finish asynchronously).
    drivers.clear();
    workers.clear();
    cancel_task = {};
    rs.reset();
    CHECK(co_await test::eventually([&] { return test::open_fds() == fds0; }, 5000ms));
    CHECK(test::open_fds() == fds0);
    CHECK(co_await test::eventually([&] { return loop.live_tasks() == tasks0; }, 5000ms));
    CHECK(loop.live_tasks() == tasks0);
    CHECK(ringio::detail::live_frames() == frames0);
}

}  // namespace

TEST_CASE("cancellation storm: 10,000 tasks on sockets, timers and a queue, cancelled at random, round after round") {
    std::uint64_t seed = stress::seed("stress_cancel");
    // Each connection needs 3 fds at once (its listener, the client, the accepted socket);
    // sleepers and queue waiters need none. 1,000 connections need ~3,000 fds: raise the soft
    // limit to the hard one (often 1024 -> much more) and use fewer connections if it is lower.
    std::size_t limit = stress::raise_fd_limit();
    const std::size_t fds0 = test::open_fds();
    std::size_t n_pairs = std::min<std::size_t>(1000, (limit - fds0 - 64) / 3);
    REQUIRE(n_pairs >= 100);
    // 2,000 socket tasks (connect/send and accept/receive per connection), 5,000 sleepers,
    // 2,000 queue getters and 1,000 putters: 10,000 cancellable tasks, each restarted by a
    // driver task when cancelled (so ~20,000 tasks are alive at the start of a round).
    const std::size_t n_sleepers = 5000, n_getters = 2000, n_putters = 1000;
    const int rounds = stress::sanitized ? 2 : 4;  // ASan: ~15 s a round
    const std::size_t frames0 = ringio::detail::live_frames();
    totals tot;
    ringio::run([](std::uint64_t s, std::size_t np, int nr, std::size_t ns, std::size_t ng, std::size_t npu,
                   totals& t) -> ringio::task<> {
        for (int r = 0; r < nr; ++r) {
            co_await ringio::wait_for(one_round(s + static_cast<std::uint64_t>(r), np, ns, ng, npu, t), 120s);
        }
        CHECK(ringio::event_loop::running().live_tasks() == 1);  // this task only
    }(seed, n_pairs, rounds, n_sleepers, n_getters, n_putters, tot));
    MESSAGE(tot.rounds << " rounds, " << tot.pairs << " connections (" << tot.checked_exact << " checked byte for byte to the end), "
                       << tot.bytes << " bytes checked, " << tot.cancels << " cancellations, " << tot.restarts << " restarts");
    CHECK(tot.cancels > 1000);
    CHECK(test::open_fds() == fds0);
    CHECK(ringio::detail::live_frames() == frames0);
}
