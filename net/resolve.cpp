// resolve(): numeric addresses parsed on the loop, names looked up with getaddrinfo on the
// thread pool (getaddrinfo blocks, and there is no io_uring operation for it).
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <memory>

#include "ringio/endpoint.hpp"
#include "ringio/to_thread.hpp"

namespace ringio {

namespace {

bool family_wanted(int wanted, const ip_address& a) noexcept {
    return wanted == AF_UNSPEC || wanted == a.family();
}

void add_unique(std::vector<endpoint>& out, const endpoint& e) {
    if (std::find(out.begin(), out.end(), e) == out.end()) out.push_back(e);
}

/// Runs on a pool thread: getaddrinfo, then the results as endpoints with `port`, in
/// getaddrinfo's order without duplicates. Throws resolve_error.
std::vector<endpoint> lookup(const std::string& host, std::uint16_t port, const resolve_options& options) {
    addrinfo hints{};
    hints.ai_family = options.family;
    hints.ai_socktype = options.socktype;
    hints.ai_flags = options.passive ? AI_PASSIVE : 0;  // no AI_ADDRCONFIG: loopback-only hosts work
    addrinfo* list = nullptr;
    // No service: the port is set on each result below, so no services database is consulted.
    const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &list);
    if (rc != 0) {
        const int err = errno;  // for EAI_SYSTEM; copying host may disturb it
        std::string h = host;
        errno = err;
        throw resolve_error(std::move(h), rc);
    }
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(list, &::freeaddrinfo);
    std::vector<endpoint> out;
    for (const addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
        const auto e = endpoint::from_sockaddr(ai->ai_addr, ai->ai_addrlen);
        add_unique(out, endpoint(e.address(), port));
    }
    if (out.empty()) throw resolve_error(host, EAI_NONAME);
    return out;
}

}  // namespace

task<std::vector<endpoint>> resolve(std::string host, std::uint16_t port, resolve_options options) {
    if (options.family != AF_UNSPEC && options.family != AF_INET && options.family != AF_INET6)
        throw resolve_error(std::move(host), EAI_FAMILY);

    if (host.empty()) {
        std::vector<endpoint> out;
        const ip_address v4 = options.passive ? ip_address::any_v4() : ip_address::loopback_v4();
        const ip_address v6 = options.passive ? ip_address::any_v6() : ip_address::loopback_v6();
        if (family_wanted(options.family, v4)) out.emplace_back(v4, port);
        if (family_wanted(options.family, v6)) out.emplace_back(v6, port);
        co_return out;
    }

    // A numeric address, bare or in brackets ("[::1]"), needs no lookup and no thread.
    std::string_view text = host;
    const bool bracketed = text.size() >= 2 && text.front() == '[' && text.back() == ']';
    if (bracketed) text = text.substr(1, text.size() - 2);
    if (auto address = ip_address::parse(text)) {
        // getaddrinfo says the same for "127.0.0.1" with AF_INET6.
        if (!family_wanted(options.family, *address)) throw resolve_error(std::move(host), EAI_ADDRFAMILY);
        co_return std::vector<endpoint>{endpoint(*address, port)};
    }
    if (bracketed) throw resolve_error(std::move(host), EAI_NONAME);  // brackets hold only a literal

    // TRICKY: capturing by reference is safe: to_thread waits for the function to return even
    // when this task is cancelled.
    co_return co_await to_thread([&] { return lookup(host, port, options); });
}

}  // namespace ringio
