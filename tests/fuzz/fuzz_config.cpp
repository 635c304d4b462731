// Experiment files through the whole schema validation (every built plugin's options).
#include "fuzz_common.hpp"
#include "inflab/config.hpp"
#include "inflab/registry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static inflab::Registry* registry = [] {
    auto* r = new inflab::Registry;
    r->load_directory(INFLAB_PLUGIN_DIR);
    return r;
  }();
  auto path = fuzz::write("experiment.toml", fuzz::as_string(data, size));
  fuzz::expect_ok_or_error([&] {
    auto runs = inflab::load_experiment(path, {}, *registry);
    if (runs.empty() || runs.size() > 100000) __builtin_trap();
  });
  return 0;
}
