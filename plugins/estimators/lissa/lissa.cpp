// LiSSA (Agarwal et al. 2017) per block: r <- v + (I - H/s) r, which converges to s H^{-1} v
// when s exceeds H's largest eigenvalue; the result is r / s.
//   variant "paper":          H = G_l + lambda_l I (the paper's equation 3);
//   variant "reference_code": H = G_l - lambda_l I (the paper's code subtracts the damping,
//                             so it converges toward (G_l - lambda_l I)^{-1} v, if at all).
// preconditioner = "ekfac" (as ASTRA does): r <- r + P (v - H r / s) with P EK-FAC's damped inverse,
// started at s P v (EK-FAC's own answer); s then bounds P H's largest eigenvalue, near 1, so the
// iteration contracts at the rate of P H's spread instead of H's.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/randperm.h>
#include <fmt/format.h>

#include <cmath>
#include <inflab/error.hpp>
#include <inflab/estimator.hpp>
#include <optional>

#include "kronecker.hpp"

namespace {

struct Fitted {
  at::Tensor gradients;
  double signed_lambda, scale;
  std::optional<inflab::EkfacPreconditioner> preconditioner;
};

class Lissa : public inflab::BlockwiseEstimator<Fitted> {
 public:
  at::Tensor inverse_product(std::size_t b, const at::Tensor& queries) override {
    const Fitted& block = state(b);
    const at::Tensor& g = block.gradients;
    const auto n = g.size(0);
    auto generator = at::detail::createCPUGenerator(static_cast<std::uint64_t>(seed_));
    const auto& preconditioner = block.preconditioner;
    at::Tensor r = preconditioner ? preconditioner->apply(queries).mul_(block.scale) : queries.clone();
    at::Tensor order;
    std::int64_t position = n;
    std::int64_t it = 0;
    for (; it < iterations_; ++it) {
      // Every check_every steps: stop once the true residual of the damped system is small.
      if (tolerance_ > 0 && it > 0 && it % check_every_ == 0 &&
          inflab::max_relative_residual(g, r.div(block.scale), queries, std::abs(block.signed_lambda)) <=
              tolerance_)
        break;
      at::Tensor hr;
      if (batch_size_ == 0 || batch_size_ >= n) {
        hr = inflab::gauss_newton_product(g, r, block.signed_lambda);
      } else {
        if (position + batch_size_ > n) order = at::randperm(n, generator, c10::kLong), position = 0;
        hr = inflab::gauss_newton_product(g.index_select(0, order.narrow(0, position, batch_size_)), r,
                                          block.signed_lambda);
        position += batch_size_;
      }
      r = preconditioner ? r.add(preconditioner->apply(queries.sub(hr.div_(block.scale))))
                         : queries.add(r).sub_(hr.div_(block.scale));
    }
    report(b, "iterations", static_cast<double>(it));
    r.div_(block.scale);
    // Residual against the damped system the paper means, (G + lambda I) r = v, whatever the variant.
    report(b, "relative_residual",
           inflab::max_relative_residual(g, r, queries, std::abs(block.signed_lambda)));
    return r;
  }
  // Mini-batches sample one rank's rows; full-batch iterations sum over all ranks.
  bool supports_distributed() const override { return batch_size_ == 0; }
  // A fixed scale (the reference code's s = 1) is an absolute number: no rescaling then.
  int preconditioner_degree() const override {
    return scale_ > 0 ? -1 : inflab::BlockwiseEstimator<Fitted>::preconditioner_degree();
  }

 protected:
  void configure_method(const inflab::Options& options) override {
    iterations_ = options.get_int("iterations");
    scale_ = options.get_double("scale");
    batch_size_ = options.get_int("batch_size");
    seed_ = options.get_int("seed");
    variant_ = options.get_string("variant");
    tolerance_ = options.get_double("tolerance");
    preconditioned_ = inflab::ekfac_preconditioned(options);
    if (variant_ != "paper" && variant_ != "reference_code")
      throw inflab::Error(fmt::format("{}: variant must be \"paper\" or \"reference_code\", found \"{}\"",
                                      options.owner(), variant_));
    if (iterations_ < 1)
      throw inflab::Error(fmt::format("{}: iterations must be >= 1, found {}", options.owner(), iterations_));
    if (scale_ < 0)
      throw inflab::Error(
          fmt::format("{}: scale must be > 0 (or 0 for automatic), found {}", options.owner(), scale_));
    if (batch_size_ < 0)
      throw inflab::Error(fmt::format("{}: batch_size must be >= 0 (0 = full batch), found {}",
                                      options.owner(), batch_size_));
  }

  Fitted fit_block(const inflab::BlockFit& fit) override {
    const double sign = variant_ == "paper" ? 1.0 : -1.0;
    std::optional<inflab::EkfacPreconditioner> preconditioner;
    if (preconditioned_) preconditioner = inflab::ekfac_preconditioner(fit.block, fit.lambda, "lissa");
    double scale = scale_;
    if (scale == 0 && preconditioner)  // automatic: 1.1 x P H's largest eigenvalue
      scale = 1.1 * largest_eigenvalue(fit.block.values, sign * fit.lambda, &*preconditioner);
    else if (scale == 0)
      scale = 1.1 * (largest_eigenvalue(fit.block.values) + fit.lambda);  // automatic: converges
    report(fit.index, "scale", scale);
    return {fit.block.values, sign * fit.lambda, scale, std::move(preconditioner)};
  }

 private:
  // Power iteration on G^T G / n, or on P (G^T G / n + lambda I) (30 steps from a fixed start).
  static double largest_eigenvalue(const at::Tensor& g, double lambda = 0,
                                   const inflab::EkfacPreconditioner* preconditioner = nullptr) {
    auto generator = at::detail::createCPUGenerator(12345);
    at::Tensor v = at::randn({1, g.size(1)}, generator, g.options());
    double estimate = 0;
    for (int k = 0; k < 30; ++k) {
      v = v.div(v.norm().clamp_min(1e-30));
      at::Tensor w = inflab::gauss_newton_product(g, v, lambda);
      if (preconditioner) w = preconditioner->apply(w);
      estimate = w.norm().item<double>();
      v = w;
    }
    return estimate;
  }

  std::int64_t iterations_ = 100, batch_size_ = 0, seed_ = 0;
  double scale_ = 0, tolerance_ = 0;
  bool preconditioned_ = false;
  static constexpr std::int64_t check_every_ = 10;
  std::string variant_ = "paper";
};

std::vector<inflab::OptionSpec> options() {
  auto specs = inflab::damping_option_specs();
  specs.push_back({"iterations", inflab::OptionType::Int, std::int64_t{100},
                   "LiSSA iterations (reference code: 10)", false, inflab::between(1, 1e9)});
  specs.push_back({"scale", inflab::OptionType::Double, 0.0,
                   "s in r <- v + (I - H/s) r; 0 = automatic (1.1 x power-iteration estimate of H's top "
                   "eigenvalue; reference code: 1)",
                   false, inflab::at_least(0)});
  specs.push_back({"batch_size", inflab::OptionType::Int, std::int64_t{0},
                   "training examples per iteration; 0 = full batch (distributed runs need 0)", false,
                   inflab::at_least(0)});
  specs.push_back({"seed", inflab::OptionType::Int, std::int64_t{0}, "mini-batch order"});
  specs.push_back({"variant", inflab::OptionType::String, std::string("paper"),
                   "paper: H = G + lambda I; reference_code: H = G - lambda I, as the paper's code does"});
  specs.push_back(
      {"tolerance", inflab::OptionType::Double, 0.0,
       "stop early once ||(G + lambda I) r - v|| <= tolerance ||v|| for every query (checked every "
       "10 iterations, one extra product each); 0 = run all iterations",
       false, inflab::at_least(0)});
  specs.push_back(inflab::preconditioner_option_spec());
  return specs;
}

}  // namespace

INFLAB_PLUGIN(Estimator, "lissa", "1.1.0",
              "LiSSA: stochastic Neumann-series iteration for (G_l + lambda_l I)^-1 v, with residual report",
              options, Lissa)
