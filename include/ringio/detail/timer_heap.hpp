// Userspace timers: an intrusive binary min-heap keyed by (deadline, insertion order). The loop
// asks the kernel for one deadline only, the earliest. Nodes live in the awaiting frames.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace ringio::detail {

using clock = std::chrono::steady_clock;

struct timer_node {
    static constexpr std::size_t npos = ~std::size_t{0};
    clock::time_point deadline{};
    std::uint64_t seq = 0;
    std::size_t index = npos;  // position in the heap, npos when not armed
    void (*fire)(timer_node*) noexcept = nullptr;

    [[nodiscard]] bool armed() const noexcept { return index != npos; }
};

class timer_heap {
public:
    [[nodiscard]] bool empty() const noexcept { return heap_.empty(); }
    [[nodiscard]] std::size_t size() const noexcept { return heap_.size(); }
    [[nodiscard]] timer_node* top() const noexcept { return heap_.front(); }

    void push(timer_node* n) {
        n->seq = next_seq_++;
        n->index = heap_.size();
        heap_.push_back(n);
        sift_up(n->index);
    }

    void erase(timer_node* n) noexcept {
        std::size_t i = n->index;
        n->index = timer_node::npos;
        timer_node* last = heap_.back();
        heap_.pop_back();
        if (last == n) return;
        heap_[i] = last;
        last->index = i;
        sift_up(i);
        sift_down(last->index);
    }

    timer_node* pop() noexcept {
        timer_node* n = heap_.front();
        erase(n);
        return n;
    }

private:
    static bool before(const timer_node* a, const timer_node* b) noexcept {
        return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
    }

    void place(std::size_t i, timer_node* n) noexcept {
        heap_[i] = n;
        n->index = i;
    }

    void sift_up(std::size_t i) noexcept {
        timer_node* n = heap_[i];
        while (i > 0) {
            std::size_t parent = (i - 1) / 2;
            if (!before(n, heap_[parent])) break;
            place(i, heap_[parent]);
            i = parent;
        }
        place(i, n);
    }

    void sift_down(std::size_t i) noexcept {
        timer_node* n = heap_[i];
        std::size_t size = heap_.size();
        while (true) {
            std::size_t child = 2 * i + 1;
            if (child >= size) break;
            if (child + 1 < size && before(heap_[child + 1], heap_[child])) ++child;
            if (!before(heap_[child], n)) break;
            place(i, heap_[child]);
            i = child;
        }
        place(i, n);
    }

    std::vector<timer_node*> heap_;
    std::uint64_t next_seq_ = 0;
};

}  // namespace ringio::detail
