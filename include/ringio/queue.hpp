// queue<T>: a FIFO between tasks (asyncio.Queue).
#pragma once

#include <cstddef>
#include <algorithm>
#include <deque>
#include <optional>
#include <stdexcept>
#include <utility>

#include "ringio/detail/wait_queue.hpp"
#include "ringio/event.hpp"
#include "ringio/task.hpp"

namespace ringio {

/// put_nowait() on a full queue (asyncio.QueueFull).
class queue_full : public std::runtime_error {
public:
    queue_full() : std::runtime_error("ringio: queue is full") {}
};
/// get_nowait() on an empty queue (asyncio.QueueEmpty).
class queue_empty : public std::runtime_error {
public:
    queue_empty() : std::runtime_error("ringio: queue is empty") {}
};
/// put on a queue that was shut down, or get on one that is shut down and empty
/// (asyncio.QueueShutDown).
class queue_shutdown : public std::runtime_error {
public:
    queue_shutdown() : std::runtime_error("ringio: queue is shut down") {}
};

/// A FIFO queue, bounded when maxsize > 0: put() waits while it is full, get() while it is
/// empty. Items are handed straight from a putter to a waiting getter, so waiters are served
/// strictly in arrival order and a cancelled waiter never takes an item meant for another.
///
///   ringio::queue<int> q(16);
///   co_await q.put(1);
///   int v = co_await q.get();
template <class T>
class queue {
public:
    explicit queue(std::size_t maxsize = 0) : maxsize_(maxsize) {}
    queue(const queue&) = delete;
    queue& operator=(const queue&) = delete;

    [[nodiscard]] std::size_t size() const noexcept { return items_.size(); }
    [[nodiscard]] bool empty() const noexcept { return items_.empty(); }
    [[nodiscard]] std::size_t maxsize() const noexcept { return maxsize_; }
    [[nodiscard]] bool full() const noexcept { return maxsize_ > 0 && items_.size() >= maxsize_; }
    [[nodiscard]] bool is_shutdown() const noexcept { return shutdown_; }

    /// Adds an item, waiting while the queue is full. Throws queue_shutdown after shutdown().
    /// Cancel safety: safe. Cancelled while waiting: cancelled_error and the item is not added;
    /// cancelled after it was added: returns, the cancellation is raised at the next suspension.
    [[nodiscard]] auto put(T item) { return put_awaiter{*this, std::move(item)}; }

    /// Adds an item or throws queue_full / queue_shutdown.
    void put_nowait(T item) {
        if (shutdown_) throw queue_shutdown();
        if (!try_put(item)) throw queue_full();
    }

    /// Removes and returns the oldest item, waiting while the queue is empty. Throws
    /// queue_shutdown when the queue is shut down and empty.
    /// Cancel safety: safe. Cancelled while waiting: cancelled_error and no item is taken;
    /// cancelled after an item was handed to it: the item is returned and the cancellation is
    /// raised at the task's next suspension point.
    [[nodiscard]] auto get() { return get_awaiter{*this}; }

    /// Removes the oldest item or throws queue_empty / queue_shutdown.
    T get_nowait() {
        if (items_.empty()) {
            if (shutdown_) throw queue_shutdown();
            throw queue_empty();
        }
        return take();
    }

    /// Marks one item taken with get() as processed (for join()). Throws invalid_state_error
    /// when called more times than items were put.
    void task_done() {
        if (unfinished_ == 0) throw invalid_state_error("ringio: queue::task_done called too many times");
        if (--unfinished_ == 0) finished_.set();
    }

    /// Waits until every item put has been marked with task_done().
    task<> join() {
        if (unfinished_ > 0) co_await finished_.wait();
    }

    /// Stops the queue: put() throws queue_shutdown from now on and waiting putters are woken
    /// with it; get() drains what is left, then throws queue_shutdown. With immediate = true the
    /// remaining items are dropped (and counted as done for join()) and waiting getters get
    /// queue_shutdown at once.
    void shutdown(bool immediate = false) {
        shutdown_ = true;
        if (immediate) {
            unfinished_ -= std::min(unfinished_, items_.size());
            items_.clear();
            if (unfinished_ == 0) finished_.set();
        }
        while (detail::waiter* w = putters_.front()) w->grant();  // item not added: granted w/o slot
        if (items_.empty())
            while (detail::waiter* w = getters_.front()) w->grant();
    }

private:
    struct put_awaiter : detail::waiter {
        queue& q;
        T item;
        bool added = false;
        put_awaiter(queue& qu, T it) : q(qu), item(std::move(it)) {}
        bool await_ready() {
            if (q.shutdown_) return true;
            return added = q.try_put(item);
        }
        bool await_suspend(std::coroutine_handle<> caller) { return park(q.putters_, caller); }
        void await_resume() {
            resume();
            if (!added) throw queue_shutdown();
        }
    };

    struct get_awaiter : detail::waiter {
        queue& q;
        std::optional<T> slot;
        explicit get_awaiter(queue& qu) : q(qu) {}
        bool await_ready() {
            if (!q.items_.empty()) slot.emplace(q.take());
            return slot.has_value() || q.shutdown_;
        }
        bool await_suspend(std::coroutine_handle<> caller) { return park(q.getters_, caller); }
        T await_resume() {
            resume();
            if (!slot) throw queue_shutdown();
            return std::move(*slot);
        }
    };

    // Puts `item` (moved from on success): to the first waiting getter, else into the buffer
    // when there is room.
    bool try_put(T& item) {
        if (auto* w = static_cast<get_awaiter*>(getters_.front())) {
            w->slot.emplace(std::move(item));
            ++unfinished_;
            finished_.clear();
            w->grant();
            return true;
        }
        if (full()) return false;
        items_.push_back(std::move(item));
        ++unfinished_;
        finished_.clear();
        return true;
    }

    // Pops the oldest item; a waiting putter's item takes the freed place.
    T take() {
        T v = std::move(items_.front());
        items_.pop_front();
        if (auto* w = static_cast<put_awaiter*>(putters_.front())) {
            items_.push_back(std::move(w->item));
            ++unfinished_;
            w->added = true;
            w->grant();
        }
        return v;
    }

    std::deque<T> items_;
    std::size_t maxsize_;
    std::size_t unfinished_ = 0;
    event finished_;
    detail::intrusive_list<detail::waiter> getters_;
    detail::intrusive_list<detail::waiter> putters_;
    bool shutdown_ = false;
};

}  // namespace ringio
