#include "ringio/task_group.hpp"

#include "ringio/detail/suspension.hpp"

#include <cstdio>
#include <cstdlib>

#include "ringio/log.hpp"

namespace ringio {

namespace {
// Requests the running Task's cancellation again (it is running, so this only sets the bit).
void loop_core_cancel_self() noexcept {
    if (detail::loop_core* loop = detail::loop_core::current())
        if (detail::task_base* t = loop->current_task()) t->cancel();
}

template <class Child, class Link>
Child* child_of(Link* l) noexcept {
    return static_cast<Child*>(l);
}
}  // namespace

task_group::~task_group() {
    if (waiter_) {
        // Another Task is suspended in wait() on this group, whose memory goes now: that Task
        // would resume into freed memory (wait() is a member). A lifetime bug in the caller.
        std::fprintf(stderr, "ringio: task_group destroyed while a task is waiting in its wait()\n");
        std::abort();
    }
    // Children still running: cancel them and let them end on their own, without the group
    // (nothing of it may be touched after this). Never abort: this happens in ordinary
    // cancellation (the owner cancelled outside wait(), run() shutting down).
    running_list_.for_each([](group_link* l) {
        child* c = child_of<child>(l);
        c->task->remove_done_waiter(c);
        c->task->cancel();
        c->task->release();
        delete c;
    });
    // Failures nobody will report (wait() was not reached): logged, as a Task's would be.
    failed_.for_each([](group_link* l) {
        child* c = child_of<child>(l);
        try {
            log(log_level::error, "task_group destroyed before wait(): a child's exception was never retrieved: {}",
                describe(c->error));
        } catch (...) {  // (no memory to describe it)
        }
        delete c;
    });
}

void task_group::adopt(child* c, detail::task_base* t) noexcept {
    c->group = this;
    c->task = t;
    c->notify = [](detail::done_waiter* w, detail::task_base* task) noexcept {
        auto* ch = static_cast<child*>(w);
        ch->group->child_done(ch, task);
    };
    t->add_ref();
    t->add_done_waiter(c);
    running_list_.push_back(c);
    ++running_;
}

void task_group::cancel() noexcept {
    aborting_ = true;
    running_list_.for_each([](group_link* l) { child_of<child>(l)->task->cancel(); });
}

// A join point: the waiter wakes when the last child has finished; its own cancellation
// cancels the children (and still waits for them).
struct task_group::wait_awaiter : detail::suspension {
    task_group* g;
    explicit wait_awaiter(task_group* grp) noexcept : g(grp) {}

    bool await_ready() const noexcept { return g->running_ == 0; }
    bool await_suspend(std::coroutine_handle<> h) {
        if (g->waiter_) throw invalid_state_error("ringio: another task is already waiting on this task_group");
        begin(h, detail::cancel_kind::join);
        g->waiter_ = this;
        arm([](detail::suspension* sp) noexcept { static_cast<wait_awaiter*>(sp)->g->cancel(); });
        return true;
    }
    void await_resume() { resume(); }
};

void task_group::child_done(child* c, detail::task_base* t) noexcept {
    // Allocates nothing (it runs as the child finishes, where nothing may fail): a failed
    // child's record keeps its error, the others go.
    detail::intrusive_list<group_link>::erase(c);
    --running_;
    t->mark_retrieved();  // the group reports it
    using status = detail::task_base::status;
    // Children the group cancelled are not failures; one cancelled from outside is.
    bool failure = t->state() == status::failed || (t->state() == status::cancelled && !aborting_);
    if (failure) c->error = t->promise().exception;  // (copying an exception_ptr allocates nothing)
    c->task = nullptr;
    t->release();  // the child's frame goes now (unless a handle still refers to it)
    if (failure) {
        failed_.push_back(c);
        if (!aborting_) cancel();
    } else {
        delete c;
    }
    if (running_ == 0 && waiter_) {
        wait_awaiter* w = std::exchange(waiter_, nullptr);
        w->wake(w->cancelling());
    }
}

task<> task_group::wait() {
    bool cancelled = false;
    while (running_ > 0 && !cancelled) {
        try {
            co_await wait_awaiter(this);
        } catch (const cancelled_error&) {
            cancelled = true;  // every child has ended: the group's errors come first
        }
    }
    if (!failed_.empty()) {
        // The failures win over the caller's cancellation, which stays pending for its next
        // suspension point (resume() consumed it): a cancellation is never lost.
        if (cancelled) loop_core_cancel_self();
        std::vector<std::exception_ptr> errors;
        failed_.for_each([&errors](group_link* l) { errors.push_back(child_of<child>(l)->error); });
        failed_.for_each([](group_link* l) {
            detail::intrusive_list<group_link>::erase(l);
            delete child_of<child>(l);
        });
        throw task_group_error(std::move(errors));
    }
    if (cancelled) throw cancelled_error();
}

}  // namespace ringio
