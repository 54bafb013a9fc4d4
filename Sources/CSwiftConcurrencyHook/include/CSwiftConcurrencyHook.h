#ifndef TCBRIDGE_CSWIFTCONCURRENCYHOOK_H
#define TCBRIDGE_CSWIFTCONCURRENCYHOOK_H

#include <stdbool.h>

/// Installs `hook` as the Swift runtime's global-enqueue hook (`swift_task_enqueueGlobal_hook` of
/// libswift_Concurrency) if no hook is installed yet; `true` when it was installed.
///
/// `hook` must be a Swift `@convention(thin) (UnownedJob, @convention(thin) (UnownedJob) -> Void) -> Void`
/// function. The variable is reached by a link-time reference, not `dlsym`: with the runtime linked
/// in (`--static-swift-stdlib`, which hides every symbol of the runtime's archives) `dlsym` finds
/// nothing. Thread-safe (one atomic compare-and-exchange).
bool tcbridge_install_global_enqueue_hook(const void *_Nonnull hook);

#endif
