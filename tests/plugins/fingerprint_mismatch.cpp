// Claims a build with another LibTorch: the registry must refuse to load it.
#define INFLAB_BUILD_FINGERPRINT "inflab-abi 8; libtorch 2.1.0; gcc 12.2; cxx11-abi 1"
#include <inflab/estimator.hpp>

namespace {
class Foreign : public inflab::Estimator {
 public:
  void fit(const inflab::GradientBlocks&) override {}
  at::Tensor inverse_product(std::size_t, const at::Tensor& q) override { return q; }
};
std::vector<inflab::OptionSpec> options() { return {}; }
}  // namespace

INFLAB_PLUGIN(Estimator, "foreign_estimator", "0.0.1", "built with another LibTorch", options, Foreign)
