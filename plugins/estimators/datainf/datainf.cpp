// DataInf (Kwon et al., ICLR 2024): the inverse of each damped Gauss-Newton block replaced by
// the average of inverted rank-one-plus-ridge matrices, which Sherman-Morrison makes explicit:
//   r_l = 1/(n lambda_l) sum_i ( v - (g_il . v) / (lambda_l + ||g_il||^2) g_il )
// For Q queries at once: C = V G^T scaled per training example, then R = (V - C G) / lambda.
#include <inflab/distributed.hpp>
#include <inflab/estimator.hpp>

namespace {

class DataInf : public inflab::Estimator {
 public:
  void configure(const inflab::Options& options) override { damping_ = inflab::damping_from(options); }

  void fit(const inflab::GradientBlocks& train) override {
    blocks_.clear();
    for (const auto& block : train) {
      const at::Tensor& g = block.values;
      at::Tensor squared_norms = inflab::squared_row_norms(g);
      const double lambda = damping_.for_norms(squared_norms, g.size(1));
      const double n = static_cast<double>(inflab::rows_over_ranks(g.size(0)));  // all ranks' rows
      // 1 / (n (lambda + ||g_i||^2)), one weight per training example.
      at::Tensor weights = squared_norms.add_(lambda).mul_(n).reciprocal_();
      blocks_.push_back({g, weights, lambda});
      diagnostics_[block.name + ".lambda"] = lambda;
    }
  }

  at::Tensor inverse_product(std::size_t b, const at::Tensor& queries) override {
    const Block& block = blocks_.at(b);
    at::Tensor coefficients = queries.mm(block.gradients.t()).mul_(block.weights);  // Q x n
    at::Tensor correction = coefficients.mm(block.gradients);  // this rank's share of the sum over i
    return queries.sub(inflab::sum_over_ranks(correction)).div_(block.lambda);
  }

  bool supports_distributed() const override { return true; }

  std::map<std::string, double> diagnostics() const override { return diagnostics_; }

 private:
  struct Block {
    at::Tensor gradients, weights;
    double lambda;
  };
  inflab::Damping damping_;
  std::vector<Block> blocks_;
  std::map<std::string, double> diagnostics_;
};

std::vector<inflab::OptionSpec> options() { return inflab::damping_option_specs(); }

}  // namespace

INFLAB_PLUGIN(Estimator, "datainf", "1.0.0",
              "DataInf: closed-form inverse-harmonic-mean approximation of each damped Gauss-Newton block",
              options, DataInf)
