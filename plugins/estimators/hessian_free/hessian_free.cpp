// Hessian-free (TracIn-like): no inverse at all, the influence is -g_k . v.
#include <inflab/estimator.hpp>

namespace {

class HessianFree : public inflab::Estimator {
 public:
  void fit(const inflab::GradientBlocks&) override {}
  at::Tensor inverse_product(std::size_t, const at::Tensor& queries) override { return queries; }
  bool supports_distributed() const override { return true; }
  int preconditioner_degree() const override { return 0; }  // the identity
};

std::vector<inflab::OptionSpec> options() { return {}; }

}  // namespace

INFLAB_PLUGIN(Estimator, "hessian_free", "1.0.0",
              "Hessian-free: plain gradient dot product (the identity in place of the inverse)", options,
              HessianFree)
