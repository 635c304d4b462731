// Arnoldi (Schioppa et al., AAAI 2022) per block: the top-p eigenpairs (u_j, mu_j) of the block's
// Gauss-Newton matrix G_l = G^T G / n, found by Lanczos iteration (Arnoldi's method for a symmetric
// matrix) with matrix-free products and full reorthogonalisation, then
//   M_l^{-1} v = sum_j u_j (u_j . v) / (mu_j + lambda_l) + (v - sum_j u_j (u_j . v)) / lambda_l,
// the exact damped inverse on the captured subspace and the damping alone outside it. With p = d
// this is Exact. Diagnostics: the share of G_l's trace the p eigenvalues capture, and the largest
// Ritz residual ||G u_j - mu_j u_j|| / mu_1 (Lanczos' own bound).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/linalg_eigh.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <fmt/format.h>

#include <algorithm>
#include <inflab/distributed.hpp>
#include <inflab/error.hpp>
#include <inflab/estimator.hpp>

namespace {

struct Fitted {
  at::Tensor vectors;    // d x p, orthonormal columns (float64)
  at::Tensor shrinkage;  // p: 1 / (mu + lambda) - 1 / lambda (float64)
  double lambda;
};

class Arnoldi : public inflab::BlockwiseEstimator<Fitted> {
 public:
  at::Tensor inverse_product(std::size_t b, const at::Tensor& queries) override {
    const Fitted& block = state(b);
    at::Tensor v = queries.to(c10::kDouble);
    at::Tensor coordinates = v.mm(block.vectors).mul_(block.shrinkage);  // q x p
    return v.div(block.lambda).add_(coordinates.mm(block.vectors.t())).to(queries.scalar_type());
  }
  bool supports_distributed() const override { return true; }

 protected:
  void configure_method(const inflab::Options& options) override {
    rank_ = options.get_int("rank");
    iterations_ = options.get_int("iterations");
    seed_ = options.get_int("seed");
    if (iterations_ != 0 && iterations_ < rank_)
      throw inflab::Error(fmt::format("{}: iterations ({}) must be >= rank ({}), or 0 for 3 x rank",
                                      options.owner(), iterations_, rank_));
  }

  Fitted fit_block(const inflab::BlockFit& fit) override {
    const at::Tensor& g = fit.block.values;
    const std::int64_t d = g.size(1);
    const std::int64_t steps = std::min(iterations_ == 0 ? 3 * rank_ : iterations_, d);
    auto apply = [&](const at::Tensor& x) {  // G^T G x / n over every rank's rows, in float64
      return inflab::gauss_newton_product(g, x.to(g.scalar_type()).unsqueeze(0), 0.0)
          .squeeze(0)
          .to(c10::kDouble);
    };
    auto generator = at::detail::createCPUGenerator(static_cast<std::uint64_t>(seed_));
    at::Tensor basis =
        at::zeros({steps, d}, at::TensorOptions().dtype(c10::kDouble));  // rows: Lanczos vectors
    at::Tensor q = at::randn({d}, generator, at::TensorOptions().dtype(c10::kDouble));
    basis[0].copy_(q.div_(q.norm()));
    std::vector<double> alpha, beta;
    double residual_norm = 0;
    for (std::int64_t j = 0; j < steps; ++j) {
      at::Tensor w = apply(basis[j]);
      alpha.push_back(w.dot(basis[j]).item<double>());
      // Full reorthogonalisation, twice (Kahan's "twice is enough"): the three-term recurrence
      // alone loses orthogonality as Ritz values converge.
      const at::Tensor kept = basis.narrow(0, 0, j + 1);
      for (int pass = 0; pass < 2; ++pass) w.sub_(kept.t().mv(kept.mv(w)));
      residual_norm = w.norm().item<double>();
      if (j + 1 == steps) break;
      // An invariant subspace: G restricted to it is captured exactly; stop there.
      if (residual_norm <= 1e-12 * std::max(std::abs(alpha.front()), 1e-300)) break;
      beta.push_back(residual_norm);
      basis[j + 1].copy_(w.div_(residual_norm));
    }
    const auto m = static_cast<std::int64_t>(alpha.size());
    at::Tensor tridiagonal = at::zeros({m, m}, at::TensorOptions().dtype(c10::kDouble));
    for (std::int64_t i = 0; i < m; ++i) {
      tridiagonal[i][i] = alpha[static_cast<std::size_t>(i)];
      if (i + 1 < m) tridiagonal[i][i + 1] = tridiagonal[i + 1][i] = beta[static_cast<std::size_t>(i)];
    }
    auto [ritz_values, ritz_coordinates] = at::linalg_eigh(tridiagonal);  // ascending
    const std::int64_t p = std::min(rank_, m);
    at::Tensor top = ritz_values.narrow(0, m - p, p).flip(0).clamp_min(0);
    at::Tensor coordinates = ritz_coordinates.narrow(1, m - p, p).flip(1);  // m x p
    at::Tensor vectors = basis.narrow(0, 0, m).t().mm(coordinates);         // d x p
    // Lanczos: ||G u_j - mu_j u_j|| = beta_m |last coordinate of s_j|.
    const double largest = std::max(top[0].item<double>(), 1e-300);
    const double ritz_residual =
        m == d ? 0.0 : residual_norm * coordinates[m - 1].abs().max().item<double>() / largest;
    at::Tensor trace = fit.squared_norms.sum().to(c10::kDouble);
    inflab::sum_over_ranks(trace);
    const double mean_trace =
        trace.item<double>() / static_cast<double>(inflab::rows_over_ranks(fit.block.values.size(0)));
    report(fit.index, "captured_share", mean_trace > 0 ? top.sum().item<double>() / mean_trace : 0.0);
    report(fit.index, "rank", static_cast<double>(p));
    report(fit.index, "iterations", static_cast<double>(m));
    report(fit.index, "ritz_residual", ritz_residual);
    at::Tensor shrinkage = top.add(fit.lambda).reciprocal().sub(1.0 / fit.lambda);
    return {vectors.contiguous(), shrinkage, fit.lambda};
  }

 private:
  std::int64_t rank_ = 64, iterations_ = 0, seed_ = 0;
};

std::vector<inflab::OptionSpec> options() {
  auto specs = inflab::damping_option_specs();
  specs.push_back({"rank", inflab::OptionType::Int, std::int64_t{64},
                   "p: eigenpairs kept per block (capped at the block's width)", false,
                   inflab::between(1, 1e9)});
  specs.push_back({"iterations", inflab::OptionType::Int, std::int64_t{0},
                   "Lanczos steps per block (one pass over the block's gradients each); 0 = 3 x rank", false,
                   inflab::at_least(0)});
  specs.push_back({"seed", inflab::OptionType::Int, std::int64_t{0}, "the Lanczos start vector"});
  return specs;
}

}  // namespace

INFLAB_PLUGIN(
    Estimator, "arnoldi", "1.0.0",
    "Arnoldi: the damped inverse on the top-p Gauss-Newton eigenpairs (Lanczos), the damping outside",
    options, Arnoldi)
