// The base and finetune stages: training loops whose results are cached by their inputs.
#include <torch/torch.h>

#include "../stage_units.hpp"
#include "inflab/io.hpp"
#include "inflab/lora.hpp"
#include "inflab/progress.hpp"

namespace fs = std::filesystem;

namespace inflab {

// The base's weights do not depend on the LoRA adapters or the experiment seed (a model plugin's
// contract: it initialises its base from a fixed seed), nor on label noise.
const StageDeclaration& base_stage() {
  static const StageDeclaration stage{"base",
                                      3,
                                      {},
                                      {"dataset", "model", "task", "training.pretrain_epochs",
                                       "training.pretrain_learning_rate", "training.batch_size"},
                                      {"dataset.label_noise", "dataset.noise_seed", "model.lora"},
                                      {"dataset", "model"}};
  return stage;
}

const StageDeclaration& finetune_stage() {
  static const StageDeclaration stage{
      "finetune",
      3,
      {"base"},
      {"dataset", "model", "task", "experiment.seed", "training.epochs", "training.learning_rate",
       "training.batch_size", "training.optimizer", "training.weight_decay"},
      {},
      {"dataset", "model"}};
  return stage;
}

void train(Model& model, const std::function<at::Tensor(const Batch&)>& loss,
           const std::vector<at::Tensor>& parameters, const Batch& examples,
           const TrainingSchedule& schedule) {
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  if (schedule.optimizer == "sgd")
    optimizer = std::make_unique<torch::optim::SGD>(
        parameters,
        torch::optim::SGDOptions(schedule.learning_rate).momentum(0.9).weight_decay(schedule.weight_decay));
  else
    optimizer = std::make_unique<torch::optim::Adam>(
        parameters, torch::optim::AdamOptions(schedule.learning_rate).weight_decay(schedule.weight_decay));
  const std::int64_t n = examples.size(), batch_size = schedule.batch_size;
  const std::int64_t batches = (n + batch_size - 1) / batch_size;
  auto generator = at::detail::createCPUGenerator(static_cast<std::uint64_t>(schedule.seed));
  model.set_training(true);
  Progress progress(schedule.label, schedule.epochs * batches, "batches");
  for (std::int64_t epoch = 0; epoch < schedule.epochs; ++epoch) {
    torch::Tensor order = torch::randperm(n, generator, torch::kLong);
    for (std::int64_t b = 0; b < batches; ++b) {
      torch::Tensor index = order.narrow(0, b * batch_size, std::min(batch_size, n - b * batch_size));
      optimizer->zero_grad();
      Batch batch{examples.inputs.index_select(0, index), examples.targets.index_select(0, index),
                  examples.example_ids.index_select(0, index)};
      loss(batch).backward();
      optimizer->step();
      progress.advance();
    }
  }
  progress.finish();
  model.set_training(false);
}

namespace {

std::vector<torch::Tensor> lora_tensors(Model& model) {
  std::vector<torch::Tensor> out;
  for (auto* layer : model.lora_layers())
    if (layer->has_adapter()) out.push_back(layer->lora_a()), out.push_back(layer->lora_b());
  return out;
}

void save_tensors(const fs::path& path, const std::vector<torch::Tensor>& tensors) {
  PendingEntry pending(path);
  std::vector<torch::Tensor> detached;
  for (const auto& t : tensors) detached.push_back(t.detach().clone());
  try {
    torch::save(detached, pending.temporary.string());
  } catch (const std::exception& e) {
    throw Error(
        fmt::format("cannot write the cache file {} (disk full?): {}", pending.temporary.string(), e.what()));
  }
  fs::path sidecar = path;
  sidecar += ".checksum";
  write_checksum_sidecar(pending.temporary, sidecar);  // before the rename: a file in place always has one
  pending.commit();
}

// Loads into `targets` in place; false (a cache miss) when the file does not match.
bool load_tensors(const fs::path& path, const std::vector<torch::Tensor>& targets) {
  if (!fs::exists(path)) return false;
  if (std::string problem = verify_checksum_sidecar(path); !problem.empty()) {
    warn(fmt::format("cache entry {} failed its check ({}); recomputing", path.string(), problem));
    return false;
  }
  std::vector<torch::Tensor> loaded;
  try {
    torch::load(loaded, path.string());
  } catch (const std::exception& e) {
    warn(fmt::format("cache file {} is unreadable ({}); recomputing", path.string(), e.what()));
    return false;
  }
  if (loaded.size() != targets.size()) return false;
  for (std::size_t i = 0; i < loaded.size(); ++i)
    if (loaded[i].sizes() != targets[i].sizes()) return false;
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < loaded.size(); ++i) targets[i].copy_(loaded[i]);
  return true;
}

// A head on a frozen trunk: the trunk's features once, then the head trained on them.
void train_probe_head(const StageInputs& inputs, Model& model, const Batch& pretrain,
                      const std::vector<torch::Tensor>& base, const TrainingSchedule& schedule) {
  const std::int64_t batch_size = inputs.get_int("training.batch_size");
  torch::Tensor features;
  {
    torch::NoGradGuard no_grad;
    model.set_training(false);
    std::vector<torch::Tensor> chunks;
    Progress progress("probe features", pretrain.size(), "examples");
    for (std::int64_t s = 0; s < pretrain.size(); s += batch_size) {
      auto count = std::min(batch_size, pretrain.size() - s);
      chunks.push_back(model.probe_features(pretrain.inputs.narrow(0, s, count)));
      progress.advance(count);
    }
    features = torch::cat(chunks);
  }
  train(
      model,
      [&](const Batch& b) {
        return torch::nn::functional::cross_entropy(model.probe_head(b.inputs), b.targets);
      },
      base, Batch{features, pretrain.targets, pretrain.example_ids}, schedule);
}

}  // namespace

void prepare_base(const StageInputs& inputs, Model& model, const LoadedData& data, const RunPaths& paths,
                  RunOutcome& outcome) {
  std::vector<torch::Tensor> lora = lora_tensors(model), base;
  for (auto& [name, tensor] : model.base_parameters()) base.push_back(tensor);
  if (model.needs_base_pretraining()) {
    auto start = Clock::now();
    fs::path file = cache_root_of(paths) / "base" / (inputs.key() + ".pt");
    outcome.stage_cached["pretrain"] = load_tensors(file, base);
    if (!outcome.stage_cached["pretrain"]) {
      if (data.splits.pretrain.size() == 0)
        throw Error(fmt::format("model '{}' needs base pretraining but dataset '{}' has no pretrain split",
                                inputs.get_string("model.plugin"), inputs.get_string("dataset.plugin")));
      for (auto& t : lora) t.set_requires_grad(false);
      for (auto& t : base) t.set_requires_grad(true);
      TrainingSchedule schedule;
      schedule.epochs = inputs.get_int("training.pretrain_epochs");
      schedule.learning_rate = inputs.get_double("training.pretrain_learning_rate");
      schedule.batch_size = inputs.get_int("training.batch_size");
      if (model.has_probe()) {
        schedule.label = "training the head";
        train_probe_head(inputs, model, data.pretrain, base, schedule);
      } else {
        schedule.label = "pretraining base";
        auto task = make_task(inputs.get_string("task.name"), inputs.section("task"));
        train(
            model, [&](const Batch& b) { return task->training_loss(model, b); }, base, data.pretrain,
            schedule);
      }
      save_tensors(file, base);
    }
    outcome.stage_seconds["pretrain"] = seconds_since(start);
  }
  for (auto& t : base) t.set_requires_grad(false);  // the base stays frozen from here on
  for (auto& t : lora) t.set_requires_grad(true);
}

void finetune(const StageInputs& inputs, Model& model, const LoadedData& data, const RunPaths& paths,
              RunOutcome& outcome) {
  auto start = Clock::now();
  std::vector<torch::Tensor> lora = lora_tensors(model);
  fs::path file = cache_root_of(paths) / "finetune" / (inputs.key() + ".pt");
  outcome.stage_cached["finetune"] = load_tensors(file, lora);
  if (!outcome.stage_cached["finetune"]) {
    const std::int64_t seed = inputs.get_int("experiment.seed");
    torch::manual_seed(static_cast<std::uint64_t>(seed));  // dropout masks (and a task's own draws)
    auto task = make_task(inputs.get_string("task.name"), inputs.section("task"));
    TrainingSchedule schedule;
    schedule.epochs = inputs.get_int("training.epochs");
    schedule.learning_rate = inputs.get_double("training.learning_rate");
    schedule.batch_size = inputs.get_int("training.batch_size");
    schedule.optimizer = inputs.get_string("training.optimizer");
    schedule.weight_decay = inputs.get_double("training.weight_decay");
    schedule.seed = seed;
    schedule.label = "fine-tuning LoRA";
    train(
        model, [&](const Batch& b) { return task->training_loss(model, b); }, lora, data.train, schedule);
    save_tensors(file, lora);
  }
  outcome.stage_seconds["finetune"] = seconds_since(start);
}

}  // namespace inflab
