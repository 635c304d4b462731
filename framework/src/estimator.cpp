// Damping rule and scoring: the parts every estimator shares.
#include "inflab/estimator.hpp"

#include <ATen/ops/aminmax.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/zeros.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <malloc.h>

#include <algorithm>
#include <cmath>

#include "inflab/distributed.hpp"
#include "inflab/error.hpp"
#include "inflab/scoring.hpp"

namespace inflab {

double Damping::for_block(const at::Tensor& gradients, const std::string& block) const {
  if (fixed > 0) return fixed;
  // Row norms are a reduction (no n x d temporary).
  return for_norms(squared_row_norms(gradients), gradients.size(1), block);
}

double Damping::for_norms(const at::Tensor& squared_norms, std::int64_t dim, const std::string& block) const {
  if (fixed > 0) return fixed;
  // scale * (1 / (n d)) * sum_i ||g_i||^2: the mean squared gradient entry, times the scale.
  // Sums over every rank's training rows in a distributed run.
  double mean_square =
      sum_over_ranks(squared_norms.to(c10::kDouble).sum().item<double>()) /
      (static_cast<double>(rows_over_ranks(squared_norms.numel())) * static_cast<double>(dim));
  double lambda = scale * mean_square;
  if (lambda == 0)
    throw Error(fmt::format(
        "block '{}': every training gradient is zero, so the damping rule has no scale (a LoRA A block "
        "whose B is still zero: fine-tune first; or a layer the loss does not reach): leave the block out "
        "(evaluation.blocks, --blocks) or set a fixed damping > 0",
        block.empty() ? "?" : block));
  if (!(lambda > 0))
    throw Error(fmt::format("block '{}': the damping rule gave lambda = {} (non-finite gradients?)",
                            block.empty() ? "?" : block, lambda));
  return lambda;
}

double max_relative_residual(const at::Tensor& gradients, const at::Tensor& r, const at::Tensor& v,
                             double lambda) {
  at::Tensor residual = gauss_newton_product(gradients, r, lambda).sub_(v);
  return residual.norm(2, {1}).div(v.norm(2, {1}).clamp_min(1e-30)).max().item<double>();
}

void return_freed_memory() { ::malloc_trim(0); }

at::Tensor matrix_product(const at::Tensor& a, const at::Tensor& b) {
  if (a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0)) {
    if (a.size(0) == 1) return b.t().mv(a[0]).unsqueeze(0);
    if (b.size(1) == 1) return a.mv(b.select(1, 0)).unsqueeze(1);
  }
  return a.mm(b);  // and its shape errors
}

at::Tensor squared_row_norms(const at::Tensor& gradients) {
  return at::linalg_vector_norm(gradients, 2, {1}).square_();
}

at::Tensor gram_of_columns_float64(const at::Tensor& gradients) {
  const std::int64_t rows = gradients.size(0), width = gradients.size(1);
  at::Tensor gram = at::zeros({width, width}, gradients.options().dtype(c10::kDouble));
  const std::int64_t chunk =
      std::max<std::int64_t>(1, (std::int64_t{1} << 21) / std::max<std::int64_t>(1, width));
  for (std::int64_t start = 0; start < rows; start += chunk) {
    at::Tensor part = gradients.narrow(0, start, std::min(chunk, rows - start)).to(c10::kDouble);
    gram.addmm_(part.t(), part);
  }
  return sum_over_ranks(gram);
}

at::Tensor gauss_newton_product(const at::Tensor& gradients, const at::Tensor& r, double lambda) {
  at::Tensor product = matrix_product(matrix_product(r, gradients.t()), gradients).contiguous();
  sum_over_ranks(product);
  return product.div_(static_cast<double>(rows_over_ranks(gradients.size(0)))).add_(r, lambda);
}

NonFiniteRows nonfinite_rows(const at::Tensor& gradients) {
  NonFiniteRows out;
  const std::int64_t rows = gradients.size(0),
                     width = std::max<std::int64_t>(1, gradients.numel() / std::max<std::int64_t>(1, rows));
  const std::int64_t chunk =
      std::max<std::int64_t>(1, (std::int64_t{1} << 22) / width);  // ~16 MiB of float32
  for (std::int64_t start = 0; start < rows; start += chunk) {
    at::Tensor part = gradients.narrow(0, start, std::min(chunk, rows - start));
    // One read without a temporary: a NaN or Inf anywhere makes the sum NaN or Inf. A finite sum
    // clears the chunk; a non-finite one (or an overflowing sum of finite values) is checked row by row.
    if (std::isfinite(part.sum().item<double>())) continue;
    at::Tensor bad = part.isfinite().reshape({part.size(0), -1}).all(1).logical_not().nonzero();
    if (bad.numel() == 0) continue;
    if (out.first < 0) out.first = start + bad[0][0].item<std::int64_t>();
    out.count += bad.size(0);
  }
  return out;
}

std::vector<OptionSpec> damping_option_specs() {
  return {
      {"damping_scale", OptionType::Double, 0.1,
       "lambda_l = damping_scale * mean squared gradient entry of block l (paper: 0.1)", false,
       greater_than(0)},
      {"damping", OptionType::Double, 0.0, "a fixed lambda for every block (> 0 overrides the rule)", false,
       at_least(0)},
  };
}

Damping damping_from(const Options& options) {
  Damping d;
  d.scale = options.get_double("damping_scale");
  d.fixed = options.get_double("damping");
  if (d.scale <= 0)
    throw Error(fmt::format("{}: damping_scale must be > 0, found {}", options.owner(), d.scale));
  if (d.fixed < 0)
    throw Error(
        fmt::format("{}: damping must be > 0 (or 0 for the rule), found {}", options.owner(), d.fixed));
  return d;
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

}  // namespace inflab
