// Scoring with an estimator: influence = - sum over blocks of train . M^{-1} query, the blocks
// checked first, and the rescaling that keeps float32 scores of extreme gradients finite.
#include "inflab/scoring.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "inflab/config.hpp"
#include "inflab/distributed.hpp"
#include "inflab/error.hpp"
#include "inflab/registry.hpp"

namespace inflab {
namespace {

// The largest of each rank's `value` (a collective in a distributed run), by a sum of one-hots.
double max_over_ranks(double value) {
  if (distributed_world_size() <= 1) return value;
  at::Tensor each = at::zeros({distributed_world_size()}, at::kDouble);
  each[distributed_rank()] = value;
  return sum_over_ranks(each).max().item<double>();
}

// The power of two that brings a block's largest entry into [1, 2), or 0 when that entry lies in
// [2^-20, 2^20] (or the block is zero or not finite: other checks name that). One pass without
// a temporary (aminmax); over every rank's rows when `over_ranks` (a collective then).
int unit_exponent(const at::Tensor& values, bool over_ranks) {
  double largest = largest_magnitude(values);
  if (over_ranks) largest = max_over_ranks(largest);
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
  bool over_checkpoints() const override { return inner_->over_checkpoints(); }
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
                                  const GradientBlocks& train, const GradientBlocks& queries,
                                  const std::string& normalise) {
  if (mode != "aggregate" && mode != "pairwise")
    throw Error(fmt::format("mode: expected aggregate or pairwise, found '{}'", mode));
  const Normalisation normalisation = normalisation_from(normalise, "normalise");
  const PluginRecord& record = registry.find(PluginKind::Estimator, estimator_name);
  Options options = options_from_assignments(fmt::format("estimator '{}'", estimator_name),
                                             record.info->options(), assignments);
  check_blocks(train, queries);  // before the fit, which would otherwise meet a mismatch first
  auto estimator =
      with_rescaling(registry.create_as<Estimator>(PluginKind::Estimator, estimator_name, options));
  refuse_over_checkpoints(*estimator, estimator_name, "a gradient directory");
  estimator->fit(train);
  ScoredBlocks out;
  out.scores = score_normalised(*estimator, train, queries, mode == "aggregate", normalisation);
  out.diagnostics = estimator->diagnostics();
  return out;
}

namespace {
std::string shape_text(const at::Tensor& t) {
  std::string text = "(";
  for (std::int64_t k = 0; k < t.dim(); ++k) text += (k ? ", " : "") + std::to_string(t.size(k));
  return text + (t.dim() == 1 ? ",)" : ")");
}
}  // namespace

void check_blocks(const GradientBlocks& train, const GradientBlocks& queries) {
  if (train.empty()) throw Error("no gradient blocks to score");
  // An empty set is named as such (its mean gradient would otherwise surface as "not finite").
  if (queries.empty() || queries[0].values.dim() != 2 || queries[0].values.size(0) == 0)
    throw Error(fmt::format("the query set is empty (block '{}' has 0 query rows): nothing to score against",
                            queries.empty() ? train[0].name : queries[0].name));
  if (train[0].values.dim() != 2 || train[0].values.size(0) == 0)
    throw Error(fmt::format("the training set is empty (block '{}' has 0 training rows): nothing to score",
                            train[0].name));
  if (train.size() != queries.size())
    throw Error(fmt::format("{} training gradient blocks but {} query blocks", train.size(), queries.size()));
  for (std::size_t b = 0; b < train.size(); ++b)
    for (std::size_t c = 0; c < b; ++c)
      if (train[b].name == train[c].name)
        throw Error(
            fmt::format("block '{}' is given twice (blocks {} and {}): each block once, or its "
                        "influence is counted twice",
                        train[b].name, c, b));
  for (std::size_t b = 0; b < train.size(); ++b) {
    for (const auto* side : {&train, &queries})
      if ((*side)[b].values.dim() == 2 && (*side)[b].values.size(0) != (*side)[0].values.size(0))
        throw Error(
            fmt::format("block '{}' has {} {} rows but block '{}' has {}: every block needs one row per "
                        "example",
                        (*side)[b].name, (*side)[b].values.size(0), side == &train ? "training" : "query",
                        (*side)[0].name, (*side)[0].values.size(0)));
    if (train[b].name != queries[b].name)
      throw Error(fmt::format("block {} is '{}' for training but '{}' for queries", b, train[b].name,
                              queries[b].name));
    if (train[b].values.dim() != 2 || queries[b].values.dim() != 2 ||
        train[b].values.size(1) != queries[b].values.size(1))
      throw Error(
          fmt::format("block '{}': training and query gradients must be 2-D with equal widths, found "
                      "training {} and query {}",
                      train[b].name, shape_text(train[b].values), shape_text(queries[b].values)));
  }
}

double largest_magnitude(const at::Tensor& values) {
  if (values.numel() == 0) return 0;
  const auto [low, high] = at::aminmax(values);
  return std::max(std::abs(low.item<double>()), std::abs(high.item<double>()));
}

namespace {
bool gradients_not_finite(const GradientBlock& train, const GradientBlock& queries) {
  return nonfinite_rows(train.values).count > 0 || nonfinite_rows(queries.values).count > 0;
}
[[noreturn]] void throw_not_finite(const std::string& block) {
  throw Error(fmt::format(
      "block '{}': the gradients themselves are not finite (NaN or Inf); scores would be NaN", block));
}
[[noreturn]] void throw_underflow(const std::string& what) {
  throw Error(
      fmt::format("{}: float32 underflowed (gradients of extreme scale with a fixed damping or LiSSA "
                  "scale); rescale the gradients or use the automatic settings",
                  what));
}
}  // namespace

at::Tensor score_pairwise(Estimator& estimator, const GradientBlocks& train, const GradientBlocks& queries) {
  check_blocks(train, queries);
  const auto n = train.at(0).values.size(0), q = queries.at(0).values.size(0);
  at::Tensor scores = at::zeros({n, q}, train[0].values.options());
  for (std::size_t b = 0; b < train.size(); ++b) {
    at::Tensor preconditioned = estimator.inverse_product(b, queries[b].values);
    if (preconditioned.dim() != 2 || preconditioned.size(0) != q ||
        preconditioned.size(1) != train[b].values.size(1))
      throw Error(fmt::format(
          "block '{}': the estimator returned a {}-d tensor of shape [{}], expected {} x {}", train[b].name,
          preconditioned.dim(), fmt::join(preconditioned.sizes(), ", "), q, train[b].values.size(1)));
    // Never a silent NaN score: say which block went wrong and what usually causes it.
    if (!preconditioned.isfinite().all().item<bool>())
      throw Error(fmt::format(
          "block '{}': the estimator's inverse product has NaN or Inf values ({}); check the gradients for "
          "NaN/Inf and the damping (a fixed damping of 0 or a divergent iteration)",
          train[b].name,
          gradients_not_finite(train[b], queries[b]) ? "the gradients themselves are not finite"
                                                     : "the gradients are finite"));
    // Never a silent zero either: an inverse product of exactly zero for non-zero queries has
    // underflowed (an estimator without rescaling, on gradients of extreme scale).
    if (largest_magnitude(preconditioned) == 0 && largest_magnitude(queries[b].values) > 0) {
      if (gradients_not_finite(train[b], queries[b])) throw_not_finite(train[b].name);
      throw_underflow(fmt::format(
          "block '{}': the estimator's inverse product is exactly zero for non-zero queries", train[b].name));
    }
    if (const int exponent = score_exponent(estimator, b); exponent == 0 && q > 1) {
      scores.addmm_(train[b].values, preconditioned.t());
    } else {  // one query, or a rescaled block (with_rescaling): 2^exponent in steps float32 can hold
      at::Tensor contribution = matrix_product(train[b].values, preconditioned.t());
      for (int left = exponent; left != 0;) {
        const int step = std::clamp(left, -100, 100);
        contribution.mul_(std::ldexp(1.0, step));
        left -= step;
      }
      scores.add_(contribution);
    }
  }
  // The scores are small (n x q): check them all, and only on failure look for the culprit.
  if (!scores.isfinite().all().item<bool>()) {
    for (std::size_t b = 0; b < train.size(); ++b)
      if (gradients_not_finite(train[b], queries[b])) throw_not_finite(train[b].name);
    throw Error("the influence scores overflowed to Inf or NaN; check the damping and the gradients' scale");
  }
  // All zero while some block's gradients are not: the products underflowed.
  if (largest_magnitude(scores) == 0)
    for (std::size_t b = 0; b < train.size(); ++b)
      if (largest_magnitude(train[b].values) > 0 && largest_magnitude(queries[b].values) > 0)
        throw_underflow(
            fmt::format("every influence score is exactly zero although block '{}' has non-zero "
                        "gradients",
                        train[b].name));
  return scores.neg_();  // I(k, q) = - g_k . M^{-1} v_q
}

at::Tensor score_aggregate(Estimator& estimator, const GradientBlocks& train, const GradientBlocks& queries) {
  check_blocks(train, queries);  // before the mean: an empty query set has none
  GradientBlocks mean = queries;
  for (auto& block : mean) block.values = block.values.mean(0, /*keepdim=*/true);
  return score_pairwise(estimator, train, mean).squeeze(1);
}

void refuse_over_checkpoints(const Estimator& estimator, const std::string& name, const std::string& what) {
  if (estimator.over_checkpoints())
    throw Error(fmt::format(
        "estimator '{}' is scored over a fine-tuning's checkpoints, and {} holds the gradients of one "
        "adapter: run it in an experiment with a [checkpoints] section, or use hessian_free (its form at "
        "one checkpoint)",
        name, what));
}

Normalisation normalisation_from(const std::string& value, const std::string& who) {
  if (value == "none") return Normalisation::None;
  if (value == "unit") return Normalisation::Unit;
  if (value == "relatif") return Normalisation::Relatif;
  throw Error(fmt::format("{}: expected \"none\", \"unit\" or \"relatif\", found \"{}\"", who, value));
}

at::Tensor row_norms(const GradientBlocks& blocks) {
  at::Tensor sum = at::zeros({blocks.at(0).values.size(0)}, at::kDouble);
  for (const auto& block : blocks) sum.add_(squared_row_norms(block.values).to(at::kDouble));
  return sum.sqrt_();
}

at::Tensor reciprocal_or_zero(const at::Tensor& x) {
  return at::where(x.gt(0), x.reciprocal(), at::zeros_like(x));
}

at::Tensor self_influence(Estimator& estimator, const GradientBlocks& train, std::int64_t chunk_rows) {
  const auto n = train.at(0).values.size(0);
  // In a distributed run each rank holds a shard of the rows, and inverse_product may sum over
  // every rank's rows (DataInf, LiSSA, CG), so it needs the same input on every rank: each chunk
  // of every rank's rows is gathered, every rank multiplies all of them, and keeps its own.
  const int world_size = distributed_world_size();
  const auto longest = static_cast<std::int64_t>(max_over_ranks(static_cast<double>(n)));
  at::Tensor out = at::zeros({n}, at::kDouble);
  for (std::int64_t start = 0; start < longest; start += chunk_rows) {
    const auto rows = std::clamp<std::int64_t>(n - start, 0, chunk_rows);
    std::int64_t offset = 0;  // of this rank's rows among the gathered ones
    if (world_size > 1) {
      const at::Tensor counts = gather_rows_over_ranks(at::full({1}, rows, at::kLong));
      offset = counts.narrow(0, 0, distributed_rank()).sum().item<std::int64_t>();
    }
    for (std::size_t b = 0; b < train.size(); ++b) {
      const at::Tensor g = train[b].values.narrow(0, std::min(start, n), rows);
      const at::Tensor all = world_size > 1 ? gather_rows_over_ranks(g) : g;
      const at::Tensor products = estimator.inverse_product(b, all.contiguous()).narrow(0, offset, rows);
      if (rows == 0) continue;  // this rank's rows ended before the longest shard's
      out.narrow(0, start, rows)
          .add_(g.to(at::kDouble)
                    .mul(products.to(at::kDouble))
                    .sum(1)
                    .mul(std::ldexp(1.0, score_exponent(estimator, b))));
    }
  }
  return out;
}

at::Tensor relatif_divisors(const at::Tensor& self_influence) {
  // A preconditioner that is not positive definite (LiSSA's reference_code variant) can give a
  // self-influence < 0: its square root is undefined, so the score is set to 0 and counted. (A
  // zero gradient has self-influence 0 and scores 0 anyway.)
  const auto bad = static_cast<std::int64_t>(sum_over_ranks(self_influence.lt(0).sum().item<double>()));
  if (bad > 0 && distributed_rank() == 0)
    std::fprintf(stderr,
                 "[inflab] warning: normalise = \"relatif\": %lld training examples have a negative "
                 "self-influence (the preconditioner is not positive definite for them); their scores "
                 "are set to 0\n",
                 static_cast<long long>(bad));
  return self_influence.clamp_min(0).sqrt();
}

at::Tensor score_normalised(Estimator& estimator, const GradientBlocks& train, const GradientBlocks& queries,
                            bool aggregate, Normalisation normalisation) {
  auto score = [&](const GradientBlocks& q) {
    return aggregate ? score_aggregate(estimator, train, q) : score_pairwise(estimator, train, q);
  };
  if (normalisation == Normalisation::None) return score(queries);
  at::Tensor divisor;  // per training row
  at::Tensor scores;
  if (normalisation == Normalisation::Unit) {
    check_blocks(train, queries);
    GradientBlocks unit = queries;
    const at::Tensor query_scale = reciprocal_or_zero(row_norms(queries)).to(at::kFloat).unsqueeze(1);
    for (auto& block : unit) block.values = block.values.mul(query_scale);
    scores = score(unit);
    divisor = row_norms(train);
  } else {
    scores = score(queries);
    divisor = relatif_divisors(self_influence(estimator, train));
  }
  at::Tensor scale = reciprocal_or_zero(divisor).to(scores.scalar_type());
  return aggregate ? scores.mul(scale) : scores.mul(scale.unsqueeze(1));
}

}  // namespace inflab
