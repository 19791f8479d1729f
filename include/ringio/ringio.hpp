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
#include "ringio/condition.hpp"
#include "ringio/endpoint.hpp"
#include "ringio/event.hpp"
#include "ringio/gather.hpp"
#include "ringio/mutex.hpp"
#include "ringio/queue.hpp"
#include "ringio/semaphore.hpp"
#include "ringio/signal.hpp"
#include "ringio/task_group.hpp"
#include "ringio/to_thread.hpp"
#include "ringio/wait_for.hpp"
