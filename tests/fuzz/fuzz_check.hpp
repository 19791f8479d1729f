// What the fuzz targets share: a failed invariant prints what went wrong and traps, so that
// libFuzzer records the input as a crash (and a committed reproducer fails its ctest test).
#pragma once

#include <cstdio>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace fuzz {

/// Prints "INVARIANT VIOLATED: <message>" on stderr and traps.
template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
    fmt::print(stderr, "INVARIANT VIOLATED: {}\n", fmt::format(format, std::forward<Args>(args)...));
    std::fflush(stderr);
    __builtin_trap();
}

/// Text for messages: printable ASCII as is, everything else escaped, long texts cut.
inline std::string show(std::string_view s, std::size_t max = 200) {
    std::string out = "\"";
    for (std::size_t i = 0; i < s.size() && i < max; ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == '\\' || c == '"')
            out += fmt::format("\\{}", static_cast<char>(c));
        else if (c >= 0x20 && c < 0x7f)
            out += static_cast<char>(c);
        else
            out += fmt::format("\\x{:02x}", c);
    }
    if (s.size() > max) out += fmt::format("...({} bytes)", s.size());
    return out + "\"";
}

}  // namespace fuzz
