// task<T>: a lazy, move-only coroutine. Awaiting it runs it to completion inside the awaiting
// Task (symmetric transfer, so a million nested or sequential awaits use no stack); its value or
// exception goes to the awaiter. To run one concurrently, hand it to ringio::create_task().
//
//   ringio::task<int> answer() { co_return 42; }
//   ringio::task<> main_task() { int v = co_await answer(); }
#pragma once

#include <cassert>
#include <coroutine>
#include <exception>
#include <memory>
#include <type_traits>
#include <utility>

#include "ringio/detail/task_base.hpp"

namespace ringio {

template <class T = void>
class task;

namespace detail {

// TRICKY: symmetric transfer keeps a million sequential or nested awaits off the native stack
// only if the compiler turns the transfer into a tail call. Clang always does; GCC only when
// optimizing without ASan or TSan (their instrumentation defeats it: a TSan build overflowed
// the stack after 70,000 awaits). Elsewhere the transfer goes through the loop instead: the handle is parked in
// the loop's inline slot and resumed as soon as the current resume() returns (same Task, same
// pass, no growth of the stack).
#if defined(__clang__) || (defined(__OPTIMIZE__) && !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__))
inline constexpr bool tail_call_transfer = true;
#else
inline constexpr bool tail_call_transfer = false;
#endif

/// Parks `h` in the running loop's inline slot (see tail_call_transfer).
void defer_resume(std::coroutine_handle<> h) noexcept;

inline std::coroutine_handle<> transfer_to(std::coroutine_handle<> h) noexcept {
    if constexpr (tail_call_transfer) {
        return h;
    } else {
        defer_resume(h);
        return std::noop_coroutine();
    }
}

struct final_awaiter {
    bool await_ready() const noexcept { return false; }
    template <class Promise>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<Promise> h) noexcept {
        promise_base& p = h.promise();
        if (p.continuation) return transfer_to(p.continuation);
        if (p.root) p.root->finish();              // may destroy this frame; touch nothing after
        return std::noop_coroutine();
    }
    void await_resume() const noexcept {}
};

template <class T>
struct promise : promise_base {
    bool has_value = false;  // first: it fits in promise_base's tail padding (8 bytes less per frame)
    union {
        T value;
    };

    promise() noexcept {}
    ~promise() {
        if (has_value) value.~T();
    }

    task<T> get_return_object() noexcept;
    final_awaiter final_suspend() noexcept { return {}; }

    template <class U = T>
        requires std::is_convertible_v<U&&, T>
    void return_value(U&& v) noexcept(std::is_nothrow_constructible_v<T, U&&>) {
        ::new (static_cast<void*>(std::addressof(value))) T(std::forward<U>(v));
        has_value = true;
    }

    T& get() & {
        if (exception) std::rethrow_exception(exception);
        return value;
    }
    T&& get() && {
        if (exception) std::rethrow_exception(exception);
        return std::move(value);
    }
};

template <class T>
struct promise<T&> : promise_base {
    T* value = nullptr;

    task<T&> get_return_object() noexcept;
    final_awaiter final_suspend() noexcept { return {}; }
    void return_value(T& v) noexcept { value = std::addressof(v); }

    T& get() {
        if (exception) std::rethrow_exception(exception);
        return *value;
    }
};

template <>
struct promise<void> : promise_base {
    task<void> get_return_object() noexcept;
    final_awaiter final_suspend() noexcept { return {}; }
    void return_void() noexcept {}

    void get() const {
        if (exception) std::rethrow_exception(exception);
    }
};

}  // namespace detail

template <class T>
class [[nodiscard]] task {
public:
    using promise_type = detail::promise<T>;
    using handle_type = std::coroutine_handle<promise_type>;
    using value_type = T;

    task() noexcept = default;
    explicit task(handle_type h) noexcept : h_(h) {}
    task(task&& other) noexcept : h_(std::exchange(other.h_, {})) {}
    task& operator=(task&& other) noexcept {
        if (this != &other) {
            if (h_) h_.destroy();
            h_ = std::exchange(other.h_, {});
        }
        return *this;
    }
    task(const task&) = delete;
    task& operator=(const task&) = delete;
    ~task() {
        if (h_) h_.destroy();
    }

    /// False for a moved-from or default-constructed task.
    [[nodiscard]] bool valid() const noexcept { return static_cast<bool>(h_); }

    auto operator co_await() & noexcept { return awaiter<false>{h_}; }
    auto operator co_await() && noexcept { return awaiter<true>{h_}; }

    /// Gives up ownership of the coroutine (used by create_task).
    handle_type release() noexcept { return std::exchange(h_, {}); }

private:
    template <bool Rvalue>
    struct awaiter {
        handle_type h;
        bool await_ready() const noexcept { return !h || h.done(); }
        std::coroutine_handle<> await_suspend(std::coroutine_handle<> caller) noexcept {
            h.promise().continuation = caller;
            return detail::transfer_to(h);
        }
        decltype(auto) await_resume() {
            assert(h && "co_await on an empty ringio::task");
            if constexpr (Rvalue && !std::is_void_v<T> && !std::is_reference_v<T>)
                return std::move(h.promise()).get();
            else
                return h.promise().get();
        }
    };

    handle_type h_;
};

namespace detail {
template <class T>
task<T> promise<T>::get_return_object() noexcept {
    return task<T>(std::coroutine_handle<promise<T>>::from_promise(*this));
}
template <class T>
task<T&> promise<T&>::get_return_object() noexcept {
    return task<T&>(std::coroutine_handle<promise<T&>>::from_promise(*this));
}
inline task<void> promise<void>::get_return_object() noexcept {
    return task<void>(std::coroutine_handle<promise<void>>::from_promise(*this));
}
}  // namespace detail

}  // namespace ringio
