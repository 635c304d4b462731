// Built with INFLAB_PLUGIN_ABI_VERSION=999: the registry must refuse to load it.
#include <inflab/estimator.hpp>

namespace {
class Stale : public inflab::Estimator {
 public:
  void fit(const inflab::GradientBlocks&) override {}
  at::Tensor inverse_product(std::size_t, const at::Tensor& q) override { return q; }
};
std::vector<inflab::OptionSpec> options() { return {}; }
}  // namespace

INFLAB_PLUGIN(Estimator, "stale_estimator", "0.0.1", "built for another ABI", options, Stale)
