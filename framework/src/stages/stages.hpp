// The stages' code (private): the functions of framework/src/stages/*.cpp and the helpers they
// share. Each unit declares what its stage reads (a StageDeclaration, ../stage_keys.hpp) and runs
// it from StageInputs only; pipeline.cpp chains them.
#pragma once
#include <ATen/core/Tensor.h>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "../stage_keys.hpp"
#include "inflab/config.hpp"
#include "inflab/dataset.hpp"
#include "inflab/error.hpp"
#include "inflab/gradients.hpp"
#include "inflab/model.hpp"
#include "inflab/registry.hpp"
#include "inflab/run.hpp"
#include "inflab/task.hpp"

namespace inflab {

const StageDeclaration& data_stage();
const StageDeclaration& base_stage();
const StageDeclaration& finetune_stage();
const StageDeclaration& ground_truth_stage();
const StageDeclaration& leave_one_out_stage();
const StageDeclaration& gradients_stage();
const StageDeclaration& fit_stage();

// ---- shared helpers ---------------------------------------------------------------------

// A cache entry (file or directory) is written under `temporary` and renamed into place by
// commit(): an interrupted write is never mistaken for a hit, and a failure (a full disk, a faulty
// plugin) leaves nothing behind. A killed process's temporaries go at the next start
// (remove_stale_temporaries).
class PendingEntry {
 public:
  explicit PendingEntry(std::filesystem::path final_path) : final_(std::move(final_path)) {
    temporary = final_;
    temporary += fmt::format(".tmp-{}", ::getpid());
    std::filesystem::remove_all(temporary);
    std::filesystem::create_directories(final_.parent_path());
  }
  PendingEntry(const PendingEntry&) = delete;
  PendingEntry& operator=(const PendingEntry&) = delete;
  ~PendingEntry() {
    std::error_code ignored;
    if (!committed_) std::filesystem::remove_all(temporary, ignored);
  }
  void commit() {
    std::filesystem::remove_all(final_);
    std::filesystem::rename(temporary, final_);
    committed_ = true;
  }
  std::filesystem::path temporary;

 private:
  std::filesystem::path final_;
  bool committed_ = false;
};

// Runs a plugin's code: whatever it throws becomes an Error naming the plugin, so a faulty plugin
// ends the run with a message that says whose fault it was (earlier outputs stay as written).
template <class Body>
auto in_plugin(const std::string& who, Body&& body) -> decltype(body()) {
  try {
    return body();
  } catch (const Error& e) {
    throw Error(fmt::format("{}: {}", who, e.what()));
  } catch (const std::exception& e) {
    throw Error(fmt::format("{} failed: {}", who, e.what()));
  }
}

std::string describe_plugin(Registry& registry, PluginKind kind, const std::string& name);
void log(const std::string& message);   // informational: silent under --quiet
void warn(const std::string& message);  // always shown

using Clock = std::chrono::steady_clock;
inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::filesystem::path cache_root_of(const RunPaths& paths);

// ---- the stages ---------------------------------------------------------------------------

// data: the dataset's splits, label noise applied, texts tokenized by the model.
struct LoadedData {
  DatasetSplits splits;
  ExampleMeta train_meta, query_meta;
  Batch train, validation, pretrain;  // as the task's influence loss sees them (train: observed labels)
  Batch train_fit;  // the training split as fine-tuning sees it (causal_lm may encode it otherwise)
};
LoadedData load_data(const StageInputs& inputs, Registry& registry, RunOutcome& outcome);
// The model with its LoRA adapters (read by the base, finetune and gradients stages: declared by
// data_stage() too, whose reads cover model.* and experiment.seed).
std::unique_ptr<Model> build_model(const StageInputs& inputs, Registry& registry, LoadedData& data,
                                   RunOutcome& outcome);

// The start of every chain: the data, the model built on it and its base (pretrained or cached).
struct BaseModel {
  StageInputs data_in;
  LoadedData data;
  std::unique_ptr<Model> model;
};
BaseModel base_model(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                     RunOutcome& outcome);

// A tensor's values as doubles, in row-major order.
std::vector<double> to_doubles(const at::Tensor& t);

// base: pretrains the model's base weights on the pretrain split (cached), when the model needs it.
void prepare_base(const StageInputs& inputs, Model& model, const LoadedData& data, const RunPaths& paths,
                  RunOutcome& outcome);
// finetune: trains the LoRA adapters on the training split (cached), or (model.adapter_key, from
// [model] adapter_from) loads the adapters another experiment's finetune stage cached under that key.
// With `checkpoints` (the run's [checkpoints] count) a fine-tuning it runs keeps them on the way
// (fine_tuning_checkpoints; the last is the adapter), so TracIn's stage does not train again.
void finetune(const StageInputs& inputs, Model& model, const LoadedData& data, const RunPaths& paths,
              RunOutcome& outcome, std::int64_t checkpoints = 0);
// Where the finetune stage caches the adapters it trained under `finetune_key`.
std::filesystem::path adapter_file(const std::string& finetune_key, const RunPaths& paths);
// ground_truth: the fine-tuning repeated on random subsets of the training set (same base, same
// initialisation, same schedule), each query's loss recorded after each; one cache file per
// subset, so an interrupted stage resumes. The model's adapters are left at their initialisation.
struct GroundTruth {
  at::Tensor subsets;  // bool (subsets x n_train): which examples each fine-tuning saw
  at::Tensor losses;   // float64 (subsets x n_query): each query's loss after it
};
GroundTruth ground_truth(const StageInputs& inputs, Model& model, const LoadedData& data,
                         const RunPaths& paths, RunOutcome& outcome);
// leave_one_out: the fine-tuning repeated without each of the training rows `rows`, and on every
// row, once per training seed (repeats); the change of the mean query loss that removing each row
// causes, averaged over the seeds (each seed's own full fine-tuning is the baseline). One cache
// file per (example id, seed): any set of rows reuses what was computed.
struct LeaveOneOut {
  std::vector<std::int64_t> rows;
  std::vector<double> change;  // mean query loss without the row minus with it, mean over seeds
  std::vector<std::vector<double>> change_per_seed;  // [seed][row]: how much training noise moves it
};
LeaveOneOut leave_one_out(const StageInputs& inputs, Model& model, const LoadedData& data,
                          const std::vector<std::int64_t>& rows, const RunPaths& paths, RunOutcome& outcome);
// checkpoints ([checkpoints] count = C, for estimators scored over checkpoints such as TracIn):
// the fine-tuning repeated from the same initialisation with the same seed and schedule, keeping
// the adapters after epochs round(E c / C), c = 1..C, and the mean learning rate of the optimizer
// steps since the previous one. The last is the finetune stage's adapter (checked bit for bit when
// that is cached). Cached under the finetune key; `model` must hold the adapters' initialisation
// and holds them again afterwards.
struct Checkpoint {
  std::int64_t epoch = 0;            // epochs completed
  double learning_rate = 0;          // mean over the optimizer steps since the previous checkpoint
  std::vector<at::Tensor> adapters;  // as lora_tensors orders them
};
std::vector<Checkpoint> fine_tuning_checkpoints(const StageInputs& finetune_inputs, Model& model,
                                                const LoadedData& data, std::int64_t count,
                                                const RunPaths& paths);
// Puts `adapters` (lora_tensors' order) into the model's LoRA tensors.
void load_adapters(Model& model, const std::vector<at::Tensor>& adapters);
// gradients: per-example gradients of the training losses and the queries' measurements.
std::filesystem::path gradients_directory(const StageInputs& inputs, const RunPaths& paths);
// measure = false: the model's own measurements (accuracy, generated answers) are skipped (the
// gradients of a fine-tuning checkpoint).
GradientStore extract_gradients(const StageInputs& inputs, Model& model, LoadedData& data,
                                const RunPaths& paths, RunOutcome& outcome, bool measure = true);
// New queries for a language model's run (`inflab explain --prompt`): each prompt's answer (the
// given response, or the model's greedy one of at most max_tokens), encoded as the run encodes its
// test split, and the gradients of its influence loss with the run's projection (`inputs`: the
// gradients stage's).
struct PromptQueries {
  std::vector<std::string> prompts, answers;
  GradientBlocks gradients;
};
// New image queries for a denoiser's run (`inflab explain --condition/--image`): images (n x one
// example's shape) under condition ids, their gradients of the task's measurement with the run's
// projection. The denoising noise is drawn per example id: these are first_id + i, by default
// 2,000,000,000 + i, apart from training examples and generated queries (1,000,000,000 + ...).
// `index append` passes a classifier's inputs and labels the same way, with its own ids.
GradientBlocks image_query_gradients(const StageInputs& inputs, Model& model, const at::Tensor& images,
                                     const std::vector<std::int64_t>& conditions,
                                     std::int64_t first_id = 2'000'000'000);
PromptQueries prompt_query_gradients(const StageInputs& inputs, Model& model,
                                     const std::vector<std::string>& prompts,
                                     const std::vector<std::string>& responses, std::int64_t max_tokens);

// fit: an estimator fitted on the training gradients, from its fit cache when it has one.
// `inputs` carries the estimator's plugin, version and options and the blocks taking part
// (fit_inputs). Returns true when the fit came from the cache.
StageInputs fit_inputs(const std::string& resolved_toml, const std::map<std::string, std::string>& versions,
                       const PluginSpec& estimator, const std::string& estimator_version,
                       const GradientBlocks& train);
bool fit_estimator(const StageInputs& inputs, Estimator& estimator, const GradientBlocks& train,
                   const RunPaths& paths, const std::string& who);

// A training loop over `examples` minimising `loss` (batch -> scalar) with Adam or SGD.
struct TrainingSchedule {
  std::int64_t epochs = 1, batch_size = 32, seed = 0;
  std::int64_t accumulation_steps = 1;  // batches per optimizer step (the last of an epoch takes the rest)
  double learning_rate = 1e-3, weight_decay = 0;
  double max_grad_norm = 0;   // 0: no clipping
  bool linear_decay = false;  // learning rate decays linearly to 0 over all optimizer steps
  std::string optimizer = "adam", label;
  bool show_progress = true;
  // Called after each epoch with the epochs and optimizer steps completed and the learning rates
  // of the steps so far summed (a checkpoint's weight is the mean over its stretch).
  std::function<void(std::int64_t epochs, std::int64_t steps, double learning_rate_sum)> after_epoch;
  // When set: the training's state (parameters, optimizer, random generators, epochs done) is written
  // here after every epoch but the last, and a training that finds the file resumes after its epoch,
  // to the same bits as one never interrupted; the file is removed when the training ends. The
  // caller keys the name by everything the training reads. Not with after_epoch (its calls would
  // not repeat).
  std::filesystem::path resume_file;
  // > 0: the parameters end as an exponential moving average of their values after each optimizer
  // step, with decay min(ema_decay, (1 + step) / (10 + step)) (the warm-up keeps the first weights
  // from dominating); saved with the resume state.
  double ema_decay = 0;
};
void train(Model& model, const std::function<at::Tensor(const Batch&)>& loss,
           const std::vector<at::Tensor>& parameters, const Batch& examples,
           const TrainingSchedule& schedule);

}  // namespace inflab
