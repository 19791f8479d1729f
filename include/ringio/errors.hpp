// Exception types thrown by ringio, named after asyncio's. OS errors are std::system_error with
// the errno and a message naming what was being done (see make_system_error).
#pragma once

#include <exception>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace ringio {

/// Thrown at a task's suspension point when the task is cancelled (asyncio.CancelledError).
/// Catch it only to clean up, then rethrow; swallowing it makes the task look finished.
class cancelled_error : public std::exception {
public:
    [[nodiscard]] const char* what() const noexcept override { return "ringio: task cancelled"; }
};

/// Thrown by wait_for() and timeout() when the deadline passes (asyncio.TimeoutError).
class timeout_error : public std::runtime_error {
public:
    timeout_error() : std::runtime_error("ringio: timed out") {}
    using std::runtime_error::runtime_error;
};

/// Thrown when an object is used in a state that does not allow it (asyncio.InvalidStateError):
/// two tasks reading one stream at once, adding a child to a task_group that is shutting down,
/// asking a task_handle for a result it does not have yet.
class invalid_state_error : public std::logic_error {
public:
    using std::logic_error::logic_error;
};

/// Thrown by task_group::wait() when children failed; holds every child's exception.
class task_group_error : public std::runtime_error {
public:
    explicit task_group_error(std::vector<std::exception_ptr> errors);
    [[nodiscard]] const std::vector<std::exception_ptr>& exceptions() const noexcept { return errors_; }

private:
    std::vector<std::exception_ptr> errors_;
};

/// Describes an exception_ptr in one line ("type-ish: what()"), for logs and error lists.
std::string describe(const std::exception_ptr& e);

/// std::system_error for errno value `err` whose message says what failed, e.g.
/// make_system_error(ECONNREFUSED, "connect to 127.0.0.1:9") -> "connect to 127.0.0.1:9: Connection refused".
std::system_error make_system_error(int err, const std::string& what);

}  // namespace ringio
