// Per-example gradients and the on-disk gradient store:
//   DIR/train/<block>.npy (n x d_l), DIR/query/<block>.npy (q x d_l), DIR/blocks.json.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "inflab/dataset.hpp"
#include "inflab/estimator.hpp"
#include "inflab/model.hpp"

namespace inflab {

struct ExampleMeta {
  std::vector<std::int64_t> ids, labels, observed_labels;  // observed = after label noise
  std::vector<std::uint8_t> flipped;
};

struct GradientStore {
  GradientBlocks train, query;
  ExampleMeta train_meta, query_meta;
};

// Gradients of each example's own loss with respect to every LoRA A and B tensor, from one
// batched forward/backward per batch (no per-example backward). Dropout is off.
// With `factors`, the same pass accumulates each block's Kronecker factors (K-FAC statistics).
GradientBlocks per_example_gradients(Model& model, const at::Tensor& inputs,
                                     const at::Tensor& labels, std::int64_t batch_size,
                                     const std::string& progress_label = "", bool factors = false);

void save_gradient_store(const std::filesystem::path& dir, const GradientStore& store);
// Reads a store written by inflab or by anyone following docs/gradient-store.md.
GradientStore load_gradient_store(const std::filesystem::path& dir);

}  // namespace inflab
