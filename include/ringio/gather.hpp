// gather() and gather_settled(): run tasks concurrently and collect their results.
#pragma once

#include <array>
#include <exception>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "ringio/detail/join.hpp"
#include "ringio/task.hpp"
#include "ringio/task_handle.hpp"

namespace ringio {

/// void results appear as std::monostate in gather's tuple.
template <class T>
using gather_value_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

/// One task's outcome from gather_settled: a value or the exception it ended with.
template <class T>
class outcome {
public:
    outcome() = default;
    explicit outcome(std::exception_ptr e) : error_(std::move(e)) {}
    template <class U>
    explicit outcome(std::in_place_t, U&& v) : value_(std::forward<U>(v)) {}

    [[nodiscard]] bool has_value() const noexcept { return !error_; }
    /// The value, or rethrows the exception.
    decltype(auto) value() const& {
        if (error_) std::rethrow_exception(error_);
        if constexpr (!std::is_void_v<T>) return *value_;
    }
    [[nodiscard]] const std::exception_ptr& error() const noexcept { return error_; }

private:
    std::conditional_t<std::is_void_v<T>, std::monostate, std::optional<gather_value_t<T>>> value_{};
    std::exception_ptr error_;
};

namespace detail {

template <class T>
gather_value_t<T> take_result(task_handle<T>& h) {
    if constexpr (std::is_void_v<T>) {
        h.result();
        return {};
    } else {
        return handle_result(h);
    }
}

template <class T>
outcome<T> take_outcome(task_handle<T>& h) {
    if (auto e = h.exception()) return outcome<T>(e);
    if constexpr (std::is_void_v<T>)
        return outcome<T>();
    else
        return outcome<T>(std::in_place, handle_result(h));
}

template <class... T, std::size_t... I>
task<std::tuple<gather_value_t<T>...>> gather_impl(std::index_sequence<I...>, task<T>... ts) {
    std::tuple<task_handle<T>...> hs{create_task(std::move(ts))...};
    const std::array<task_base*, sizeof...(T)> bases{std::get<I>(hs).base()...};
    if (task_base* failed = co_await join_awaiter(bases, true)) rethrow_failure(failed);
    co_return std::tuple<gather_value_t<T>...>{take_result(std::get<I>(hs))...};
}

template <class... T, std::size_t... I>
task<std::tuple<outcome<T>...>> gather_settled_impl(std::index_sequence<I...>, task<T>... ts) {
    std::tuple<task_handle<T>...> hs{create_task(std::move(ts))...};
    const std::array<task_base*, sizeof...(T)> bases{std::get<I>(hs).base()...};
    co_await join_awaiter(bases, false);
    co_return std::tuple<outcome<T>...>{take_outcome(std::get<I>(hs))...};
}

/// Starts every task; returns their handles and the Tasks for join_awaiter.
template <class T>
std::pair<std::vector<task_handle<T>>, std::vector<task_base*>> spawn_all(std::vector<task<T>>& ts) {
    std::pair<std::vector<task_handle<T>>, std::vector<task_base*>> out;
    out.first.reserve(ts.size());
    out.second.reserve(ts.size());
    for (auto& t : ts) {
        out.first.push_back(create_task(std::move(t)));
        out.second.push_back(out.first.back().base());
    }
    return out;
}

}  // namespace detail

/// Runs the tasks concurrently and returns their values as a tuple (void -> std::monostate).
/// On the first failure the others are cancelled and awaited, then the failure is rethrown (a
/// deliberate difference from asyncio: in C++ the siblings may refer to the caller's frame, so
/// none may outlive the call).
/// Cancel safety: cancelling the caller cancels every task and waits for them; cancelled_error
/// follows unless all of them had already finished, in which case their values are returned.
///
///   auto [a, b] = co_await ringio::gather(fetch("a"), fetch("b"));
template <class... T>
task<std::tuple<gather_value_t<T>...>> gather(task<T>... ts) {
    return detail::gather_impl(std::index_sequence_for<T...>{}, std::move(ts)...);
}

/// gather() over a range of tasks of one type: a vector of values in the input's order.
template <class T>
task<std::conditional_t<std::is_void_v<T>, void, std::vector<gather_value_t<T>>>> gather(std::vector<task<T>> ts) {
    auto [hs, bases] = detail::spawn_all(ts);
    if (detail::task_base* failed = co_await detail::join_awaiter(bases, true)) detail::rethrow_failure(failed);
    if constexpr (!std::is_void_v<T>) {
        std::vector<gather_value_t<T>> out;
        out.reserve(hs.size());
        for (auto& h : hs) out.push_back(detail::take_result(h));
        co_return out;
    }
}

/// Like gather() but never fails early: every task runs to its end and each outcome (value or
/// exception) is returned, like asyncio.gather(return_exceptions=True).
template <class... T>
task<std::tuple<outcome<T>...>> gather_settled(task<T>... ts) {
    return detail::gather_settled_impl(std::index_sequence_for<T...>{}, std::move(ts)...);
}

/// gather_settled() over a range: a vector of outcomes in the input's order.
template <class T>
task<std::vector<outcome<T>>> gather_settled(std::vector<task<T>> ts) {
    auto [hs, bases] = detail::spawn_all(ts);
    co_await detail::join_awaiter(bases, false);
    std::vector<outcome<T>> out;
    out.reserve(hs.size());
    for (auto& h : hs) out.push_back(detail::take_outcome(h));
    co_return out;
}

}  // namespace ringio
