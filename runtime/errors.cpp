#include "ringio/errors.hpp"

#include <fmt/format.h>

namespace ringio {

std::string describe(const std::exception_ptr& e) {
    if (!e) return "no exception";
    try {
        std::rethrow_exception(e);
    } catch (const std::system_error& x) {
        return fmt::format("system_error: {}", x.what());
    } catch (const std::exception& x) {
        return x.what();
    } catch (...) {
        return "unknown exception";
    }
}

namespace {
std::string join(const std::vector<std::exception_ptr>& errors) {
    std::string out = fmt::format("ringio: {} task(s) failed", errors.size());
    for (const auto& e : errors) {
        out += "; ";
        out += describe(e);
    }
    return out;
}
}  // namespace

task_group_error::task_group_error(std::vector<std::exception_ptr> errors)
    : std::runtime_error(join(errors)), errors_(std::move(errors)) {}

std::system_error make_system_error(int err, const std::string& what) {
    return std::system_error(err, std::system_category(), what);
}

}  // namespace ringio
