// open_connection and open_unix_connection: resolving, then trying each address.
#include "ringio/stream.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

#include "ringio/errors.hpp"
#include "stream_state.hpp"

#include "ringio/wait_for.hpp"

namespace ringio {

namespace {

/// How one address failed: the errno, and the step when it was not the connect itself.
struct failed_attempt {
    endpoint target;
    int error = 0;
    std::string step;  // "" for the connect; "socket()", "bind to ...", ... otherwise
};

/// One std::system_error for every failed attempt, with the errno of the last. Each address is
/// named once and each errno's text said once: the addresses that failed alike are listed
/// together ("connect to [::1]:80, 127.0.0.1:80: Connection refused"), and the errno of the last
/// one goes last, where std::system_error appends its text.
std::system_error connect_failure(const std::vector<failed_attempt>& failed) {
    const int last = failed.back().error;
    std::vector<int> errors;  // in order of first appearance, `last` moved to the end
    for (const failed_attempt& f : failed)
        if (f.error != last && std::find(errors.begin(), errors.end(), f.error) == errors.end()) errors.push_back(f.error);
    errors.push_back(last);
    std::string what = "ringio: connect to ";
    for (int err : errors) {
        bool first = true;
        for (const failed_attempt& f : failed) {
            if (f.error != err) continue;
            if (!first) what += ", ";
            first = false;
            what += f.target.to_string();
            if (!f.step.empty()) fmt::format_to(std::back_inserter(what), " ({})", f.step);
        }
        if (err != last) fmt::format_to(std::back_inserter(what), ": {}; ", std::system_category().message(err));
    }
    return make_system_error(last, what);
}

task<std::pair<stream_reader, stream_writer>> connect_any(std::vector<endpoint> targets, connect_options options) {
    std::vector<failed_attempt> failed;
    for (const endpoint& ep : targets) {
        socket s;
        std::string step;
        int err = 0;
        try {
            // A socket that cannot be made (EAFNOSUPPORT where the family is missing, EMFILE) is
            // this address's failure, as in asyncio: the next address may still work.
            step = "socket()";
            s = socket::create(ep.family(), SOCK_STREAM);
            step = "setsockopt TCP_NODELAY";
            if (options.nodelay && ep.is_ip()) s.set_nodelay(true);
            if (options.local_address) {
                step = fmt::format("bind to {}", *options.local_address);
                s.bind(*options.local_address);
            }
            step.clear();
            if (options.timeout)
                co_await wait_for(s.connect(ep), *options.timeout);
            else
                co_await s.connect(ep);
        } catch (const timeout_error&) {
            err = ETIMEDOUT;
        } catch (const std::system_error& e) {
            err = e.code().value();
        }
        if (err == 0) co_return make_streams(std::move(s), stream_options{options.limit, options.read_timeout});
        failed.push_back(failed_attempt{ep, err, std::move(step)});
    }
    throw connect_failure(failed);
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
