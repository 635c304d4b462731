// Turns an estimator's per-block inverse products into influence scores.
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
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
