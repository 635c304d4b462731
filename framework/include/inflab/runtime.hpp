// Process-wide settings: LibTorch threads and version facts for manifests.
#pragma once
#include <string>

namespace inflab {

// Threads: explicit > 0, else $INFLAB_THREADS, else the hardware concurrency.
int configure_threads(int requested);
int current_threads();
std::string torch_version();
std::string inflab_version();
std::string git_commit();  // of the source tree inflab was built from, or "unknown"

}  // namespace inflab
