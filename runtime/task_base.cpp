#include "ringio/detail/task_base.hpp"

#include "ringio/detail/suspension.hpp"

#include <new>

#include "ringio/errors.hpp"
#include "ringio/event_loop.hpp"
#include "ringio/log.hpp"

namespace ringio::detail {

void promise_base::unhandled_exception() noexcept {
    exception = std::current_exception();
    try {
        throw;
    } catch (const cancelled_error&) {
        cancelled = true;
    } catch (...) {
    }
}

task_base* task_base::make(std::coroutine_handle<> body, promise_base* p) {
    void* mem;
    try {
        mem = frame_alloc(sizeof(task_base));
    } catch (...) {
        body.destroy();
        throw;
    }
    auto* t = ::new (mem) task_base(body, p);
    p->root = t;
    return t;
}

task_base::~task_base() {
    if (status_ == status::failed && !retrieved_) {
        try {
            log(log_level::error, "task exception was never retrieved: {}", describe(promise_->exception));
        } catch (...) {  // no memory to describe it: release() is noexcept
        }
    }
    if (body_) body_.destroy();
}

void task_base::release() noexcept {
    if (--refs_ != 0) return;
    this->~task_base();
    frame_free(this, sizeof(task_base));
}

bool task_base::cancel() noexcept {
    if (done() || cancel_requested_) return false;
    cancel_requested_ = true;
    if (suspension* sp = suspended_at) sp->cancel();
    return true;
}

void task_base::finish() noexcept {
    promise_base& p = *promise_;
    status_ = p.cancelled ? status::cancelled : p.exception ? status::failed : status::done;
    cancel_requested_ = false;
    intrusive_list<task_base>::erase(this);
    loop_core::current()->task_finished();
    while (done_waiter* w = first_waiter_) {
        remove_done_waiter(w);
        w->notify(w, this);
    }
    release();  // the loop's reference
}

void task_base::finish_unstarted() noexcept {
    promise_->exception = std::make_exception_ptr(cancelled_error{});
    promise_->cancelled = true;
    finish();
}

}  // namespace ringio::detail

// Every connection's Task keeps one of these for its whole life (bench/README.md, idle memory).
static_assert(sizeof(void*) != 8 || sizeof(ringio::detail::task_base) <= 56, "task_base grew past 56 bytes (a 64-byte malloc chunk)");
