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
// Normalised influence, an option of every estimator ([[estimator]] normalise, `inflab score
// --normalise`), because raw scores are dominated by the gradients' size (docs/estimators.md):
//   unit:    I(k, q) / (||g_k|| ||v_q||), norms over all blocks (a cosine in the preconditioner's
//            bilinear form); aggregate mode scores against the mean of the unit-norm queries;
//   relatif: I(k, q) / sqrt(g_k . M^{-1} g_k), RelatIF's l-relative influence (Barshan et al. 2020):
//            the score divided by the square root of the training example's self-influence.
enum class Normalisation { None, Unit, Relatif };
// "none" | "unit" | "relatif"; throws naming `who` and the value otherwise.
Normalisation normalisation_from(const std::string& value, const std::string& who);
// score_aggregate (aggregate) or score_pairwise (pairwise) with the normalisation applied.
at::Tensor score_normalised(Estimator& estimator, const GradientBlocks& train, const GradientBlocks& queries,
                            bool aggregate, Normalisation normalisation);
// Throws, naming the estimator and `what` ("a gradient directory", "the index"), when the
// estimator is scored over checkpoints (TracIn) and only one set of gradients is at hand.
void refuse_over_checkpoints(const Estimator& estimator, const std::string& name, const std::string& what);
// ||row|| over every block's columns, per row (float64): the norms unit normalisation divides by.
at::Tensor row_norms(const GradientBlocks& blocks);
// 1 / x, and 0 where x is 0: a zero gradient scores 0 instead of NaN.
at::Tensor reciprocal_or_zero(const at::Tensor& x);
// g_k . M^{-1} g_k summed over blocks, per training row (in chunks of rows): RelatIF's denominator.
at::Tensor self_influence(Estimator& estimator, const GradientBlocks& train, std::int64_t chunk_rows = 1024);
// RelatIF's divisor per training row, sqrt(self-influence), with a warning counting the rows whose
// self-influence is negative (a preconditioner not positive definite for them): their divisor is 0,
// so they score 0.
at::Tensor relatif_divisors(const at::Tensor& self_influence);
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
                                  const GradientBlocks& train, const GradientBlocks& queries,
                                  const std::string& normalise = "none");

}  // namespace inflab
