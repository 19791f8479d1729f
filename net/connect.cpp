// open_connection and open_unix_connection: resolving, then trying the addresses one after
// another, or staggered (happy eyeballs, RFC 8305); each attempt is a Task of its own.
#include "ringio/stream.hpp"

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <stdexcept>

#include <fmt/format.h>

#include "ringio/errors.hpp"
#include "ringio/event.hpp"
#include "ringio/task_group.hpp"
#include "ringio/time.hpp"
#include "ringio/wait_for.hpp"
#include "stream_state.hpp"

namespace ringio {

namespace {

/// What became of the attempt on one address.
struct attempt_result {
    std::exception_ptr error;  // why it failed; null while it runs, if it won, or if it was cancelled
    std::string step;          // the step that failed when not the connect: "socket()", "bind to ..."
    bool ended = false;        // it connected or failed (a cancelled attempt never ends this way)
};

/// What the attempts share with the task that starts them (connect_any). It lives in that task's
/// frame, and that task waits for every attempt to end before it leaves, whatever happens.
struct race {
    race(const std::vector<endpoint>& t, const connect_options& o) : targets(t), options(o), results(t.size()) {}

    const std::vector<endpoint>& targets;  // in the order they are tried
    const connect_options& options;
    std::vector<attempt_result> results;   // one per target
    socket winner;                         // the first socket that connected
    std::size_t ended = 0;                 // attempts that connected or failed
    event progress;                        // set whenever an attempt connects or fails
};

/// Connects to r.targets[i]. Every failure, making the socket included, is recorded as this
/// address's; cancellation (the attempt lost, or open_connection was cancelled) is not a failure
/// and propagates. The socket, unless it won, is closed when the attempt ends: it has no
/// operation in flight by then (a cancelled connect is waited for).
task<> attempt(race& r, std::size_t i) {
    const endpoint& target = r.targets[i];
    attempt_result& result = r.results[i];
    try {
        // A socket that cannot be made (EAFNOSUPPORT where the family is missing, EMFILE) is
        // this address's failure, as in asyncio: the next address may still work.
        result.step = "socket()";
        socket s = socket::create(target.family(), SOCK_STREAM);
        result.step = "setsockopt TCP_NODELAY";
        if (r.options.nodelay && target.is_ip()) s.set_nodelay(true);
        if (r.options.local_address) {
            result.step = fmt::format("bind to {}", *r.options.local_address);
            s.bind(*r.options.local_address);
        }
        result.step.clear();
        if (r.options.timeout)
            co_await wait_for(s.connect(target), *r.options.timeout);
        else
            co_await s.connect(target);
        // The first to connect wins; one that connected too late to be cancelled is closed here.
        if (!r.winner) r.winner = std::move(s);
    } catch (const cancelled_error&) {
        throw;
    } catch (...) {
        result.error = std::current_exception();
    }
    result.ended = true;
    ++r.ended;
    r.progress.set();
}

/// Waits until the attempt after attempt i is due: attempt i has failed, or (happy eyeballs) it
/// has not connected within the delay. After the last attempt: until every attempt has ended.
/// Returns at once when an attempt has won.
task<> next_turn(race& r, std::size_t i) {
    const bool last = i + 1 == r.targets.size();
    std::optional<clock::time_point> due;
    if (!last && r.options.happy_eyeballs_delay)
        due = clock::now() + std::chrono::ceil<clock::duration>(*r.options.happy_eyeballs_delay);
    auto waiting = [&r, i, last] { return !r.winner && (last ? r.ended < r.targets.size() : !r.results[i].ended); };
    while (waiting()) {
        r.progress.clear();  // (nothing can set it between the check above and the wait below)
        if (!due) {
            co_await r.progress.wait();
            continue;
        }
        const clock::duration left = *due - clock::now();
        if (left <= clock::duration::zero()) co_return;
        bool expired = false;
        try {
            co_await wait_for(r.progress.wait(), left);
        } catch (const timeout_error&) {
            expired = true;
        }
        if (expired) co_return;
    }
}

/// The errno an attempt failed with; an exception other than an OS error or a timeout (out of
/// memory) is rethrown.
int errno_of(const std::exception_ptr& e) {
    if (!e) return ECANCELED;  // (not reached: when none won, every attempt has failed)
    try {
        std::rethrow_exception(e);
    } catch (const timeout_error&) {
        return ETIMEDOUT;  // options.timeout
    } catch (const std::system_error& err) {
        return err.code().value();
    }
}

/// One std::system_error for attempts that all failed, with the errno of the last. Each address
/// is named once and each errno's text said once: the addresses that failed alike are listed
/// together ("connect to [::1]:80, 127.0.0.1:80: Connection refused"), and the errno of the last
/// attempt goes last, where std::system_error appends its text.
std::system_error connect_failure(const race& r) {
    std::vector<int> errnos;
    errnos.reserve(r.results.size());
    for (const attempt_result& a : r.results) errnos.push_back(errno_of(a.error));
    const int last = errnos.back();
    std::vector<int> order;  // each errno once, in order of first appearance, `last` at the end
    for (int err : errnos)
        if (err != last && std::find(order.begin(), order.end(), err) == order.end()) order.push_back(err);
    order.push_back(last);
    std::string what = "ringio: connect to ";
    for (int err : order) {
        bool first = true;
        for (std::size_t i = 0; i < errnos.size(); ++i) {
            if (errnos[i] != err) continue;
            if (!first) what += ", ";
            first = false;
            what += r.targets[i].to_string();
            if (!r.results[i].step.empty()) fmt::format_to(std::back_inserter(what), " ({})", r.results[i].step);
        }
        if (err != last) fmt::format_to(std::back_inserter(what), ": {}; ", std::system_category().message(err));
    }
    return make_system_error(last, what);
}

/// asyncio's _interleave_addrinfos: the addresses grouped by family (in order of first
/// appearance), the first `first_family_count` of the first family first, then one of each
/// family in turn. [a1 a2 a3 b1 b2] with 1 -> [a1 b1 a2 b2 a3]; with 2 -> [a1 a2 b1 a3 b2].
std::vector<endpoint> interleave(const std::vector<endpoint>& targets, std::size_t first_family_count) {
    std::vector<std::vector<endpoint>> families;
    for (const endpoint& e : targets) {
        auto same = [&e](const std::vector<endpoint>& f) { return f.front().family() == e.family(); };
        auto it = std::find_if(families.begin(), families.end(), same);
        if (it == families.end()) it = families.emplace(families.end());
        it->push_back(e);
    }
    std::vector<std::size_t> taken(families.size(), 0);
    taken[0] = std::min(first_family_count - 1, families[0].size());
    std::vector<endpoint> out(families[0].begin(), families[0].begin() + static_cast<std::ptrdiff_t>(taken[0]));
    out.reserve(targets.size());
    while (out.size() < targets.size())
        for (std::size_t f = 0; f < families.size(); ++f)
            if (taken[f] < families[f].size()) out.push_back(families[f][taken[f]++]);
    return out;
}

task<std::pair<stream_reader, stream_writer>> connect_any(std::vector<endpoint> targets, connect_options options) {
    const std::size_t first_family_count = options.interleave.value_or(options.happy_eyeballs_delay ? 1 : 0);
    if (first_family_count > 0 && targets.size() > 1) targets = interleave(targets, first_family_count);
    race r(targets, options);
    task_group attempts;
    std::exception_ptr stopped;  // open_connection cancelled (or an attempt that could not start)
    try {
        for (std::size_t i = 0; i < targets.size() && !r.winner; ++i) {
            attempts.create_task(attempt(r, i));
            co_await next_turn(r, i);
        }
    } catch (...) {
        stopped = std::current_exception();
    }
    // The attempts still running lost (or open_connection was cancelled): cancel them, and wait
    // until each has ended and closed its socket.
    attempts.cancel();
    co_await attempts.wait();
    if (stopped) std::rethrow_exception(stopped);
    if (!r.winner) throw connect_failure(r);
    co_return make_streams(std::move(r.winner), stream_options{options.limit, options.read_timeout});
}

}  // namespace

task<std::pair<stream_reader, stream_writer>> open_connection(std::string host, std::uint16_t port,
                                                              connect_options options) {
    std::vector<endpoint> targets = co_await resolve(host, port);
    co_return co_await connect_any(std::move(targets), std::move(options));
}

task<std::pair<stream_reader, stream_writer>> open_connection(std::vector<endpoint> addresses, connect_options options) {
    if (addresses.empty()) throw std::invalid_argument("ringio: open_connection: no address to connect to");
    co_return co_await connect_any(std::move(addresses), std::move(options));
}

task<std::pair<stream_reader, stream_writer>> open_unix_connection(std::string path, connect_options options) {
    std::vector<endpoint> targets;  // (no braced list: an initializer_list in a coroutine, see docs/runtime.md)
    targets.push_back(endpoint::unix_path(path));
    co_return co_await connect_any(std::move(targets), std::move(options));
}

}  // namespace ringio
