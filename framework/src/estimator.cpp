// The damping rule and the helpers every estimator shares (scoring is in scoring.cpp).
#include "inflab/estimator.hpp"

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

}  // namespace inflab
