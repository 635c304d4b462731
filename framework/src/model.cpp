// The one error for a model that lacks an optional capability (inflab/model.hpp).
#include "inflab/model.hpp"

#include "inflab/error.hpp"

namespace inflab {

void throw_missing_capability(const char* interface, const std::string& needed_by) {
  throw Error(needed_by + " needs a model that implements " + interface +
              "; the configured model plugin does not (docs/writing-a-plugin.md lists the capabilities)");
}

}  // namespace inflab
