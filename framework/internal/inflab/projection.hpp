// Random projection of per-example gradients ([projection] in an experiment; docs/experiments.md):
// each block's gradients are multiplied by a seeded random matrix inside the gradient engine, so a
// store keeps k values per example and block instead of d. Every estimator then runs unchanged on
// the projected gradients (Exact on them is TRAK's estimator).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

namespace inflab {

struct Projection {
  // gaussian: d x k with N(0, 1/k) entries. sparse: Achlioptas's sqrt(3/k) x {+1, 0, -1} with
  // probabilities 1/6, 2/3, 1/6. factorised (LoGra, LoRA blocks): the block's wide side alone (a
  // LoRA A's input, a LoRA B's output) is projected to k / rank with a Gaussian matrix, the rank side
  // kept, so the engine projects activations and output gradients and never forms the full gradient.
  enum class Kind { none, gaussian, sparse, factorised };
  Kind kind = Kind::none;
  std::int64_t dim = 0;  // values per block after projection
  std::uint64_t seed = 0;
  bool active() const { return kind != Kind::none; }
  // "gaussian dim 1024 seed 0"; "" when inactive. Recorded in the store's blocks.json.
  std::string describe() const;
};

// A LoRA layer's two blocks after projection: A (rank x in, `parts` times side by side) and B
// (out x rank). Dense kinds project a block wider than `dim` as a whole (dense_a / dense_b); the
// factorised kind projects A's input side and B's output side to dim / rank when wider (side_in,
// side_out are those sides' widths after it). A block or side no wider than the target is kept.
struct ProjectedLayer {
  std::int64_t width_a = 0, width_b = 0, side_in = 0, side_out = 0;
  bool dense_a = false, dense_b = false;
};
ProjectedLayer projected_layer(const Projection& projection, std::int64_t in, std::int64_t rank,
                               std::int64_t out, std::int64_t parts);

// "none" | "gaussian" | "sparse" | "factorised"; anything else is an Error listing them.
Projection::Kind projection_kind(const std::string& name);

// The seeded rows x cols matrix (float32) of one block or block side: a function of (kind, seed,
// block, rows, cols) alone, drawn with a counter-based generator in double precision, so train and
// query gradients, every rank and every machine get the same matrix. The factorised kind's side
// matrices are Gaussian. `cols` is the projected width.
at::Tensor projection_matrix(const Projection& projection, const std::string& block, std::int64_t rows,
                             std::int64_t cols);

}  // namespace inflab
