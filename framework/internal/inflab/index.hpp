// An attribution index (`inflab index build`, `inflab explain`; docs/explain.md): a run's training
// gradients (projected when the experiment has [projection]) kept on disk with what they belong to
// (the fine-tuned adapter's and the gradients' stage keys, the projection, the resolved
// configuration and the training examples), so new queries are scored against it without running
// the experiment again, and a query against another adapter or projection is refused.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "inflab/config.hpp"
#include "inflab/gradients.hpp"
#include "inflab/run.hpp"

namespace inflab {

class Registry;

struct IndexRecord {
  std::string experiment, run, finetune_key, gradients_key, projection, dtype;
  std::int64_t examples = 0;
};

// Writes DIR (index.json, config.toml, examples.jsonl, gradients/) from the run's chain, each
// stage from the cache when it is there. dtype: "float16" (half the size; scored in float32) or
// "float32". An existing index of the same run is kept; of another run it is an error.
IndexRecord build_index(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                        const std::filesystem::path& dir, const std::string& dtype);

struct AttributionIndex {
  std::filesystem::path dir;
  IndexRecord record;
  ExperimentConfig config;
  GradientStore store;                // training rows (float32 in memory) and the run's own queries
  std::vector<std::string> examples;  // per training row, its examples.jsonl line
};
// Checks the files' checksums and that the configuration still gives the recorded stage keys.
AttributionIndex open_index(const std::filesystem::path& dir, Registry& registry);

// Queries given as prompts (a language model's run): the answers (given, or generated greedily by
// the fine-tuned model) and their gradients with the index's projection.
struct PromptGradients {
  std::vector<std::string> prompts, answers;
  GradientBlocks gradients;
};
PromptGradients prompt_gradients(const AttributionIndex& index, Registry& registry, const RunPaths& paths,
                                 const std::vector<std::string>& prompts,
                                 const std::vector<std::string>& responses, std::int64_t max_tokens);

// Queries given as images (a denoiser's run): each --condition names a condition of the run's
// dataset; without `images_file` the fine-tuned model draws one image per condition (DDIM,
// `sampling_steps`, starting noise from `seed`); with it, the file's rows are the images, under one
// condition for all or one per row. `images` are what was scored (n x one example's shape).
struct ImageGradients {
  std::vector<std::string> conditions;
  at::Tensor images;
  GradientBlocks gradients;
};
ImageGradients image_gradients(const AttributionIndex& index, Registry& registry, const RunPaths& paths,
                               const std::vector<std::string>& conditions,
                               const std::filesystem::path& images_file, std::int64_t sampling_steps,
                               std::uint64_t seed);

// The queries' gradients block by block: the index's own validation rows (checked), then `extra`
// (prompt gradients; empty: none).
GradientBlocks gather_queries(const AttributionIndex& index, const std::vector<std::int64_t>& validation_rows,
                              const GradientBlocks& extra);

// Per query (column of scores, n x q): the k most helpful training rows (most negative scores:
// up-weighting them lowers the query's loss) and the k most harmful (most positive).
struct RankedRow {
  std::int64_t row = 0;
  double score = 0;
};
struct QueryRanking {
  std::vector<RankedRow> helpful, harmful;
};
std::vector<QueryRanking> rank_training_rows(const at::Tensor& scores, std::int64_t k);

}  // namespace inflab
