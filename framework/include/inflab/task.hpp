// A Task says what the loss of one example is. Fine-tuning minimises `training_loss`, the
// gradient engine differentiates `example_losses` (each example's own, deterministic loss) and a
// query's gradient is that of its `measurement`. Built in (make_task):
//   classification  cross-entropy of the class logits (Model::forward -> batch x classes)
//   causal_lm       sum of next-token cross-entropy over the scored positions of each example
//                   (targets >= 0: response tokens; prompt and padding carry -100)
//   denoising       DDPM: sum over fixed timesteps of the mean squared error of the predicted
//                   noise, the noise fixed per (seed, example id, timestep), or per (seed,
//                   timestep) with shared_noise; timestep_gradients = "concatenate" keeps each
//                   timestep's gradient apart (the paper's notebook)
// A task calls the model exactly once per loss: the gradient engine reads what that one forward
// captured. docs/design.md says how a new task is added.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "inflab/options.hpp"

namespace inflab {

class Model;

// Examples as a task sees them; a batch is a slice of rows of each tensor.
struct Batch {
  at::Tensor inputs;       // the model's input (images, token ids, ...), first dimension = examples
  at::Tensor targets;      // classification: class ids (n); causal_lm: next-token id per position
                           // (n x positions, < 0 = not scored); denoising: condition ids (n;
                           // -1 = none: classifier-free guidance's unconditional prediction)
  at::Tensor example_ids;  // int64 (n): stable ids; per-example randomness is drawn from them
  std::int64_t size() const;
  Batch slice(std::int64_t start, std::int64_t count) const;
};

class Task {
 public:
  virtual ~Task() = default;
  virtual std::string name() const = 0;
  // One loss per example, shape (batch): deterministic, so per-example gradients are well defined.
  virtual at::Tensor example_losses(Model& model, const Batch& batch) const = 0;
  // Their sum, the scalar the gradient engine differentiates (its per-example parts are the
  // examples' gradients). Override only to compute the same value faster or in one kernel.
  virtual at::Tensor summed_loss(Model& model, const Batch& batch) const;
  // What fine-tuning minimises on a batch (a scalar). Default: the mean of example_losses; a task
  // may draw random numbers here from LibTorch's global generator (seeded by the pipeline).
  virtual at::Tensor training_loss(Model& model, const Batch& batch) const;
  // The scalar whose gradient is a query's gradient. Default: summed_loss (the query's own loss).
  virtual at::Tensor measurement(Model& model, const Batch& batch) const { return summed_loss(model, batch); }
  // Rows per example whose gradients are kept apart: each block's gradient is then the
  // concatenation of the example's per-row gradients (denoising with timestep_gradients =
  // "concatenate": one part per timestep). 1 (the default): the rows' gradients are summed.
  virtual std::int64_t gradient_parts() const { return 1; }
};
// A task may feed the model several rows per example (denoising: one per timestep), in
// example-major order: the engine folds them into that example's positions, so its gradient is
// the sum over them (or, with gradient_parts() = rows, their concatenation).

// The [task] section: `name` and the options of the built-in tasks.
std::vector<OptionSpec> task_option_specs();
std::vector<std::string> task_names();
// Throws an Error naming the valid tasks for an unknown name.
std::unique_ptr<Task> make_task(const std::string& name, const Options& options);
std::unique_ptr<Task> make_classification_task();

// The DDPM noise schedule (Ho et al. 2020): betas linear from 1e-4 to 0.02 over `steps`;
// returns alpha_bar_t = prod_{s <= t} (1 - beta_s), float64, length `steps`.
at::Tensor ddpm_alphas_cumprod(std::int64_t steps = 1000);
// The noise the denoising task uses for example `id` at `timestep` (same shape as `like`).
at::Tensor denoising_noise(std::int64_t seed, std::int64_t id, std::int64_t timestep, const at::Tensor& like);

}  // namespace inflab
