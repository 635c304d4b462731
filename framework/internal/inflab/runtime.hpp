// Process-wide settings: LibTorch threads and version facts for manifests.
#pragma once
#include <string>

namespace inflab {

// Threads: explicit > 0, else $INFLAB_THREADS, else the hardware concurrency.
int configure_threads(int requested);
int current_threads();
std::string torch_version();
std::string inflab_version();
// The commit this build was made from ("-dirty" when tracked files differed), or "unknown".
std::string git_commit();

}  // namespace inflab
