// Per-example gradients and the on-disk gradient store:
//   DIR/train/<block>.npy (n x d_l), DIR/query/<block>.npy (q x d_l), DIR/blocks.json.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "inflab/dataset.hpp"
#include "inflab/estimator.hpp"
#include "inflab/model.hpp"
#include "inflab/projection.hpp"
#include "inflab/task.hpp"

namespace inflab {

struct ExampleMeta {
  std::vector<std::int64_t> ids, labels, observed_labels;  // observed = after label noise
  std::vector<std::uint8_t> flipped;
};

struct GradientStore {
  GradientBlocks train, query;
  ExampleMeta train_meta, query_meta;
  // What was measured of the fine-tuned model the gradients come from (e.g. test_accuracy of a
  // language model's greedy answers); kept in blocks.json and reported in metrics.csv as "model".
  std::map<std::string, double> model_metrics;
  // Projection::describe() of the projection the gradients went through ("" = full gradients).
  std::string projection;
};

// Gradients of each example's own loss with respect to every LoRA A and B tensor, from one
// batched forward/backward per batch (no per-example backward). Dropout is off.
// Where a block's n x d gradients go: memory by default; the pipeline passes a memory-mapped
// file when the store exceeds its memory budget (and may choose a 16-bit dtype).
using BlockAllocator =
    std::function<at::Tensor(const std::string& block, std::int64_t rows, std::int64_t cols)>;

// With `factors`, the same pass accumulates each block's Kronecker factors (K-FAC statistics).
// Each example's loss is the task's: `measure` takes the gradients of task.measurement (queries)
// instead of task.summed_loss (training examples). With an active `projection` each block holds
// its projected gradients (inflab/projection.hpp); a block no wider than the projection is kept
// whole. A dense projection leaves a projected block without Kronecker factors; the factorised
// one projects the factors' wide side with the same matrix.
struct GradientRequest {
  std::int64_t batch_size = 64;
  std::string progress_label;
  bool factors = false;
  bool measure = false;
  BlockAllocator allocate;
  Projection projection;
};
GradientBlocks per_example_gradients(Model& model, const Task& task, const Batch& examples,
                                     const GradientRequest& request);
// Classification (cross-entropy of class logits), the examples numbered 0..n-1.
GradientBlocks per_example_gradients(Model& model, const at::Tensor& inputs, const at::Tensor& labels,
                                     std::int64_t batch_size, const std::string& progress_label = "",
                                     bool factors = false, const BlockAllocator& allocate = {});

// `train_values_written`: the train/<block>.npy files already hold the values (memory-mapped).
void save_gradient_store(const std::filesystem::path& dir, const GradientStore& store,
                         bool train_values_written = false);
// Gradients from outside (a file, a NumPy array): 2-D, floating point (converted to contiguous
// float32 unless they already are, which costs no copy) and finite; errors name `where`.
at::Tensor checked_gradient_values(const at::Tensor& values, const std::string& where);
// Reads a store written by inflab or by anyone following docs/gradient-store.md.
GradientStore load_gradient_store(const std::filesystem::path& dir);
// The same store as one safetensors file: tensors "train/<block>", "query/<block>" and, where
// present, "factors/<block>.activation" and "factors/<block>.gradient"; labels as int64 tensors.
void save_gradient_store_safetensors(const std::filesystem::path& file, const GradientStore& store);

// Distributed runs: each rank's store holds a shard of the training rows. These make what is
// global global: Kronecker factors weighted by each shard's tokens and examples, and the
// example metadata of all shards in rank order (collectives: every rank must call them).
void combine_factors_over_ranks(GradientBlocks& train);
void gather_meta_over_ranks(ExampleMeta& meta);

// Keeps the blocks whose names match any of the glob patterns (`*`, `?`), in both splits.
// A pattern that matches no block is an error listing the block names (it is most likely a typo).
void select_blocks(GradientStore& store, const std::vector<std::string>& patterns);

}  // namespace inflab
