// doctest main shared by the test binaries: skips the whole binary (exit 77, CTest's skip code)
// when this machine cannot set up io_uring, instead of failing every test.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "ringio/event_loop.hpp"

int main(int argc, char** argv) {
    try {
        ringio::event_loop probe;
    } catch (const std::system_error& e) {
        std::fprintf(stderr, "skipping: %s\n", e.what());
        return 77;
    }
    doctest::Context ctx(argc, argv);
    return ctx.run();
}
