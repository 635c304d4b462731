// What each stage reads and its cache key (private to the framework; the stages' code is in
// stages/, declared by stages/stages.hpp). The stages of an experiment: data -> base -> finetune
// -> gradients -> fit -> scores -> metrics. A stage declares the parts of the resolved configuration it
// reads; its code reads them only through StageInputs (an undeclared read is an error), and its cache key is
// computed from exactly that declaration, the keys of the stages it follows, the names and versions of the
// plugins it runs and its format version. Nothing else can change a cached result unnoticed, and nothing it
// reads can be left out of the key.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "inflab/options.hpp"

namespace inflab {

struct ExperimentConfig;
class Registry;

struct StageDeclaration {
  std::string name;
  int format_version = 1;            // bump when the stage's code changes what it computes
  std::vector<std::string> after;    // stages whose outputs it reads (their keys are part of its key)
  std::vector<std::string> reads;    // dotted paths into the resolved configuration (a table: all of it)
  std::vector<std::string> except;   // paths under `reads` it does not read
  std::vector<std::string> plugins;  // sections whose plugin it runs: "dataset", "model"
  // Paths it reads that say how, not what (batch sizes of extraction, memory budgets): readable,
  // left out of the key. A test checks that each leaves the stage's result unchanged.
  std::vector<std::string> settings;
  // Paths under `reads` added after caches existed: absent, they leave the key as it was (so a run
  // that does not use the new section keeps its cached results); present, they enter it as usual.
  std::vector<std::string> keyed_when_present;
  // Options added after caches existed, with the value that does what the code did before them: at
  // that value they leave the key as it was (so existing caches stay valid); otherwise they enter it.
  std::vector<std::pair<std::string, Value>> keyed_unless;
};

// Every cached stage, in chain order (the cache-key test walks this list).
const std::vector<StageDeclaration>& cached_stages();
const StageDeclaration& stage_declaration(const std::string& name);

// The declared inputs of one stage for one run.
class StageInputs {
 public:
  // `plugin_versions`: "dataset" -> "fashion_mnist 0.1.0" etc. (from the registry).
  StageInputs(const StageDeclaration& stage, const std::string& resolved_toml,
              std::map<std::string, std::string> plugin_versions);

  bool declares(const std::string& path) const;  // in the key
  bool present(const std::string& path) const;   // declared and in the configuration (optional sections)
  bool readable(const std::string& path) const;  // declared, or a setting
  std::int64_t get_int(const std::string& path) const;
  double get_double(const std::string& path) const;
  std::string get_string(const std::string& path) const;
  std::vector<std::string> get_string_list(const std::string& path) const;
  // A whole section's values (e.g. "task" for make_task); every key must be declared.
  Options section(const std::string& path) const;

  // Adds a value the stage reads that does not come from the configuration (the fit stage's
  // estimator options and selected block names).
  void add(const std::string& name, const std::string& value);
  // The key of a stage this one follows (stage_inputs() fills these along the chain).
  void add_upstream(const std::string& stage, const std::string& key) { upstream_[stage] = key; }
  // That key ("" when the stage does not follow `stage`).
  std::string upstream_key(const std::string& stage) const {
    auto it = upstream_.find(stage);
    return it == upstream_.end() ? "" : it->second;
  }
  // Canonical text of the declared inputs, the upstream keys and the plugin versions; and its hash.
  std::string key_text() const;
  std::string key() const;
  const StageDeclaration& declaration() const { return stage_; }

 private:
  const StageDeclaration& stage_;
  std::map<std::string, std::string> values_;  // declared leaf path -> canonical value text
  std::map<std::string, Value> typed_;         // the same, typed
  std::map<std::string, std::string> upstream_, plugin_versions_, extra_;
};

// The inputs of `stage` for `config`, upstream keys included (computed along the chain).
StageInputs stage_inputs(const std::string& stage, const ExperimentConfig& config);
StageInputs stage_inputs(const std::string& stage, const std::string& resolved_toml,
                         const std::map<std::string, std::string>& plugin_versions);
// Plugin name and version of each plugin section of a run (for the keys and the manifest), computed
// once when the run's configuration is validated (ExperimentConfig::plugin_versions).
std::map<std::string, std::string> plugin_versions(const ExperimentConfig& config, Registry& registry);

}  // namespace inflab
