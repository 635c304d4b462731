// The commit this library was built from (cmake/BuildInfo.cmake writes the header at build time).
#include <string>

#include "inflab_build_info.h"

namespace inflab {
std::string git_commit() { return INFLAB_BUILT_COMMIT; }
}  // namespace inflab
