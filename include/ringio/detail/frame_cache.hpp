// Per-thread recycling of coroutine frames and task states. A task create+await is then two
// pointer pops instead of a trip through malloc.
#pragma once

#include <cstddef>

namespace ringio::detail {

/// Returns memory for n bytes, from this thread's cache when a block of that size class is free.
void* frame_alloc(std::size_t n);
/// Gives memory from frame_alloc(n) back; n must be the size it was allocated with. The block
/// joins the calling thread's cache (any thread may free what another allocated).
void frame_free(void* p, std::size_t n) noexcept;

/// Blocks from frame_alloc() not yet given back to frame_free(), counted per thread (for tests
/// that look for leaked coroutine frames and task states). Exact under AddressSanitizer too,
/// where the cache is bypassed. A block freed on another thread than the one that allocated it
/// is counted down there, so only the sum over threads is meaningful then (unsigned
/// wrap-around keeps that sum right).
[[nodiscard]] std::size_t live_frames() noexcept;

}  // namespace ringio::detail
