// Conjugate gradients on (G_l + lambda_l I) r = v per block, matrix-free (G_l r = G^T (G r) / n),
// all queries at once (one step size per query). The damped system is symmetric positive
// definite, so CG converges; it stops at relative residual `tolerance` or `max_iterations`.
// preconditioner = "ekfac": preconditioned CG with EK-FAC's damped inverse P, z = P r (the same
// solution; the iterations depend on P (G + lambda I)'s spread of eigenvalues instead of G's).
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <fmt/format.h>

#include <cstdio>
#include <inflab/error.hpp>
#include <inflab/estimator.hpp>
#include <optional>

#include "kronecker.hpp"

namespace {

struct Fitted {
  at::Tensor gradients;
  double lambda;
  std::optional<inflab::EkfacPreconditioner> preconditioner;
};

class ConjugateGradients : public inflab::BlockwiseEstimator<Fitted> {
 public:
  at::Tensor inverse_product(std::size_t b, const at::Tensor& queries) override {
    const Fitted& block = state(b);
    const at::Tensor& g = block.gradients;
    auto apply = [&](const at::Tensor& p) { return inflab::gauss_newton_product(g, p, block.lambda); };
    auto precondition = [&](const at::Tensor& residual) {
      return block.preconditioner ? block.preconditioner->apply(residual) : residual;
    };
    // Rows are queries; every reduction is per row. rs = ||residual||^2 decides convergence;
    // rz = residual . z (= rs without a preconditioner) sets the steps.
    at::Tensor r = at::zeros_like(queries);
    at::Tensor residual = queries.clone();
    at::Tensor z = precondition(residual);
    at::Tensor direction = z.clone();
    at::Tensor rs = residual.square().sum(1);
    at::Tensor rz = block.preconditioner ? residual.mul(z).sum(1) : rs;
    at::Tensor target = queries.square().sum(1).mul(tolerance_ * tolerance_);
    std::int64_t iterations = 0;
    for (; iterations < max_iterations_; ++iterations) {
      at::Tensor active = rs.gt(target);
      if (!active.any().item().toBool()) break;
      at::Tensor hp = apply(direction);
      at::Tensor curvature = direction.mul(hp).sum(1);
      // Converged rows (and any row with no curvature left) take no step: no 0/0, no NaN.
      at::Tensor usable = active.logical_and(curvature.gt(0));
      at::Tensor alpha = at::where(usable, rz.div(curvature.clamp_min(1e-300)), at::zeros_like(rs));
      r.add_(direction.mul(alpha.unsqueeze(1)));
      residual.sub_(hp.mul(alpha.unsqueeze(1)));
      rs = residual.square().sum(1);
      z = precondition(residual);
      at::Tensor rz_new = block.preconditioner ? residual.mul(z).sum(1) : rs;
      at::Tensor beta = at::where(usable, rz_new.div(rz.clamp_min(1e-300)), at::zeros_like(rs));
      direction = z.add(direction.mul(beta.unsqueeze(1)));
      rz = rz_new;
    }
    // Report the true residual, recomputed, not the recurrence's.
    const double worst = inflab::max_relative_residual(g, r, queries, block.lambda);
    report(b, "iterations", static_cast<double>(iterations));
    report(b, "relative_residual", worst);
    if (!(worst <= 10 * tolerance_))
      std::fprintf(
          stderr,
          "[inflab] warning: cg on block '%s' stopped after %lld iterations at relative residual %.3g "
          "(tolerance %.3g); raise max_iterations or the damping\n",
          block_name(b).c_str(), static_cast<long long>(iterations), worst, tolerance_);
    return r;
  }
  bool supports_distributed() const override { return true; }

 protected:
  void configure_method(const inflab::Options& options) override {
    tolerance_ = options.get_double("tolerance");
    max_iterations_ = options.get_int("max_iterations");
    preconditioned_ = inflab::ekfac_preconditioned(options);
    if (tolerance_ <= 0)
      throw inflab::Error(fmt::format("{}: tolerance must be > 0, found {}", options.owner(), tolerance_));
    if (max_iterations_ < 1)
      throw inflab::Error(
          fmt::format("{}: max_iterations must be >= 1, found {}", options.owner(), max_iterations_));
  }
  Fitted fit_block(const inflab::BlockFit& fit) override {
    if (!preconditioned_) return {fit.block.values, fit.lambda, std::nullopt};
    return {fit.block.values, fit.lambda, inflab::ekfac_preconditioner(fit.block, fit.lambda, "cg")};
  }

 private:
  double tolerance_ = 1e-6;
  std::int64_t max_iterations_ = 500;
  bool preconditioned_ = false;
};

std::vector<inflab::OptionSpec> options() {
  auto specs = inflab::damping_option_specs();
  specs.push_back({"tolerance", inflab::OptionType::Double, 1e-6,
                   "stop when ||(G + lambda I) r - v|| <= tolerance ||v|| for every query", false,
                   inflab::at_least(0)});
  specs.push_back({"max_iterations", inflab::OptionType::Int, std::int64_t{500}, "iteration limit per block",
                   false, inflab::between(1, 1e9)});
  specs.push_back(inflab::preconditioner_option_spec());
  return specs;
}

}  // namespace

INFLAB_PLUGIN(Estimator, "cg", "1.1.0",
              "Conjugate gradients on the damped Gauss-Newton block, matrix-free, batched over queries",
              options, ConjugateGradients)
