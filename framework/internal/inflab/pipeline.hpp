// Runs one experiment configuration: data -> base model -> LoRA fine-tune -> gradients ->
// estimators -> metrics, caching each expensive stage by the content of its configuration.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "inflab/config.hpp"
#include "inflab/gradients.hpp"
#include "inflab/run.hpp"

namespace inflab {

class Registry;

class StageInputs;
// The gradients stage's inputs in this process: under `inflab launch`, this rank's shard.
StageInputs gradients_stage_inputs(const ExperimentConfig& config);

// Everything up to and including the gradient store (what `inflab gradients` writes).
GradientStore prepare_gradients(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                                RunOutcome* outcome = nullptr);
// The run's model with its fine-tuned LoRA adapters: data -> base -> finetune, each from the
// stage cache when it is there (recomputed, with progress, when it was evicted). `inflab generate
// --lora RUN_DIR` and `inflab sample` use it. The model lives in a plugin of `registry`: destroy it first.
// With adapters = Adapters::none the model is the pretrained base (LoRA's B starts at zero, so the
// untrained adapters change nothing) and no fine-tuning is run or read.
struct FinetunedModel {
  std::unique_ptr<Model> model;
  std::vector<std::int64_t> example_shape;  // one training input, without the batch dimension
  std::vector<std::string> class_names;     // the dataset's classes (a denoiser's conditions)
  std::string task;                         // [task] name
  Options task_options;                     // the run's resolved [task] (a denoiser's schedule, ...)
  double condition_dropout = 0;  // the base's training.pretrain_condition_dropout (guidance needs > 0)
};
enum class Adapters { finetuned, none };
FinetunedModel finetuned_model(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                               Adapters adapters = Adapters::finetuned);

// The cache key of a stage ("base", "finetune", "gradients", "fit") for this configuration: a hash
// of exactly the inputs the stage declares, the keys of the stages before it, the versions of the
// plugins it runs and its format version.
std::string stage_key(const std::string& stage, const ExperimentConfig& config);
// Runs one experiment point into OUT/<name>/<run>/. resume: skip a run finished with the same
// configuration and kernels. A finished run of another configuration or other kernels is an error
// unless `replace`. The run is computed in a hidden folder beside it and swapped in when complete,
// so an interrupted run leaves the previous one whole.
RunOutcome run_experiment(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                          bool resume = true, bool replace = false);

}  // namespace inflab
