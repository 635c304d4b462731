// A new estimator in one file: the diagonal of the damped Gauss-Newton block as preconditioner,
//   r_l = v_l / (mean_i g_il^2 + lambda_l)   (elementwise).
#include <inflab/estimator.hpp>

namespace {

class Diagonal : public inflab::Estimator {
 public:
  void configure(const inflab::Options& options) override { damping_ = inflab::damping_from(options); }

  void fit(const inflab::GradientBlocks& train) override {
    diagonals_.clear();
    for (const auto& block : train)
      diagonals_.push_back(block.values.square().mean(0).add_(damping_.for_block(block.values)));
  }

  at::Tensor inverse_product(std::size_t block, const at::Tensor& queries) override {
    return queries.div(diagonals_.at(block));
  }

 private:
  inflab::Damping damping_;
  std::vector<at::Tensor> diagonals_;
};

std::vector<inflab::OptionSpec> options() { return inflab::damping_option_specs(); }

}  // namespace

INFLAB_PLUGIN(Estimator, "diagonal", "0.1.0", "Diagonal Gauss-Newton preconditioner (example plugin)",
              options, Diagonal)
