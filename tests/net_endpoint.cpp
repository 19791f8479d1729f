// ip_address, endpoint and resolve(): parsing, formatting, sockaddr round trips, name lookup.
// Only loopback and names that never resolve are used: the tests need no network.
#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

namespace {

using ringio::endpoint;
using ringio::ip_address;

std::string lo_index() { return std::to_string(::if_nametoindex("lo")); }

/// getsockname of a socket bound to `e` (port 0: the kernel picks one), or nullopt when this
/// machine has no such address family (IPv6 disabled).
std::optional<endpoint> bound_name(const endpoint& e, int type = SOCK_STREAM) {
    int fd = ::socket(e.family(), type | SOCK_CLOEXEC, 0);
    if (fd < 0) return std::nullopt;
    if (::bind(fd, e.data(), e.size()) != 0) {
        ::close(fd);
        return std::nullopt;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0);
    ::close(fd);
    return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
}

std::vector<endpoint> run_resolve(std::string host, std::uint16_t port, ringio::resolve_options o = {}) {
    return ringio::run(ringio::resolve(std::move(host), port, o));
}

}  // namespace

TEST_CASE("ip_address parses and formats IPv4 and IPv6") {
    auto a = ip_address::parse("127.0.0.1");
    REQUIRE(a);
    CHECK(a->is_v4());
    CHECK(a->family() == AF_INET);
    CHECK(a->is_loopback());
    CHECK(*a == ip_address::loopback_v4());
    CHECK(a->to_string() == "127.0.0.1");
    CHECK(fmt::format("{}", *a) == "127.0.0.1");

    auto b = ip_address::parse("::1");
    REQUIRE(b);
    CHECK(b->is_v6());
    CHECK(b->family() == AF_INET6);
    CHECK(*b == ip_address::loopback_v6());
    CHECK(b->is_loopback());
    CHECK(b->to_string() == "::1");

    // inet_ntop's canonical form.
    CHECK(ip_address::parse("2001:0db8:0000:0000:0000:0000:0000:0001")->to_string() == "2001:db8::1");
    CHECK(ip_address::parse("::ffff:1.2.3.4")->to_string() == "::ffff:1.2.3.4");
    CHECK(ip_address::parse("::ffff:127.0.0.1")->is_loopback());

    CHECK(ip_address::v4({10, 1, 2, 3}).to_string() == "10.1.2.3");
    CHECK(ip_address().to_string() == "0.0.0.0");
    CHECK(ip_address::any_v4().is_unspecified());
    CHECK(ip_address::any_v6().is_unspecified());
    CHECK(ip_address::any_v6().to_string() == "::");
    CHECK_FALSE(ip_address::loopback_v4().is_unspecified());
    CHECK(ip_address::parse("224.0.0.1")->is_multicast());
    CHECK(ip_address::parse("ff02::1")->is_multicast());
    CHECK_FALSE(ip_address::parse("10.0.0.1")->is_multicast());
    CHECK_FALSE(ip_address::parse("10.0.0.1")->is_loopback());
    CHECK(ip_address::parse("127.8.9.10")->is_loopback());

    // Ordering is total and IPv4 and IPv6 never compare equal.
    CHECK(ip_address::any_v4() != ip_address::any_v6());
    CHECK(*ip_address::parse("10.0.0.1") < *ip_address::parse("10.0.0.2"));
}

TEST_CASE("ip_address scope ids: interface names and numbers") {
    const unsigned lo = ::if_nametoindex("lo");
    REQUIRE(lo != 0);
    auto by_name = ip_address::parse("fe80::1%lo");
    REQUIRE(by_name);
    CHECK(by_name->scope_id() == lo);
    CHECK(by_name->to_string() == "fe80::1%lo");

    auto by_number = ip_address::parse("fe80::1%" + lo_index());
    REQUIRE(by_number);
    CHECK(*by_number == *by_name);
    CHECK(by_number->to_string() == "fe80::1%lo");  // formatted with the name when there is one

    // An index no interface has is kept, and formatted as the number.
    auto unknown = ip_address::parse("fe80::1%4000000000");
    REQUIRE(unknown);
    CHECK(unknown->scope_id() == 4000000000u);
    CHECK(unknown->to_string() == "fe80::1%4000000000");

    CHECK(ip_address::parse("fe80::1") != by_name);  // the scope takes part in equality
}

TEST_CASE("ip_address rejects everything that is not a literal") {
    for (const char* bad : {"", "localhost", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4 ", " 1.2.3.4",
                            "01.2.3.4", "1.2.3.4%lo", "::1%", "fe80::1%nosuchif0", "::g", "[::1]", ":::",
                            "1.2.3.4:80", "fe80::1%-1", "fe80::1%99999999999"}) {
        CAPTURE(bad);
        CHECK_FALSE(ip_address::parse(bad));
    }
    CHECK_FALSE(ip_address::parse(std::string_view("1.2.3.4\0", 8)));
}

TEST_CASE("endpoint parse and format round trips") {
    for (const char* text : {"127.0.0.1:8080", "0.0.0.0:0", "255.255.255.255:65535", "[::1]:8080", "[::]:0",
                             "[2001:db8::1]:443", "[::ffff:1.2.3.4]:1", "[fe80::1%lo]:80", "/run/x.sock",
                             "/", "@abstract-name", "@"}) {
        CAPTURE(text);
        auto e = endpoint::parse(text);
        REQUIRE(e);
        CHECK(e->to_string() == text);
        CHECK(fmt::format("{}", *e) == text);
        CHECK(endpoint::parse(e->to_string()) == e);
    }

    auto v4 = endpoint::parse("127.0.0.1:8080");
    CHECK(v4->family() == AF_INET);
    CHECK(v4->is_ip());
    CHECK_FALSE(v4->is_unix());
    CHECK(v4->port() == 8080);
    CHECK(v4->address() == ip_address::loopback_v4());
    CHECK(v4->size() == sizeof(sockaddr_in));
    CHECK(v4->path().empty());
    CHECK(*v4 == endpoint(ip_address::loopback_v4(), 8080));

    auto v6 = endpoint::parse("[::1]:8080");
    CHECK(v6->family() == AF_INET6);
    CHECK(v6->port() == 8080);
    CHECK(v6->size() == sizeof(sockaddr_in6));
    CHECK(*v6 == endpoint(ip_address::loopback_v6(), 8080));

    auto scoped = endpoint::parse("[fe80::1%" + lo_index() + "]:80");
    REQUIRE(scoped);
    CHECK(scoped->to_string() == "[fe80::1%lo]:80");
    CHECK(scoped->address().scope_id() == ::if_nametoindex("lo"));
    sockaddr_in6 sin6;
    std::memcpy(&sin6, scoped->data(), sizeof sin6);
    CHECK(sin6.sin6_scope_id == ::if_nametoindex("lo"));

    CHECK(endpoint().to_string() == "0.0.0.0:0");
    CHECK(endpoint::parse("1.2.3.4:080")->port() == 80);
}

TEST_CASE("endpoint parse rejects bad text") {
    for (const char* bad : {"", "1.2.3.4", "1.2.3.4:", ":80", "1.2.3.4:99999", "1.2.3.4:65536", "1.2.3.4:-1",
                            "1.2.3.4:+80", "1.2.3.4:8x", "1.2.3.4: 80", "::1:80", "::1", "[::1]", "[::1]:",
                            "[::1]80", "[::1", "::1]:80", "[1.2.3.4]:80", "localhost:80", "[fe80::1%nosuchif0]:80",
                            "relative/path", "1.2.3.4:80:80", "x"}) {
        CAPTURE(bad);
        CHECK_FALSE(endpoint::parse(bad));
    }
    CHECK_FALSE(endpoint::parse("/" + std::string(200, 'x')));  // too long for sun_path
}

TEST_CASE("Unix endpoints: filesystem paths and abstract names") {
    auto p = endpoint::unix_path("/tmp/ringio.sock");
    CHECK(p.is_unix());
    CHECK_FALSE(p.is_ip());
    CHECK_FALSE(p.is_abstract());
    CHECK(p.family() == AF_UNIX);
    CHECK(p.path() == "/tmp/ringio.sock");
    CHECK(p.port() == 0);
    CHECK(p.size() == offsetof(sockaddr_un, sun_path) + std::strlen("/tmp/ringio.sock") + 1);
    CHECK(p.to_string() == "/tmp/ringio.sock");
    CHECK(p == endpoint::unix_path("/tmp/ringio.sock"));
    CHECK(p != endpoint::unix_path("/tmp/other.sock"));
    CHECK(p != endpoint());

    auto a = endpoint::unix_path("@ringio-test");
    CHECK(a.is_abstract());
    CHECK(a.path() == "@ringio-test");
    CHECK(a.to_string() == "@ringio-test");
    CHECK(a.size() == offsetof(sockaddr_un, sun_path) + 1 + std::strlen("ringio-test"));  // no NUL
    CHECK(a.data()->sa_data[0] == '\0');
    CHECK(a == endpoint::unix_path(std::string_view("\0ringio-test", 12)));  // '\0' works like '@'
    CHECK(a != endpoint::unix_path("/ringio-test"));

    // The longest paths that fit: a filesystem path needs room for its NUL, an abstract name not.
    constexpr std::size_t room = sizeof(sockaddr_un::sun_path);
    const std::string longest = "/" + std::string(room - 2, 'p');
    CHECK(endpoint::unix_path(longest).path() == longest);
    const std::string longest_abstract = "@" + std::string(room - 1, 'a');
    CHECK(endpoint::unix_path(longest_abstract).path() == longest_abstract);

    CHECK_THROWS_AS(endpoint::unix_path(""), std::invalid_argument);
    CHECK_THROWS_AS(endpoint::unix_path(std::string_view("/a\0b", 4)), std::invalid_argument);
    CHECK_THROWS_AS(endpoint::unix_path(longest_abstract + "a"), std::invalid_argument);
    const std::string too_long = longest + "p";
    try {
        (void)endpoint::unix_path(too_long);
        FAIL("no exception");
    } catch (const std::invalid_argument& e) {
        CHECK(std::string(e.what()).find(too_long) != std::string::npos);  // names the path
    }
}

TEST_CASE("Unix endpoints bind and come back from getsockname") {
    const std::string path = fmt::format("/tmp/ringio-net-endpoint-{}.sock", ::getpid());
    ::unlink(path.c_str());
    auto fs = bound_name(endpoint::unix_path(path));
    ::unlink(path.c_str());
    REQUIRE(fs);
    CHECK(fs->path() == path);
    CHECK(*fs == endpoint::unix_path(path));
    CHECK(fs->size() == endpoint::unix_path(path).size());

    const std::string name = fmt::format("@ringio-net-endpoint-{}", ::getpid());
    auto abs = bound_name(endpoint::unix_path(name));
    REQUIRE(abs);
    CHECK(abs->is_abstract());
    CHECK(abs->to_string() == name);
    CHECK(*abs == endpoint::unix_path(name));

    // A socket that was never bound has an unnamed address: just the family.
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0);
    ::close(fd);
    CHECK(len == sizeof(sa_family_t));
    auto unnamed = endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
    CHECK(unnamed.is_unix());
    CHECK(unnamed.path().empty());
    CHECK_FALSE(unnamed.is_abstract());
    CHECK(unnamed.to_string() == "<unnamed>");
    CHECK(unnamed.size() == sizeof(sa_family_t));
}

TEST_CASE("from_sockaddr of a bound IP socket reports the kernel's port") {
    auto v4 = bound_name(endpoint(ip_address::loopback_v4(), 0));
    REQUIRE(v4);
    CHECK(v4->address() == ip_address::loopback_v4());
    CHECK(v4->port() != 0);
    CHECK(v4->to_string() == fmt::format("127.0.0.1:{}", v4->port()));
    CHECK(fmt::format("{}", *v4) == v4->to_string());
    CHECK(*v4 == *endpoint::parse(v4->to_string()));

    auto v6 = bound_name(endpoint(ip_address::loopback_v6(), 0), SOCK_DGRAM);
    if (!v6) {
        MESSAGE("no IPv6 loopback here; skipping the IPv6 half");
        return;
    }
    CHECK(v6->family() == AF_INET6);
    CHECK(v6->port() != 0);
    CHECK(v6->to_string() == fmt::format("[::1]:{}", v6->port()));
    CHECK(*v6 == *endpoint::parse(v6->to_string()));
}

TEST_CASE("from_sockaddr and resize(): the kernel writes into data()") {
    endpoint e;
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(1234);
    sin6.sin6_addr = in6addr_loopback;
    std::memcpy(e.data(), &sin6, sizeof sin6);  // as accept() would
    e.resize(sizeof sin6);
    CHECK(e.to_string() == "[::1]:1234");
    CHECK(endpoint::capacity() >= sizeof(sockaddr_in6));

    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    CHECK_THROWS_AS(endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&sin), sizeof sin - 1),
                    std::invalid_argument);
    CHECK_THROWS_AS(endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&sin), 1), std::invalid_argument);
    sockaddr_storage ss{};
    ss.ss_family = AF_PACKET;
    CHECK_THROWS_AS(endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), sizeof ss),
                    std::invalid_argument);
    ss.ss_family = AF_UNIX;
    CHECK_THROWS_AS(endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), sizeof(sockaddr_un) + 1),
                    std::invalid_argument);
}

TEST_CASE("resolve: numeric addresses need no lookup") {
    const auto threads_before = ringio::detail::pool_threads();
    auto v4 = run_resolve("127.0.0.1", 80);
    REQUIRE(v4.size() == 1);
    CHECK(v4[0] == *endpoint::parse("127.0.0.1:80"));

    auto v6 = run_resolve("::1", 443);
    REQUIRE(v6.size() == 1);
    CHECK(v6[0].to_string() == "[::1]:443");

    auto bracketed = run_resolve("[::1]", 443);
    CHECK(bracketed == v6);

    auto scoped = run_resolve("fe80::1%lo", 1);
    REQUIRE(scoped.size() == 1);
    CHECK(scoped[0].to_string() == "[fe80::1%lo]:1");

    // A literal of the other family than asked for: what getaddrinfo reports too.
    CHECK_THROWS_AS(run_resolve("127.0.0.1", 80, {.family = AF_INET6}), ringio::resolve_error);
    CHECK_THROWS_AS(run_resolve("[nosuchhost]", 80), ringio::resolve_error);
    CHECK_THROWS_AS(run_resolve("127.0.0.1", 80, {.family = AF_UNIX}), ringio::resolve_error);

    // No thread was needed for any of these (telling only when no lookup ran before).
    if (threads_before == 0) CHECK(ringio::detail::pool_threads() == 0);
}

TEST_CASE("resolve: an empty host") {
    auto passive = run_resolve("", 8080, {.passive = true});
    REQUIRE(passive.size() == 2);
    CHECK(passive[0].to_string() == "0.0.0.0:8080");
    CHECK(passive[1].to_string() == "[::]:8080");

    auto active = run_resolve("", 8080);
    REQUIRE(active.size() == 2);
    CHECK(active[0].to_string() == "127.0.0.1:8080");
    CHECK(active[1].to_string() == "[::1]:8080");

    auto only_v6 = run_resolve("", 0, {.family = AF_INET6, .passive = true});
    REQUIRE(only_v6.size() == 1);
    CHECK(only_v6[0].to_string() == "[::]:0");

    auto only_v4 = run_resolve("", 0, {.family = AF_INET});
    REQUIRE(only_v4.size() == 1);
    CHECK(only_v4[0].to_string() == "127.0.0.1:0");
}

TEST_CASE("resolve: localhost through getaddrinfo") {
    auto all = run_resolve("localhost", 80);
    REQUIRE_FALSE(all.empty());
    for (const auto& e : all) {
        CAPTURE(e.to_string());
        CHECK(e.is_ip());
        CHECK(e.address().is_loopback());
        CHECK(e.port() == 80);
    }
    // No duplicates (getaddrinfo's list may repeat an address, e.g. from /etc/hosts).
    for (std::size_t i = 0; i < all.size(); ++i)
        for (std::size_t j = i + 1; j < all.size(); ++j) CHECK(all[i] != all[j]);

    auto v4 = run_resolve("localhost", 81, {.family = AF_INET});
    REQUIRE_FALSE(v4.empty());
    for (const auto& e : v4) {
        CHECK(e.family() == AF_INET);
        CHECK(e.port() == 81);
    }

    auto dgram = run_resolve("localhost", 53, {.family = AF_INET, .socktype = SOCK_DGRAM});
    CHECK(dgram == std::vector<endpoint>{endpoint(ip_address::loopback_v4(), 53)});
}

TEST_CASE("resolve: a name that does not exist") {
    try {
        (void)run_resolve("nosuchhost.invalid", 80);
        FAIL("resolved nosuchhost.invalid");
    } catch (const ringio::resolve_error& e) {
        CAPTURE(e.what());
        CHECK(e.host() == "nosuchhost.invalid");
        CHECK(e.code() != 0);
        CHECK(std::string(e.what()).find("'nosuchhost.invalid'") != std::string::npos);
        CHECK(std::string(e.what()).rfind("ringio: cannot resolve", 0) == 0);
    }
}

TEST_CASE("resolve_error messages") {
    ringio::resolve_error e("example.test", EAI_NONAME);
    CHECK(std::string(e.what()) == std::string("ringio: cannot resolve 'example.test': ") + ::gai_strerror(EAI_NONAME));
    CHECK(e.code() == EAI_NONAME);

    errno = ECONNREFUSED;
    ringio::resolve_error sys("example.test", EAI_SYSTEM);
    CHECK(std::string(sys.what()).find(std::strerror(ECONNREFUSED)) != std::string::npos);
}
