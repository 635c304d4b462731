// DataInf (Kwon et al., ICLR 2024): the inverse of each damped Gauss-Newton block replaced by
// the average of inverted rank-one-plus-ridge matrices, which Sherman-Morrison makes explicit:
//   r_l = 1/(n lambda_l) sum_i ( v - (g_il . v) / (lambda_l + ||g_il||^2) g_il )
// For Q queries at once: C = V G^T scaled per training example, then R = (V - C G) / lambda.
#include <inflab/distributed.hpp>
#include <inflab/estimator.hpp>

namespace {

struct Fitted {
  at::Tensor gradients, weights;  // weights_i = 1 / (n (lambda + ||g_i||^2))
  double lambda;
};

class DataInf : public inflab::BlockwiseEstimator<Fitted> {
 public:
  at::Tensor inverse_product(std::size_t b, const at::Tensor& queries) override {
    const Fitted& block = state(b);
    at::Tensor coefficients =
        inflab::matrix_product(queries, block.gradients.t()).mul_(block.weights);  // Q x n
    at::Tensor correction =
        inflab::matrix_product(coefficients, block.gradients);  // this rank's share of the sum over i
    return queries.sub(inflab::sum_over_ranks(correction)).div_(block.lambda);
  }
  bool supports_distributed() const override { return true; }

 protected:
  Fitted fit_block(const inflab::BlockFit& fit) override {
    const double n =
        static_cast<double>(inflab::rows_over_ranks(fit.block.values.size(0)));  // all ranks' rows
    at::Tensor weights = fit.squared_norms.add(fit.lambda).mul_(n).reciprocal_();
    return {fit.block.values, weights, fit.lambda};
  }
};

std::vector<inflab::OptionSpec> options() { return inflab::damping_option_specs(); }

}  // namespace

INFLAB_PLUGIN(Estimator, "datainf", "1.0.0",
              "DataInf: closed-form inverse-harmonic-mean approximation of each damped Gauss-Newton block",
              options, DataInf)
