#include "CSwiftConcurrencyHook.h"

#include <stdatomic.h>

// Declared by the Swift runtime (stdlib/public/Concurrency/GlobalExecutor.cpp) as a plain pointer-sized
// global; only its address is used here.
extern void *swift_task_enqueueGlobal_hook;

bool tcbridge_install_global_enqueue_hook(const void *hook) {
    const void *expected = 0;
    return atomic_compare_exchange_strong((_Atomic(const void *) *)&swift_task_enqueueGlobal_hook, &expected, hook);
}
