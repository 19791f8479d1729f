// ringio: a C++20 coroutine networking runtime on Linux io_uring, modelled on asyncio.
// The umbrella header: everything public.
#pragma once

#include "ringio/errors.hpp"
#include "ringio/event_loop.hpp"
#include "ringio/io.hpp"
#include "ringio/log.hpp"
#include "ringio/task.hpp"
#include "ringio/task_handle.hpp"
#include "ringio/time.hpp"
