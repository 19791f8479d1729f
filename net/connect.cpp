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

task<std::pair<stream_reader, stream_writer>> connect_any(std::vector<endpoint> targets, connect_options options) {
    std::string errors;
    int last_error = ECONNREFUSED;
    for (const endpoint& ep : targets) {
        socket s = socket::create(ep.family(), SOCK_STREAM);
        int err = 0;
        std::string what;
        try {
            if (options.nodelay && ep.is_ip()) s.set_nodelay(true);
            if (options.local_address) s.bind(*options.local_address);
            if (options.timeout)
                co_await wait_for(s.connect(ep), *options.timeout);
            else
                co_await s.connect(ep);
        } catch (const timeout_error&) {
            err = ETIMEDOUT;
            what = fmt::format("ringio: connect to {}: timed out", ep);
        } catch (const std::system_error& e) {
            err = e.code().value();
            what = e.what();
        }
        if (err == 0) co_return make_streams(std::move(s), stream_options{options.limit, options.read_timeout});
        last_error = err;
        if (!errors.empty()) errors += "; ";
        errors += what;
    }
    throw std::system_error(last_error, std::system_category(), errors);
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
    std::vector<endpoint> targets{endpoint::unix_path(path)};
    co_return co_await connect_any(std::move(targets), std::move(options));
}

}  // namespace ringio
