// Uses an installed ringio: a task that runs two timed tasks concurrently and gathers them.
// Exit status 0 when the results and the timing are right.
#include <ringio/ringio.hpp>

#include <chrono>

#include <fmt/format.h>

using namespace std::chrono_literals;

ringio::task<int> add_later(int a, int b, std::chrono::milliseconds delay) {
    co_await ringio::sleep(delay);
    co_return a + b;
}

ringio::task<int> amain() {
    auto start = ringio::clock::now();
    auto [x, y] = co_await ringio::gather(add_later(1, 2, 20ms), add_later(3, 4, 10ms));
    auto took = ringio::clock::now() - start;
    bool ok = x == 3 && y == 7 && took >= 20ms;  // never before the longer sleep is over
    fmt::print("ringio_consumer: {} + {} in {} ms: {}\n", x, y,
               std::chrono::duration_cast<std::chrono::milliseconds>(took).count(), ok ? "ok" : "WRONG");
    co_return ok ? 0 : 1;
}

int main() { return ringio::run(amain()); }
