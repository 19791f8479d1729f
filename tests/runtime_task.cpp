#include <doctest/doctest.h>

#include <ringio/ringio.hpp>

#include <stdexcept>
#include <string>

using namespace std::chrono_literals;

namespace {
ringio::task<int> answer() { co_return 42; }
ringio::task<int> add(int a) { co_return a + co_await answer(); }
ringio::task<> fail() {
    co_await ringio::yield_now();
    throw std::runtime_error("boom");
}
}  // namespace

TEST_CASE("task values and exceptions through nested awaits") {
    CHECK(ringio::run(add(1)) == 43);
    CHECK_THROWS_WITH_AS(ringio::run(fail()), "boom", std::runtime_error);
}
