// `inflab index build` and `inflab explain`: an on-disk index of a run's training gradients and
// the most helpful and harmful training examples of new queries against it (inflab/index.hpp).
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace inflab {

class Registry;
struct ExperimentConfig;

struct IndexBuildOptions;
int command_index_build(const ExperimentConfig& run, Registry& registry, const std::filesystem::path& out,
                        const std::filesystem::path& cache, const IndexBuildOptions& options);

// `inflab index append IDX FILE.jsonl` (or FILE.npy --class NAME): prints what the index holds afterwards.
int command_index_append(const std::filesystem::path& index, const std::filesystem::path& examples,
                         const std::vector<std::string>& classes, Registry& registry,
                         const std::filesystem::path& cache);

struct ExplainRequest {
  std::filesystem::path index;
  std::vector<std::string> prompts, responses;  // responses[i] answers prompts[i]; absent: generated
  std::filesystem::path queries_file;           // JSON lines {"prompt": ..., "response": ...}
  std::vector<std::int64_t> validation_rows;    // the run's own queries, by row
  std::vector<std::string> conditions;          // denoisers: one drawn image each, or --image's conditions
  std::filesystem::path images_file;            // denoisers: .npy of images to score
  std::int64_t sampling_steps = 50;
  std::uint64_t seed = 0;
  std::filesystem::path save_images;  // PNG of the image queries
  std::string estimator = "datainf";
  std::vector<std::string> estimator_sets;
  std::int64_t top = 5;
  std::int64_t max_tokens = 64;
  double hash_limit_mb = 64;       // shards larger in total are checked by size when the index opens
  std::int64_t chunk_rows = 0;     // training rows scored at a time (0: 16 MiB of float32 values)
  std::string normalise = "none";  // none | unit | relatif (docs/estimators.md, "Normalised scores")
  bool json = false;
  std::filesystem::path cache;
};
int command_explain(const ExplainRequest& request, Registry& registry);

}  // namespace inflab
