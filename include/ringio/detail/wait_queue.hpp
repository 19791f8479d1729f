// FIFO wait list shared by the sync primitives. A waiter is either granted (woken by the
// primitive, owning whatever it waited for) or cancelled (removed by cancel()), never both:
// so a cancelled waiter can never swallow a wake-up meant for another.
#pragma once

#include <coroutine>

#include "ringio/detail/intrusive_list.hpp"
#include "ringio/detail/suspension.hpp"

namespace ringio::detail {

struct waiter : list_node, suspension {
    /// Parks the current task on q. Returns false (no suspension) when a cancellation is
    /// already pending, so the awaiter raises it at once (cancellable waits only).
    bool park(intrusive_list<waiter>& q, std::coroutine_handle<> h, bool cancellable = true) {
        if (!begin(h, cancellable ? cancel_kind::interrupt : cancel_kind::none)) return false;
        q.push_back(this);
        if (cancellable)
            arm([](suspension* sp) noexcept {
                auto* w = static_cast<waiter*>(sp);
                intrusive_list<waiter>::erase(w);
                w->wake(true);
            });
        return true;
    }

    /// Wakes this waiter as the owner of what it waited for. It must still be queued.
    void grant() noexcept {
        intrusive_list<waiter>::erase(this);
        wake();
    }
};

}  // namespace ringio::detail
