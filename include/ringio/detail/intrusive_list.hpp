// Intrusive doubly linked list: the waiter nodes live in coroutine frames, so waiting never
// allocates. Private to ringio; not part of the public API.
#pragma once

#include <cassert>

namespace ringio::detail {

struct list_node {
    list_node* prev = nullptr;
    list_node* next = nullptr;
    [[nodiscard]] bool linked() const noexcept { return prev != nullptr; }
};

/// A circular list with a sentinel. Elements derive from list_node; the list never owns them.
template <class T>
class intrusive_list {
public:
    intrusive_list() noexcept { head_.prev = head_.next = &head_; }
    intrusive_list(const intrusive_list&) = delete;
    intrusive_list& operator=(const intrusive_list&) = delete;

    [[nodiscard]] bool empty() const noexcept { return head_.next == &head_; }
    [[nodiscard]] T* front() const noexcept { return empty() ? nullptr : static_cast<T*>(head_.next); }

    void push_back(T* item) noexcept {
        list_node* n = item;
        assert(!n->linked());
        n->prev = head_.prev;
        n->next = &head_;
        head_.prev->next = n;
        head_.prev = n;
    }

    static void erase(T* item) noexcept {
        list_node* n = item;
        assert(n->linked());
        n->prev->next = n->next;
        n->next->prev = n->prev;
        n->prev = n->next = nullptr;
    }

    T* pop_front() noexcept {
        T* f = front();
        if (f) erase(f);
        return f;
    }

    /// Calls fn(T*) for each element; fn may erase the element it is given.
    template <class F>
    void for_each(F&& fn) {
        list_node* n = head_.next;
        while (n != &head_) {
            list_node* next = n->next;
            fn(static_cast<T*>(n));
            n = next;
        }
    }

private:
    list_node head_;
};

}  // namespace ringio::detail
