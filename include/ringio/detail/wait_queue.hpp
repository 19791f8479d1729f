// FIFO wait list shared by the sync primitives. A waiter is either granted (woken by the
// primitive, owning whatever it waited for) or cancelled (removed by cancel()), never both:
// so a cancelled waiter can never swallow a wake-up meant for another.
#pragma once

#include <coroutine>

#include "ringio/detail/intrusive_list.hpp"
#include "ringio/errors.hpp"
#include "ringio/event_loop.hpp"

namespace ringio::detail {

class wait_queue;

struct waiter : list_node, suspend_point, parking {
    bool granted = false;
    bool cancelled = false;

    /// Parks the current task on q. Returns false (no suspension, cancelled = true) when a
    /// cancellation is already pending, so the awaiter raises it at once.
    bool park(intrusive_list<waiter>& q, std::coroutine_handle<> h, bool cancellable = true) {
        if (!parking::park(h, cancellable)) {
            cancelled = true;
            return false;
        }
        q.push_back(this);
        if (cancellable) {
            on_cancel = [](suspend_point* sp) noexcept {
                auto* w = static_cast<waiter*>(sp);
                intrusive_list<waiter>::erase(w);
                w->cancelled = true;
                w->unpark();
            };
            task->suspended_at = this;
        }
        return true;
    }

    /// Wakes this waiter as the owner of what it waited for. It must still be queued.
    void grant() noexcept {
        intrusive_list<waiter>::erase(this);
        granted = true;
        unpark();
    }

    /// In await_resume: raises the cancellation that removed this waiter.
    void raise_if_cancelled() {
        if (cancelled) {
            cancelled = false;
            task->take_cancel();
            throw cancelled_error();
        }
    }
};

}  // namespace ringio::detail
