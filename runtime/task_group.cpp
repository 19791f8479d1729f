#include "ringio/task_group.hpp"

#include <cstdio>
#include <cstdlib>

namespace ringio {

task_group::~task_group() {
    if (running_ != 0) {
        std::fprintf(stderr, "ringio: task_group destroyed with %zu unfinished children; await wait() first\n",
                     running_);
        std::abort();
    }
    for (auto& c : children_) c->task->release();
}

void task_group::adopt(detail::task_base* t) {
    auto c = std::make_unique<child>();
    c->group = this;
    c->task = t;
    c->notify = [](detail::done_waiter* w, detail::task_base*) noexcept {
        auto* ch = static_cast<child*>(w);
        ch->group->child_done(ch);
    };
    t->add_ref();
    t->add_done_waiter(c.get());
    children_.push_back(std::move(c));
    ++running_;
    loop_ = event_loop::current();
}

void task_group::cancel() noexcept {
    aborting_ = true;
    for (auto& c : children_) c->task->cancel();
}

void task_group::child_done(child* c) noexcept {
    --running_;
    detail::task_base* t = c->task;
    t->mark_retrieved();  // the group reports it
    using status = detail::task_base::status;
    // Children the group cancelled are not failures; one cancelled from outside is.
    bool failure = t->state() == status::failed || (t->state() == status::cancelled && !aborting_);
    if (failure) {
        errors_.push_back(t->promise().exception);
        if (!aborting_) cancel();
    }
    if (running_ == 0 && waiter_) loop_->wake(waiter_task_, std::exchange(waiter_, {}));
}

struct task_group::wait_awaiter : detail::suspend_point {
    task_group* g;
    bool cancelled = false;

    bool await_ready() const noexcept { return g->running_ == 0; }
    bool await_suspend(std::coroutine_handle<> h) {
        event_loop& loop = event_loop::running();
        g->loop_ = &loop;
        g->waiter_task_ = loop.current_task();
        g->waiter_ = h;
        on_cancel = [](detail::suspend_point* sp) noexcept {
            auto* a = static_cast<wait_awaiter*>(sp);
            a->cancelled = true;
            a->g->cancel();  // and keep waiting: no child may outlive the group's wait
        };
        if (g->waiter_task_->cancel_requested()) {
            cancelled = true;
            g->cancel();
        } else {
            g->waiter_task_->suspended_at = this;
        }
        return true;
    }
    void await_resume() const noexcept {}
};

task<> task_group::wait() {
    wait_awaiter a{{}, this};
    while (running_ > 0) {
        co_await a;
    }
    if (!errors_.empty()) throw task_group_error(std::move(errors_));
    if (a.cancelled) {
        event_loop::running().current_task()->take_cancel();
        throw cancelled_error();
    }
}

}  // namespace ringio
