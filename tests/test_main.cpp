// doctest main shared by the test binaries: skips the whole binary (exit 77, CTest's skip code)
// when this machine cannot set up the loop's backend (RINGIO_BACKEND=io_uring where io_uring is
// unavailable), instead of failing every test.
//
// Also a launcher for tests that run a program without io_uring:
//   TEST_BINARY --exec-without-io-uring [--backend B] PROGRAM ARGS...
// installs a seccomp filter that blocks io_uring_setup (as Docker's default profile does), sets
// RINGIO_BACKEND to B (unsets it without --backend: the program chooses by itself), and execs
// PROGRAM. Exit status 121: no filter could be installed; 122: PROGRAM could not be run.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "ringio/event_loop.hpp"
#include "seccomp_block.hpp"

int main(int argc, char** argv) {
    if (argc >= 3 && std::strcmp(argv[1], "--exec-without-io-uring") == 0) {
        int first = 2;
        if (argc >= 5 && std::strcmp(argv[2], "--backend") == 0) {
            ::setenv("RINGIO_BACKEND", argv[3], 1);
            first = 4;
        } else {
            ::unsetenv("RINGIO_BACKEND");
        }
        if (!test::block_io_uring_setup()) return 121;
        ::execv(argv[first], argv + first);
        return 122;
    }
    try {
        ringio::event_loop probe;
    } catch (const std::system_error& e) {
        std::fprintf(stderr, "skipping: %s\n", e.what());
        return 77;
    }
    doctest::Context ctx(argc, argv);
    return ctx.run();
}
