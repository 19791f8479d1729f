// The process-wide pool behind to_thread(). Threads start on demand up to a small cap and then
// stay; each blocks every signal so that signals reach the loop's signalfd, not a worker.
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "ringio/to_thread.hpp"

namespace ringio::detail {
namespace {

class thread_pool {
public:
    thread_pool() : max_threads_(std::clamp(std::thread::hardware_concurrency() + 4, 4u, 32u)) {}

    ~thread_pool() {
        {
            std::lock_guard lock(m_);
            stop_ = true;
        }
        cv_.notify_all();
        for (auto& t : threads_) t.join();
    }

    void submit(pool_job* job) {
        std::unique_lock lock(m_);
        // Each idle worker will take one job; start another thread only for jobs beyond that
        // (else a busy worker picks the job up when it finishes its current one). First, so that
        // a thread that cannot be started leaves no job behind that would outlive its awaiter.
        if (queued_ + 1 > idle_ && threads_.size() < max_threads_) {
            try {
                start_thread();
            } catch (...) {
                if (threads_.empty()) throw;  // nobody would ever run it
            }
        }
        job->next = nullptr;
        if (tail_)
            tail_->next = job;
        else
            head_ = job;
        tail_ = job;
        ++queued_;
        lock.unlock();
        cv_.notify_one();
    }

    std::size_t threads() {
        std::lock_guard lock(m_);
        return threads_.size();
    }

private:
    void start_thread() {
        // The new thread inherits the signal mask: block everything around its creation.
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        threads_.emplace_back([this] { work(); });
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
    }

    void work() {
        std::unique_lock lock(m_);
        while (true) {
            while (!head_ && !stop_) {
                ++idle_;
                cv_.wait(lock);
                --idle_;
            }
            if (!head_) return;  // stopping and nothing left
            pool_job* job = head_;
            --queued_;
            head_ = job->next;
            if (!head_) tail_ = nullptr;
            lock.unlock();
            job->run(job);
            lock.lock();
        }
    }

    std::mutex m_;
    std::condition_variable cv_;
    pool_job* head_ = nullptr;
    pool_job* tail_ = nullptr;
    std::vector<std::thread> threads_;
    std::size_t idle_ = 0;
    std::size_t queued_ = 0;
    const std::size_t max_threads_;
    bool stop_ = false;
};

thread_pool& pool() {
    static thread_pool p;
    return p;
}

}  // namespace

void pool_submit(pool_job* job) { pool().submit(job); }
std::size_t pool_threads() noexcept { return pool().threads(); }

}  // namespace ringio::detail
