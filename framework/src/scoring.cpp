#include "inflab/scoring.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "inflab/config.hpp"
#include "inflab/distributed.hpp"
#include "inflab/error.hpp"
#include "inflab/registry.hpp"

namespace inflab {
namespace {

// The power of two that brings a block's largest entry into [1, 2), or 0 when that entry lies in
// [2^-20, 2^20] (or the block is zero or not finite: other checks name that). One pass without
// a temporary (aminmax); over every rank's rows when `over_ranks` (a collective then).
int unit_exponent(const at::Tensor& values, bool over_ranks) {
  double largest = largest_magnitude(values);
  if (over_ranks && distributed_world_size() > 1) {  // the largest over ranks, by a sum of one-hots
    at::Tensor each = at::zeros({distributed_world_size()}, at::kDouble);
    each[distributed_rank()] = largest;
    largest = sum_over_ranks(each).max().item<double>();
  }
  if (!(largest > 0) || !std::isfinite(largest)) return 0;
  if (largest >= std::ldexp(1.0, -20) && largest <= std::ldexp(1.0, 20)) return 0;
  return -static_cast<int>(std::floor(std::log2(largest)));
}

// Training gradients g' = 2^e g and queries v'' = 2^h v of unit size (largest entry in [1, 2)); with M' =
// 2^(k e) M the estimator returns r'' = M'^-1 v'' = 2^(h - k e) M^-1 v, and the scorer multiplies g . r'' by
// 2^(k e - h) (score_exponent). Every intermediate stays near unit size; powers of two are exact.
class RescaledEstimator : public Estimator {
 public:
  explicit RescaledEstimator(std::unique_ptr<Estimator> inner) : inner_(std::move(inner)) {}

  void fit(const GradientBlocks& train) override { inner_->fit(rescaled(train)); }
  bool load_fit(const std::string& dir, const GradientBlocks& train) override {
    return inner_->load_fit(dir, rescaled(train));
  }
  bool save_fit(const std::string& dir) const override { return inner_->save_fit(dir); }
  at::Tensor inverse_product(std::size_t block, const at::Tensor& queries) override {
    const int degree = inner_->preconditioner_degree();
    const int h = degree < 0 ? 0 : unit_exponent(queries, false);
    score_exponents_.at(block) = degree < 0 ? 0 : degree * train_exponents_.at(block) - h;
    return inner_->inverse_product(block, h == 0 ? queries : queries * std::ldexp(1.0, h));
  }
  std::map<std::string, double> diagnostics() const override {
    auto out = inner_->diagnostics();
    for (std::size_t b = 0; b < train_exponents_.size(); ++b)
      if (train_exponents_[b] != 0) out[names_[b] + ".rescaled_by"] = std::ldexp(1.0, train_exponents_[b]);
    return out;
  }
  bool supports_distributed() const override { return inner_->supports_distributed(); }
  int preconditioner_degree() const override { return inner_->preconditioner_degree(); }
  int score_exponent(std::size_t block) const { return score_exponents_.at(block); }

 private:
  // The training blocks as the estimator sees them: unchanged (no copy) unless out of range.
  GradientBlocks rescaled(const GradientBlocks& train) {
    train_exponents_.assign(train.size(), 0);
    score_exponents_.assign(train.size(), 0);
    names_.clear();
    GradientBlocks out = train;
    for (std::size_t b = 0; b < train.size(); ++b) {
      names_.push_back(train[b].name);
      if (inner_->preconditioner_degree() < 0) continue;
      const int e = unit_exponent(train[b].values, true);
      if (e == 0) continue;
      train_exponents_[b] = e;
      const double f = std::ldexp(1.0, e);
      out[b].values = train[b].values * f;
      // K-FAC factors: G = S (x) A, so G' = 2^(2e) G puts 2^(2e) on S, the gradient side, where a
      // loss's scale lives (the activations keep theirs).
      if (out[b].has_factors()) out[b].gradient_covariance = train[b].gradient_covariance * (f * f);
    }
    return out;
  }

  std::unique_ptr<Estimator> inner_;
  std::vector<int> train_exponents_, score_exponents_;
  std::vector<std::string> names_;
};

}  // namespace

std::unique_ptr<Estimator> with_rescaling(std::unique_ptr<Estimator> estimator) {
  return std::make_unique<RescaledEstimator>(std::move(estimator));
}

int score_exponent(const Estimator& estimator, std::size_t block) {
  const auto* rescaled = dynamic_cast<const RescaledEstimator*>(&estimator);
  return rescaled ? rescaled->score_exponent(block) : 0;
}

ScoredBlocks score_with_estimator(const Registry& registry, const std::string& estimator_name,
                                  const std::vector<std::string>& assignments, const std::string& mode,
                                  const GradientBlocks& train, const GradientBlocks& queries) {
  if (mode != "aggregate" && mode != "pairwise")
    throw Error(fmt::format("mode: expected aggregate or pairwise, found '{}'", mode));
  const PluginRecord& record = registry.find(PluginKind::Estimator, estimator_name);
  Options options = options_from_assignments(fmt::format("estimator '{}'", estimator_name),
                                             record.info->options(), assignments);
  check_blocks(train, queries);  // before the fit, which would otherwise meet a mismatch first
  auto estimator =
      with_rescaling(registry.create_as<Estimator>(PluginKind::Estimator, estimator_name, options));
  estimator->fit(train);
  ScoredBlocks out;
  out.scores = mode == "aggregate" ? score_aggregate(*estimator, train, queries)
                                   : score_pairwise(*estimator, train, queries);
  out.diagnostics = estimator->diagnostics();
  return out;
}

}  // namespace inflab
