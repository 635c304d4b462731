// TracIn over checkpoints (Pruthi et al., 2020): the influence of training example k on query q is
//   I(k, q) = - sum_c eta_c g_k(theta_c) . v_q(theta_c),
// the gradient dot product at each checkpoint theta_c the fine-tuning kept ([checkpoints] count),
// weighted by the mean learning rate eta_c of the stretch of training that ended there. Per
// checkpoint this is Hessian-free's identity; the framework does the loop over checkpoints.
#include <inflab/estimator.hpp>

namespace {

class TracIn : public inflab::Estimator {
 public:
  void fit(const inflab::GradientBlocks&) override {}
  at::Tensor inverse_product(std::size_t, const at::Tensor& queries) override { return queries; }
  bool supports_distributed() const override { return true; }
  int preconditioner_degree() const override { return 0; }  // the identity
  bool over_checkpoints() const override { return true; }
};

std::vector<inflab::OptionSpec> options() { return {}; }

}  // namespace

INFLAB_PLUGIN(
    Estimator, "tracin", "1.0.0",
    "TracIn: learning-rate-weighted gradient dot products summed over the fine-tuning's checkpoints", options,
    TracIn)
