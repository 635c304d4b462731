// Turns an estimator's per-block inverse products into influence scores.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "inflab/estimator.hpp"

namespace inflab {

class Registry;

// n_train x n_query: I(k, q) = - sum_l g_kl . (M_l^{-1} v_ql)
at::Tensor score_pairwise(Estimator& estimator, const GradientBlocks& train, const GradientBlocks& queries);
// n_train: the query is the mean query gradient (equals the pairwise mean, by linearity).
at::Tensor score_aggregate(Estimator& estimator, const GradientBlocks& train, const GradientBlocks& queries);
// Checks that train and query blocks agree in names and widths; throws naming the block.
void check_blocks(const GradientBlocks& train, const GradientBlocks& queries);

// `estimator` behind a guard against float32 underflow and overflow: a block whose training
// gradients (or queries) have their largest entry outside [2^-20, 2^20] is multiplied by the power
// of two that brings it into [1, 2), and the scorer undoes that exactly on the block's contribution
// (by the estimator's preconditioner_degree; estimators without one are left alone). Inside that
// range nothing changes, to the bit. Diagnostics gain "<block>.rescaled_by" (the factor) for such
// blocks; their other entries (lambda, scale) are those of the rescaled block.
std::unique_ptr<Estimator> with_rescaling(std::unique_ptr<Estimator> estimator);
// The power of two by which the scorer multiplies a block's contribution g . r after the last
// inverse_product of that block (0 unless `estimator` came from with_rescaling and rescaled it).
int score_exponent(const Estimator& estimator, std::size_t block);
// max |x| over a tensor in one pass without a temporary (aminmax); 0 for an empty one.
double largest_magnitude(const at::Tensor& values);

// One estimator plugin, configured from "key=value" assignments, fitted on `train` and scoring
// `queries`: what `inflab score` and Python's inflab.score both do. mode: aggregate | pairwise.
struct ScoredBlocks {
  at::Tensor scores;  // aggregate: n; pairwise: n x q (float32)
  std::map<std::string, double> diagnostics;
};
ScoredBlocks score_with_estimator(const Registry& registry, const std::string& estimator,
                                  const std::vector<std::string>& assignments, const std::string& mode,
                                  const GradientBlocks& train, const GradientBlocks& queries);

}  // namespace inflab
