// The fit stage: an estimator fitted on the training gradients; estimators with an expensive fit
// (K-FAC, EK-FAC) keep it in a cache keyed by the gradients, the estimator and its options.
#include "stages.hpp"
#include "inflab/distributed.hpp"
#include "inflab/estimator.hpp"
#include "inflab/io.hpp"

namespace fs = std::filesystem;

namespace inflab {

const StageDeclaration& fit_stage() {
  static const StageDeclaration stage{"fit", 2, {"gradients"}, {}, {}, {"dataset", "model"}};
  return stage;
}

StageInputs fit_inputs(const std::string& resolved_toml, const std::map<std::string, std::string>& versions,
                       const PluginSpec& estimator, const std::string& estimator_version,
                       const GradientBlocks& train) {
  StageInputs inputs = stage_inputs("fit", resolved_toml, versions);
  inputs.add("estimator", estimator.plugin + " " + estimator_version);
  for (const auto& [name, value] : estimator.options.values())
    inputs.add("estimator." + name, format_value(value));
  std::string blocks;
  for (const auto& block : train) blocks += block.name + " ";
  inputs.add("blocks", blocks);
  // Distributed: each rank fits on its shard's rows (the collectives make the fit global).
  if (distributed_world_size() > 1)
    inputs.add("rank", fmt::format("{} of {}", distributed_rank(), distributed_world_size()));
  return inputs;
}

bool fit_estimator(const StageInputs& inputs, Estimator& estimator, const GradientBlocks& train,
                   const RunPaths& paths, const std::string& who) {
  const fs::path fit_dir = cache_root_of(paths) / "fits" / inputs.key();
  bool cached = false;
  if (fs::exists(fit_dir / "complete")) {
    if (std::string problem = verify_directory_checksums(fit_dir); !problem.empty())
      warn(fmt::format("cached fit {} failed its check ({}); fitting again", fit_dir.string(), problem));
    else
      cached = in_plugin(who, [&] { return estimator.load_fit(fit_dir.string(), train); });
  }
  // Fitting has collectives: the ranks fit unless every one of them found its cached fit.
  if (distributed_world_size() > 1 && sum_over_ranks(cached ? 1.0 : 0.0) != distributed_world_size())
    cached = false;
  if (cached) return true;
  in_plugin(who, [&] { estimator.fit(train); });
  PendingEntry pending(fit_dir);  // estimators without a fit cache leave it uncommitted
  fs::create_directories(pending.temporary);
  if (in_plugin(who, [&] { return estimator.save_fit(pending.temporary.string()); })) {
    write_file_atomic(pending.temporary / "complete", "fit\n");
    write_directory_checksums(pending.temporary);
    pending.commit();
  }
  return false;
}

}  // namespace inflab
