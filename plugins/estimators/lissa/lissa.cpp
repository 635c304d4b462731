// LiSSA (Agarwal et al. 2017) per block: r <- v + (I - H/s) r, which converges to s H^{-1} v
// when s exceeds H's largest eigenvalue; the result is r / s.
//   variant "paper":          H = G_l + lambda_l I (the paper's equation 3);
//   variant "reference_code": H = G_l - lambda_l I (the paper's code subtracts the damping,
//                             so it converges toward (G_l - lambda_l I)^{-1} v, if at all).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/randperm.h>
#include <fmt/format.h>

#include <cmath>
#include <inflab/error.hpp>
#include <inflab/estimator.hpp>

namespace {

class Lissa : public inflab::Estimator {
 public:
  void configure(const inflab::Options& options) override {
    damping_ = inflab::damping_from(options);
    iterations_ = options.get_int("iterations");
    scale_ = options.get_double("scale");
    batch_size_ = options.get_int("batch_size");
    seed_ = options.get_int("seed");
    variant_ = options.get_string("variant");
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

  void fit(const inflab::GradientBlocks& train) override {
    blocks_.clear();
    for (const auto& block : train) {
      const double lambda = damping_.for_block(block.values);
      const double sign = variant_ == "paper" ? 1.0 : -1.0;
      double scale = scale_;
      if (scale == 0) scale = 1.1 * (largest_eigenvalue(block.values) + lambda);  // automatic: converges
      blocks_.push_back({block.values, sign * lambda, scale, block.name});
      diagnostics_[block.name + ".lambda"] = lambda;
      diagnostics_[block.name + ".scale"] = scale;
    }
  }

  at::Tensor inverse_product(std::size_t b, const at::Tensor& queries) override {
    const Block& block = blocks_.at(b);
    const at::Tensor& g = block.gradients;
    const auto n = g.size(0);
    auto generator = at::detail::createCPUGenerator(static_cast<std::uint64_t>(seed_));
    at::Tensor r = queries.clone();
    at::Tensor order;
    std::int64_t position = n;
    for (std::int64_t it = 0; it < iterations_; ++it) {
      at::Tensor hr;
      if (batch_size_ == 0 || batch_size_ >= n) {
        hr = apply(g, r, block.signed_lambda);
      } else {
        if (position + batch_size_ > n) order = at::randperm(n, generator, c10::kLong), position = 0;
        hr = apply(g.index_select(0, order.narrow(0, position, batch_size_)), r, block.signed_lambda);
        position += batch_size_;
      }
      r = queries.add(r).sub_(hr.div_(block.scale));
    }
    r.div_(block.scale);
    // Residual against the damped system the paper means, (G + lambda I) r = v, whatever the variant.
    at::Tensor residual = apply(g, r, std::abs(block.signed_lambda)).sub_(queries);
    at::Tensor ratios = residual.norm(2, {1}).div(queries.norm(2, {1}).clamp_min(1e-30));
    double relative = ratios.max().item().toDouble();
    diagnostics_[block.name + ".relative_residual"] = relative;
    return r;
  }

  std::map<std::string, double> diagnostics() const override { return diagnostics_; }
  // Mini-batches sample one rank's rows; full-batch iterations sum over all ranks.
  bool supports_distributed() const override { return batch_size_ == 0; }

 private:
  struct Block {
    at::Tensor gradients;
    double signed_lambda, scale;
    std::string name;
  };
  // (G^T G / m + lambda I) applied to every row of r.
  static at::Tensor apply(const at::Tensor& g, const at::Tensor& r, double lambda) {
    return inflab::gauss_newton_product(g, r, lambda);
  }
  static double largest_eigenvalue(const at::Tensor& g) {
    auto generator = at::detail::createCPUGenerator(12345);
    at::Tensor v = at::randn({1, g.size(1)}, generator, g.options());
    double estimate = 0;
    for (int k = 0; k < 30; ++k) {
      v = v.div(v.norm().clamp_min(1e-30));
      at::Tensor w = apply(g, v, 0.0);
      estimate = w.norm().item<double>();
      v = w;
    }
    return estimate;
  }

  inflab::Damping damping_;
  std::int64_t iterations_ = 100, batch_size_ = 0, seed_ = 0;
  double scale_ = 0;
  std::string variant_ = "paper";
  std::vector<Block> blocks_;
  std::map<std::string, double> diagnostics_;
};

std::vector<inflab::OptionSpec> options() {
  auto specs = inflab::damping_option_specs();
  specs.push_back(
      {"iterations", inflab::OptionType::Int, std::int64_t{100}, "LiSSA iterations (reference code: 10)"});
  specs.push_back({"scale", inflab::OptionType::Double, 0.0,
                   "s in r <- v + (I - H/s) r; 0 = automatic (1.1 x power-iteration estimate of H's top "
                   "eigenvalue; reference code: 1)"});
  specs.push_back({"batch_size", inflab::OptionType::Int, std::int64_t{0},
                   "training examples per iteration; 0 = full batch (distributed runs need 0)"});
  specs.push_back({"seed", inflab::OptionType::Int, std::int64_t{0}, "mini-batch order"});
  specs.push_back({"variant", inflab::OptionType::String, std::string("paper"),
                   "paper: H = G + lambda I; reference_code: H = G - lambda I, as the paper's code does"});
  return specs;
}

}  // namespace

INFLAB_PLUGIN(Estimator, "lissa", "1.0.0",
              "LiSSA: stochastic Neumann-series iteration for (G_l + lambda_l I)^-1 v, with residual report",
              options, Lissa)
