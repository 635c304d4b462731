// An attribution index (`inflab index build`, `inflab explain`; docs/explain.md): a run's training
// gradients (projected when the experiment has [projection]) kept on disk with what they belong to
// (the fine-tuned adapter's and the gradients' stage keys, the projection, the resolved
// configuration and the training examples), so new queries are scored against it without running
// the experiment again, and a query against another adapter or projection is refused.
//
// Layout (version 2): index.json, config.toml, examples.jsonl, meta.json (the examples' ids and
// labels), queries/<block>.npy (the run's own validation rows, float32), shards/NNNNN/<block>.npy
// (the training rows in float16, bfloat16 (raw bits as int16) or float32; one shard per rank of
// the build), factors/<block>.{activation,gradient}.npy (K-FAC's), fits/<estimator>/<block>.npy (an
// estimator's preconditioner as a d x d matrix, fitted once at build time), fits/<estimator>/
// self_influence.npy (with --self-influence: g_k . M^-1 g_k of every stored row, float64), CHECKSUMS. Queries
// are scored by one streamed pass over the shards, in chunks of rows, keeping only each query's top k: memory
// is bounded by the page cache, not the index.
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

// An estimator's fitted state kept with the index: its preconditioner per block.
struct IndexFit {
  std::string estimator, version;
  std::vector<std::string> options;  // the --set assignments it was fitted with (none: defaults)
  bool self_influence = false;       // fits/<estimator>/self_influence.npy is kept
};

// Examples appended after the build (`inflab index append`): scored like the training rows, but not
// part of the run's fine-tuning, so no preconditioner is fitted on them.
struct IndexAppended {
  std::string source;  // the file they came from
  std::int64_t rows = 0;
};

struct IndexRecord {
  std::string experiment, run, finetune_key, gradients_key, projection, dtype;
  std::int64_t examples = 0;
  std::vector<std::string> block_names;
  std::vector<std::int64_t> block_dims;
  std::vector<std::int64_t> factor_tokens;  // per block: K-FAC factors kept in factors/ (0: none)
  std::vector<std::int64_t> shard_rows;     // training rows per shard, in row order
  std::vector<IndexFit> fits;
  std::vector<std::string> class_names;  // the dataset's, by label
  std::vector<IndexAppended> appended;   // the last appended.size() shards, in order (one each)
  // The shards of the run's own training rows (the first ones): what preconditioners are fitted on.
  std::size_t run_shards() const { return shard_rows.size() - appended.size(); }
};

struct IndexBuildOptions {
  std::string dtype = "float16";               // float16 | bfloat16 | float32
  std::vector<std::string> fit = {"datainf"};  // estimators fitted once and kept (none: "")
  // Preconditioners are kept only when all blocks' d x d float32 matrices fit this budget and are
  // no larger than the training rows (d <= n: projected gradients, narrow blocks); otherwise
  // explain fits the estimator in memory at query time.
  double fit_budget_mb = 2048;
  // Also keep each kept fit's self-influence of every stored row (RelatIF's denominator for
  // `explain --normalise relatif`): sum over blocks of d x d per row, once.
  bool self_influence = false;
};

// Writes DIR from the run's chain, each stage from the cache when it is there. Under `inflab
// launch`, each rank writes the shard of training rows it extracted and rank 0 the rest.
// An existing index of the same gradients is kept after every byte is checked against CHECKSUMS;
// of other gradients it is an error.
IndexRecord build_index(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                        const std::filesystem::path& dir, const IndexBuildOptions& options);

// The training rows as stored: per shard, per block a memory-mapped rows x dim tensor of the
// stored dtype (bfloat16 as its int16 bits). Nothing is read until it is scored.
struct IndexRows {
  std::string dtype;
  std::vector<std::string> block_names;
  std::vector<std::vector<at::Tensor>> shards;  // [shard][block]
  std::int64_t rows() const;
  // Rows [begin, begin + count) of one shard's block as float32.
  at::Tensor float_rows(std::size_t shard, std::size_t block, std::int64_t begin, std::int64_t count) const;
};
// 16-bit and float32 storage of float32 values (bfloat16 as int16 bits, for .npy).
at::Tensor to_index_dtype(const at::Tensor& values, const std::string& dtype);

struct AttributionIndex {
  std::filesystem::path dir;
  IndexRecord record;
  ExperimentConfig config;
  IndexRows train;
  GradientBlocks queries;  // the run's own validation rows (float32)
  ExampleMeta train_meta, query_meta;
  std::vector<std::string> examples;  // per training row, its examples.jsonl record
};
// Checks the files against CHECKSUMS and that the configuration still gives the recorded stage
// keys. Shards larger than `hash_limit_mb` in total are checked by size only: hashing them would
// cost more than scoring a query (about 1 s per GB); `inflab index build` on the same folder
// checks every byte.
AttributionIndex open_index(const std::filesystem::path& dir, Registry& registry, double hash_limit_mb = 64);

// Appends examples to an index as a new shard (under `inflab launch`, one per rank): their gradients of the
// run's influence loss under the index's adapter and projection, in the index's dtype, described in
// examples.jsonl. A language model's come from `examples_file` as JSON lines {"prompt", "response"}; a
// classifier's or a denoiser's are the rows of `examples_file` (.npy, one input per row, shaped as the run's)
// with their `classes` by name (a label, or a denoiser's condition: one for all rows or one per row). Kept
// fits are left as they are (they describe the fine-tuning data); a kept self-influence is recomputed over
// all rows.
struct AppendResult {
  IndexRecord record;      // the index after the append
  std::int64_t added = 0;  // rows this append added (over all its shards)
};
AppendResult append_to_index(const std::filesystem::path& dir, Registry& registry, const RunPaths& paths,
                             const std::filesystem::path& examples_file,
                             const std::vector<std::string>& classes = {});

// Prompt/response pairs from JSON lines ({"prompt": "...", "response": "..."}; blank lines skipped),
// appended to `prompts` and `responses` ("" where a response is optional and absent); errors name
// the file and line. `line_numbers`, when given, receives each pair's line.
void read_prompt_lines(const std::filesystem::path& file, bool need_response,
                       std::vector<std::string>& prompts, std::vector<std::string>& responses,
                       std::vector<int>* line_numbers = nullptr);

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

// Errors naming the row when a validation row is not one of the index's run.
void check_validation_rows(const AttributionIndex& index, const std::vector<std::int64_t>& rows);
// The queries' gradients block by block: the index's own validation rows, then `extra` (prompt or
// image gradients; empty: none).
GradientBlocks gather_queries(const AttributionIndex& index, const std::vector<std::int64_t>& validation_rows,
                              const GradientBlocks& extra);

// M_b^{-1} v for every query v of every block, ready for the streamed pass (any rescaling folded
// in): from the index's fitted preconditioner when it has one for this estimator and these
// options, the queries themselves for hessian_free, else by fitting the estimator now on the
// training rows read into memory (float32). `source` says which. With `want_self_influence`, also
// every training row's g_k . M^{-1} g_k with the same M (float64, index order): kept by `index build
// --self-influence`, else computed now from the kept fit (d x d per row and block) or the estimator
// fitted now (one inverse product per row); left undefined for hessian_free, whose M is the identity
// (the self-influence is the row's squared norm: RowDivisors::norms).
struct PreconditionedQueries {
  GradientBlocks blocks;
  std::string source;
  at::Tensor self_influence;
  double self_influence_seconds = 0;  // of that, when computed now
};
PreconditionedQueries precondition_queries(const AttributionIndex& index, Registry& registry,
                                           const std::string& estimator, const std::vector<std::string>& sets,
                                           const GradientBlocks& queries, bool want_self_influence = false);

// Per query: the k most helpful training rows (most negative scores: up-weighting them lowers the
// query's loss) and the k most harmful (most positive), best first.
struct RankedRow {
  std::int64_t row = 0;
  double score = 0;
};
struct QueryRanking {
  std::vector<RankedRow> helpful, harmful;
};
// One pass over the rows in chunks: scores -sum_b G_b V_b^T (float32 products, a chunk at a time),
// keeping each query's top k. Memory: one chunk of every block in float32, plus k per query.
// chunk_rows 0: as many rows as make 16 MiB of float32 values over all blocks (at least 256).
// `divisors`: each training row's scores divided by its norm over all blocks (`norms`: the training
// side of normalise = "unit", whose queries are scaled before, and hessian_free's "relatif") or by
// `given` (n values: relatif's sqrt of the self-influence); a divisor of 0 scores 0.
struct RowDivisors {
  bool norms = false;
  at::Tensor given;
};
std::vector<QueryRanking> rank_index_rows(const IndexRows& rows, const GradientBlocks& preconditioned,
                                          std::int64_t k, std::int64_t chunk_rows = 0,
                                          const std::string& progress_label = "",
                                          const RowDivisors& divisors = {});

}  // namespace inflab
