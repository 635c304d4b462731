// Experiment files (TOML): parsing, validation against the framework's and the plugins'
// declared options, --set overrides, and [sweep] expansion into concrete runs.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "inflab/options.hpp"

namespace inflab {

class Registry;

struct PluginSpec {
  std::string plugin;
  std::string label;               // estimator display name (defaults to the plugin name)
  std::string normalise = "none";  // estimators: none | unit | relatif (inflab/scoring.hpp)
  Options options;
};

// What the orchestrator reads of [evaluation] (the gradients stage reads its gradient_* keys itself);
// its keys, defaults and checks: evaluation.cpp (evaluation_section).
struct EvaluationConfig {
  std::vector<std::string> metrics;
  std::string reference;            // estimator label correlations are measured against
  std::string mode;                 // aggregate | pairwise
  std::vector<std::string> blocks;  // glob patterns: which gradient blocks take part
  std::string class_recall_at;      // class_detection's s: the query class's training | query examples
};

struct ExperimentConfig {
  std::filesystem::path source;
  std::string name, run_name;
  std::int64_t seed = 0;
  std::vector<std::filesystem::path> plugin_paths;
  PluginSpec dataset;
  PluginSpec model;
  std::vector<PluginSpec> estimators;
  std::string task = "classification";  // [task] name; its options are in resolved_toml
  EvaluationConfig evaluation;
  std::string kernels;           // numerics.kernels as written ("pinned" | "native"), "" when absent
  std::int64_t checkpoints = 0;  // [checkpoints] count; 0 when the section is absent
  // The whole config with every default filled in: what the stages read (framework/src/stage_keys.hpp),
  // and so what their cache keys are computed from. The typed fields above are what the
  // orchestrator needs before any stage runs; every other value is read from here.
  std::string resolved_toml;
  // "dataset" -> "fashion_mnist 0.1.0", "model" -> ...: part of every stage key and the manifest.
  std::map<std::string, std::string> plugin_versions;
  // [model] adapter_from: the experiment (its run with this run's seed) whose fine-tuned adapter
  // this run scores instead of fine-tuning its own; null when the run fine-tunes its own.
  std::shared_ptr<const ExperimentConfig> adapter_source;
};

// One plugin's options from its defaults and command-line assignments "key=value" (`inflab score
// --set`, `inflab embed --set`): unknown keys suggest the closest, values are parsed by the
// declared type, required options must be given. `who` names the plugin in errors.
Options options_from_assignments(const std::string& who, const std::vector<OptionSpec>& specs,
                                 const std::vector<std::string>& assignments);

// Reads FILE, applies `overrides` ("key.path=value"), loads plugin paths named by the
// experiment into `registry`, expands [experiment] repeats and [sweep], validates each run.
// Errors name file:line:column, the key path, what was expected and what was found.
std::vector<ExperimentConfig> load_experiment(const std::filesystem::path& file,
                                              const std::vector<std::string>& overrides, Registry& registry);

}  // namespace inflab
