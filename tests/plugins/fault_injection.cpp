// Fault injection for the distributed tests, kept out of production code: preloaded (LD_PRELOAD;
// the registry loads only the plugins a run names, so a plugin path would not load it), it
// installs a collective observer that reads INFLAB_FAULT="die|hang@RANK:N" and, on that rank
// before its N-th collective, ends the process abruptly (as a kill or a crash would) or stops
// answering (as a stuck process would). It is built as a plugin (an estimator nothing selects) to
// be built and checked like one.
#include <unistd.h>

#include <cstdlib>
#include <inflab/distributed.hpp>
#include <inflab/estimator.hpp>
#include <string>

namespace {

void observe(int rank, std::uint64_t collective) {
  const char* value = std::getenv("INFLAB_FAULT");
  if (!value) return;
  const std::string spec(value);
  const auto at = spec.find('@'), colon = spec.find(':');
  if (at == std::string::npos || colon == std::string::npos || colon < at) return;
  if (std::stoi(spec.substr(at + 1, colon - at - 1)) != rank ||
      std::stoull(spec.substr(colon + 1)) != collective)
    return;
  if (spec.compare(0, at, "die") == 0) ::_exit(9);
  if (spec.compare(0, at, "hang") == 0)
    for (;;) ::pause();
}

const bool installed = (inflab::set_collective_observer(&observe), true);

class Unused : public inflab::Estimator {
 public:
  void fit(const inflab::GradientBlocks&) override {}
  at::Tensor inverse_product(std::size_t, const at::Tensor& q) override { return q; }
};
std::vector<inflab::OptionSpec> options() { return {}; }

}  // namespace

INFLAB_PLUGIN(Estimator, "fault_injection", "0.0.1", "test only: dies or hangs at a chosen collective",
              options, Unused)
