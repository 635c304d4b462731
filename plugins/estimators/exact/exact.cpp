// Exact block-wise inverse (G_l + lambda_l I)^{-1}, G_l = (1/n) G^T G, in float64:
//   d_l <= n: Cholesky of the d x d matrix;
//   n < d_l:  Woodbury, (lambda I + G^T G / n)^{-1} = (I - G^T (n lambda I + G G^T)^{-1} G) / lambda,
//             with a Cholesky of the n x n Gram matrix.
#include <ATen/ops/cholesky_solve.h>
#include <ATen/ops/eye.h>
#include <ATen/ops/linalg_cholesky.h>
#include <fmt/format.h>

#include <inflab/distributed.hpp>
#include <inflab/error.hpp>
#include <inflab/estimator.hpp>

namespace {

struct Fitted {
  at::Tensor gradients,
      factor;  // Woodbury: G (float64) and chol(G G^T + n lambda I); else chol(G^T G / n + lambda I)
  double lambda;
  bool woodbury;
};

class Exact : public inflab::BlockwiseEstimator<Fitted> {
 public:
  at::Tensor inverse_product(std::size_t b, const at::Tensor& queries) override {
    const Fitted& block = state(b);
    at::Tensor v = queries.to(c10::kDouble);
    at::Tensor r;
    if (block.woodbury) {
      at::Tensor w =
          at::cholesky_solve(inflab::matrix_product(block.gradients, v.t()), block.factor);  // n x Q
      r = v.sub(inflab::matrix_product(w.t(), block.gradients)).div_(block.lambda);
    } else {
      r = at::cholesky_solve(v.t(), block.factor).t();
    }
    return r.to(queries.scalar_type());
  }
  bool supports_distributed() const override { return true; }

 protected:
  void configure_method(const inflab::Options& options) override {
    budget_mb_ = options.get_double("memory_budget_mb");
    method_ = options.get_string("method");
    if (method_ != "auto" && method_ != "cholesky" && method_ != "woodbury")
      throw inflab::Error(fmt::format("{}: method must be auto, cholesky or woodbury, found \"{}\"",
                                      options.owner(), method_));
  }

  Fitted fit_block(const inflab::BlockFit& fit) override {
    const inflab::GradientBlock& block = fit.block;
    const auto n = inflab::rows_over_ranks(block.values.size(0)), d = block.values.size(1);
    const bool woodbury = method_ == "woodbury" || (method_ == "auto" && n < d);
    const auto side = woodbury ? n : d;
    const double needed_mb = 2.0 * static_cast<double>(side) * static_cast<double>(side) * 8.0 / 1048576.0;
    if (needed_mb > budget_mb_)
      throw inflab::Error(
          fmt::format("exact: block '{}' ({} examples x {} parameters) needs a {} x {} float64 "
                      "factorization, about {:.0f} MiB, "
                      "over memory_budget_mb = {:.0f}; raise memory_budget_mb or use datainf, lissa or cg",
                      block.name, n, d, side, side, needed_mb, budget_mb_));
    // Woodbury keeps G (n < d, in float64) for its solves; Cholesky needs only G^T G, accumulated
    // in chunks so a memory-mapped store is never copied whole.
    // Distributed, Woodbury gathers every rank's rows (n < d keeps that small).
    at::Tensor g = woodbury ? inflab::gather_rows_over_ranks(block.values).to(c10::kDouble) : at::Tensor();
    at::Tensor matrix =
        woodbury ? g.mm(g.t()) : inflab::gram_of_columns_float64(block.values).div_(static_cast<double>(n));
    matrix.diagonal().add_(woodbury ? static_cast<double>(n) * fit.lambda : fit.lambda);
    report(fit.index, "woodbury", woodbury ? 1.0 : 0.0);
    return {g, at::linalg_cholesky(matrix), fit.lambda, woodbury};
  }

 private:
  double budget_mb_ = 4096;
  std::string method_ = "auto";
};

std::vector<inflab::OptionSpec> options() {
  auto specs = inflab::damping_option_specs();
  specs.push_back({"method", inflab::OptionType::String, std::string("auto"),
                   "auto (Cholesky when d <= n, else Woodbury), cholesky or woodbury"});
  specs.push_back({"memory_budget_mb", inflab::OptionType::Double, 4096.0,
                   "refuse a block whose factorization would need more memory than this", false,
                   inflab::greater_than(0)});
  return specs;
}

}  // namespace

INFLAB_PLUGIN(Estimator, "exact", "1.0.0",
              "Exact block-wise inverse of the damped Gauss-Newton matrix (Cholesky or Woodbury, float64)",
              options, Exact)
