// The built-in tasks: what one example's loss is (inflab/task.hpp).
#include "inflab/task.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <limits>

#include "inflab/causal_lm.hpp"
#include "inflab/error.hpp"
#include "inflab/model.hpp"
#include "inflab/task_table.hpp"
#include "named_rows.hpp"

namespace inflab {

namespace F = torch::nn::functional;

std::int64_t Batch::size() const { return inputs.size(0); }

Batch Batch::slice(std::int64_t start, std::int64_t count) const {
  return {inputs.narrow(0, start, count), targets.narrow(0, start, count),
          example_ids.narrow(0, start, count)};
}

at::Tensor Task::summed_loss(Model& model, const Batch& batch) const {
  return example_losses(model, batch).sum();
}
at::Tensor Task::training_loss(Model& model, const Batch& batch) const {
  return example_losses(model, batch).mean();
}

namespace {

// Cross-entropy of class logits. The reductions are LibTorch's own, so fine-tuning and gradients
// are bit-for-bit what they were before tasks existed.
class ClassificationTask : public Task {
 public:
  std::string name() const override { return "classification"; }
  at::Tensor example_losses(Model& model, const Batch& batch) const override {
    return F::cross_entropy(model.forward(batch.inputs), batch.targets,
                            F::CrossEntropyFuncOptions().reduction(torch::kNone));
  }
  at::Tensor summed_loss(Model& model, const Batch& batch) const override {
    return F::cross_entropy(model.forward(batch.inputs), batch.targets,
                            F::CrossEntropyFuncOptions().reduction(torch::kSum));
  }
  at::Tensor training_loss(Model& model, const Batch& batch) const override {
    return F::cross_entropy(model.forward(batch.inputs), batch.targets);
  }
};

// Next-token cross-entropy over each example's scored positions (targets >= 0), summed or averaged
// per example (`reduction`). Fine-tuning: the mean over the batch of the examples' sums, or with
// reduction = "mean" Hugging Face's mean over every scored token of the batch.
class CausalLmTask : public Task {
 public:
  explicit CausalLmTask(bool mean) : mean_(mean) {}
  std::string name() const override { return "causal_lm"; }
  at::Tensor example_losses(Model& model, const Batch& batch) const override {
    auto [sums, counts] = token_losses(model, batch);
    return mean_ ? sums / counts.clamp_min(1) : sums;
  }
  at::Tensor training_loss(Model& model, const Batch& batch) const override {
    auto [sums, counts] = token_losses(model, batch);
    return mean_ ? sums.sum() / counts.sum().clamp_min(1) : sums.mean();
  }

 private:
  // Rows (scored positions in row-major order of batch and position, as the targets are read) x
  // vocabulary: from the model's ScoredTokenLogits when it has one, else gathered from forward().
  static torch::Tensor scored_logits(Model& model, const torch::Tensor& inputs, const torch::Tensor& scored) {
    if (auto* direct = capability<ScoredTokenLogits>(model)) return direct->token_logits(inputs, scored);
    torch::Tensor logits = model.forward(inputs);
    if (logits.dim() != 3)
      throw Error(
          "task causal_lm needs a model whose forward() gives logits per position (batch x positions x "
          "vocabulary); this model gives class logits");
    return logits.reshape({-1, logits.size(2)}).index_select(0, scored.reshape({-1}).nonzero().squeeze(1));
  }
  // Per example: the summed loss of its scored tokens, and how many there are.
  std::pair<torch::Tensor, torch::Tensor> token_losses(Model& model, const Batch& batch) const {
    const auto& targets = batch.targets;
    if (targets.dim() != 2 || targets.size(0) != batch.size())
      throw Error(fmt::format(
          "task causal_lm: targets must be (examples x positions) next-token ids with -100 where not "
          "scored; found shape ({})",
          fmt::join(targets.sizes(), ", ")));
    torch::Tensor scored = targets.ge(0);
    torch::Tensor logits = scored_logits(model, batch.inputs, scored);  // scored positions x vocabulary
    torch::Tensor flat = scored.reshape({-1}).nonzero().squeeze(1);
    if (logits.dim() != 2 || logits.size(0) != flat.size(0))
      throw Error(fmt::format("task causal_lm: the model gave logits of shape ({}) for {} scored positions",
                              fmt::join(logits.sizes(), ", "), flat.size(0)));
    torch::Tensor token_loss = F::cross_entropy(logits, targets.reshape({-1}).index_select(0, flat),
                                                F::CrossEntropyFuncOptions().reduction(torch::kNone));
    torch::Tensor example_of = flat.div(targets.size(1), "floor");
    torch::Tensor sums =
        torch::zeros({batch.size()}, token_loss.options()).index_add(0, example_of, token_loss);
    return {sums, scored.sum(1).to(token_loss.scalar_type())};
  }
  bool mean_;
};

// DDPM epsilon-prediction loss at fixed timesteps (the paper: 25, 225, ..., 925 of 1000).
class DenoisingTask : public Task {
 public:
  DenoisingTask(std::vector<std::int64_t> timesteps, std::int64_t seed, std::int64_t steps, bool concatenate,
                bool shared_noise)
      : timesteps_(std::move(timesteps)),
        seed_(seed),
        steps_(steps),
        concatenate_(concatenate),
        shared_noise_(shared_noise),
        alpha_bar_(ddpm_alphas_cumprod(steps)) {
    if (timesteps_.empty()) throw Error("task denoising: task.timesteps must not be empty");
    for (auto t : timesteps_)
      if (t < 0 || t >= steps_)
        throw Error(fmt::format("key 'task.timesteps': timestep {} is outside [0, {}) (task.diffusion_steps)",
                                t, steps_));
  }
  std::string name() const override { return "denoising"; }

  // Rows (example, timestep) in example-major order: the engine folds them into each example.
  at::Tensor example_losses(Model& model, const Batch& batch) const override {
    const std::int64_t n = batch.size(), k = static_cast<std::int64_t>(timesteps_.size());
    const auto& x0 = batch.inputs;
    torch::Tensor t = torch::tensor(timesteps_, torch::kLong).repeat({n});
    std::vector<torch::Tensor> noise;
    noise.reserve(static_cast<std::size_t>(n * k));
    auto ids = batch.example_ids.to(torch::kLong).contiguous();
    for (std::int64_t i = 0; i < n; ++i)
      for (auto step : timesteps_)
        noise.push_back(denoising_noise(seed_, shared_noise_ ? kSharedNoise : ids.data_ptr<std::int64_t>()[i],
                                        step, x0[0]));
    return losses(model, x0.repeat_interleave(k, 0), t, torch::stack(noise),
                  batch.targets.repeat_interleave(k, 0))
        .reshape({n, k})
        .sum(1);
  }

  std::int64_t gradient_parts() const override {
    return concatenate_ ? static_cast<std::int64_t>(timesteps_.size()) : 1;
  }

  // Fine-tuning draws one uniform timestep and fresh noise per example, as DDPM training does.
  at::Tensor training_loss(Model& model, const Batch& batch) const override {
    const std::int64_t n = batch.size();
    torch::Tensor t = torch::randint(0, steps_, {n}, torch::kLong);
    return losses(model, batch.inputs, t, torch::randn_like(batch.inputs), batch.targets).mean();
  }

 private:
  at::Tensor losses(Model& model, const torch::Tensor& x0, const torch::Tensor& t, const torch::Tensor& noise,
                    const torch::Tensor& condition) const {
    std::vector<std::int64_t> shape(static_cast<std::size_t>(x0.dim()), 1);
    shape[0] = x0.size(0);
    torch::Tensor a = alpha_bar_.index_select(0, t).to(x0.scalar_type()).reshape(shape);
    torch::Tensor noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise;
    torch::Tensor predicted =
        require_capability<Denoiser>(model, "task denoising").denoise(noisy, t, condition);
    if (predicted.sizes() != noise.sizes())
      throw Error(fmt::format("task denoising: the model predicted noise of shape ({}), expected ({})",
                              fmt::join(predicted.sizes(), ", "), fmt::join(noise.sizes(), ", ")));
    return (predicted - noise).square().reshape({x0.size(0), -1}).mean(1);
  }

  // The id whose noise every example shares under shared_noise (no example has it).
  static constexpr std::int64_t kSharedNoise = std::numeric_limits<std::int64_t>::min();
  std::vector<std::int64_t> timesteps_;
  std::int64_t seed_, steps_;
  bool concatenate_, shared_noise_;
  torch::Tensor alpha_bar_;
};

}  // namespace

at::Tensor ddpm_alphas_cumprod(std::int64_t steps) {
  torch::Tensor betas = torch::linspace(1e-4, 0.02, steps, torch::kDouble);
  return (1 - betas).cumprod(0);
}

at::Tensor denoising_noise(std::int64_t seed, std::int64_t id, std::int64_t timestep,
                           const at::Tensor& like) {
  // SplitMix64 of (seed, id, timestep): independent streams per example and timestep, the same
  // whichever batch the example is in.
  auto mix = [](std::uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  std::uint64_t key = mix(mix(mix(static_cast<std::uint64_t>(seed)) ^ static_cast<std::uint64_t>(id)) ^
                          static_cast<std::uint64_t>(timestep));
  auto generator = at::detail::createCPUGenerator(key);
  return torch::randn(like.sizes(), generator, like.options());
}

const std::vector<TaskDefinition>& task_definitions() {
  static const std::vector<TaskDefinition> table{
      {.name = "classification",
       .make = [](const Options&) { return make_classification_task(); },
       .trains_on_class_labels = true},
      {.name = "causal_lm",
       .options =
           {OptionSpec{
                "template", OptionType::String, std::string("chat"),
                "causal_lm: \"chat\" (the prompt in the model's chat template, the answer, end of turn) "
                "or \"raw\" (prompt text, answer, end-of-sequence token)",
                false},
            OptionSpec{
                "scored", OptionType::String, std::string("response"),
                "causal_lm: which tokens the influence loss covers: \"response\" (the answer and its "
                "end), \"prompt\" (the prompt alone, the paper's code) or \"all\" (prompt and answer as "
                "one text)",
                false},
            OptionSpec{
                "reduction", OptionType::String, std::string("sum"),
                "causal_lm: \"sum\" or \"mean\" over an example's scored tokens (mean: fine-tuning takes "
                "the mean over the batch's tokens, as Hugging Face does)",
                false},
            OptionSpec{
                "padding", OptionType::String, std::string("none"),
                "causal_lm: \"longest\" pads each split's examples with the end-of-sequence token to its "
                "longest and scores the padding, which no token attends to (the paper's code); \"none\"",
                false},
            OptionSpec{
                "fine_tune_scored", OptionType::String, std::string("response"),
                "causal_lm: which tokens fine-tuning learns: \"response\" or \"all\" (supervised on the "
                "whole text, the paper's recipe)",
                false}},
       .make = [](const Options& options) -> std::unique_ptr<Task> {
         influence_encoding(options), fine_tuning_encoding(options);  // the choices are checked here
         return std::make_unique<CausalLmTask>(options.get_string("reduction") == "mean");
       }},
      {.name = "denoising",
       .options =
           {OptionSpec{"timesteps", OptionType::IntList,
                       std::vector<std::int64_t>{25, 225, 425, 525, 725, 925},
                       "denoising: timesteps whose losses are summed for gradients and queries (the paper's)",
                       false, at_least(0)},
            OptionSpec{"diffusion_steps", OptionType::Int, std::int64_t{1000},
                       "denoising: steps of the linear DDPM schedule (betas 1e-4 .. 0.02)", false,
                       between(1, 1e6)},
            OptionSpec{"noise_seed", OptionType::Int, std::int64_t{0},
                       "denoising: seed of the noise, fixed per example and timestep", false},
            OptionSpec{
                "shared_noise", OptionType::Bool, false,
                "denoising: every example gets the same noise at a timestep (the paper's notebook seeds "
                "the noise by the timestep alone)",
                false},
            OptionSpec{
                "timestep_gradients", OptionType::String, std::string("sum"),
                "denoising: \"sum\" (a block's gradient is that of the summed timestep losses) or "
                "\"concatenate\" (the per-timestep gradients side by side, the paper's notebook: damping "
                "and every estimator see that longer vector)",
                false}},
       .make = [](const Options& options) -> std::unique_ptr<Task> {
         const std::string& parts = options.get_string("timestep_gradients");
         if (parts != "sum" && parts != "concatenate")
           throw Error(fmt::format(
               "key 'task.timestep_gradients': expected one of \"sum\", \"concatenate\", found \"{}\"",
               parts));
         return std::make_unique<DenoisingTask>(
             options.get_int_list("timesteps"), options.get_int("noise_seed"),
             options.get_int("diffusion_steps"), parts == "concatenate", options.get_bool("shared_noise"));
       },
       .generates_images = true},
  };
  return table;
}

const TaskDefinition* find_task(const std::string& name) { return find_named(task_definitions(), name); }

std::vector<std::string> task_names() { return names_of(task_definitions()); }

namespace {
std::string what_loss_help() {  // "classification, causal_lm or denoising: what an example's loss is"
  auto names = task_names();
  const std::string last = names.back();
  names.pop_back();
  return fmt::format("{} or {}: what an example's loss is", fmt::join(names, ", "), last);
}
}  // namespace

// [task]: its name, then every task's own keys (a run's resolved [task] holds them all, at their
// defaults for the other tasks, so the keys of existing runs stay as they were).
std::vector<OptionSpec> task_option_specs() {
  std::vector<OptionSpec> specs{
      OptionSpec{"name", OptionType::String, std::string("classification"), what_loss_help(), false}};
  for (const auto& definition : task_definitions())
    specs.insert(specs.end(), definition.options.begin(), definition.options.end());
  return specs;
}

std::unique_ptr<Task> make_classification_task() { return std::make_unique<ClassificationTask>(); }

std::unique_ptr<Task> make_task(const std::string& name, const Options& options) {
  if (const TaskDefinition* definition = find_task(name)) return definition->make(options);
  auto names = task_names();
  std::string suggestion = closest_match(name, names);
  throw Error(fmt::format("unknown task '{}'{}; tasks: {}", name,
                          suggestion.empty() ? "" : fmt::format(" (did you mean '{}'?)", suggestion),
                          fmt::join(names, ", ")));
}

}  // namespace inflab
