// The base and finetune stages: training loops whose results are cached by their inputs.
#include <torch/torch.h>

#include <optional>

#include "../sections.hpp"
#include "inflab/io.hpp"
#include "inflab/lora.hpp"
#include "inflab/peft.hpp"
#include "inflab/progress.hpp"
#include "stages.hpp"

namespace fs = std::filesystem;

namespace inflab {

// [training]: read by the base stage (pretrain_*, batch_size) and every fine-tuning (the rest).
// [checkpoints] (optional): what estimators scored over checkpoints (tracin) read.
const SectionSchema& checkpoints_section() {
  static const SectionSchema section{"checkpoints",
                                     {{"count", OptionType::Int, std::int64_t{3},
                                       "checkpoints the fine-tuning keeps, after epochs round(epochs x c / "
                                       "count), c = 1..count (the last is "
                                       "the final adapter); estimators such as tracin are scored on each",
                                       false, between(1, 1000)}}};
  return section;
}

const SectionSchema& training_section() {
  static const SectionSchema section{
      "training",
      {
          {"epochs", OptionType::Int, std::int64_t{10}, "LoRA fine-tuning epochs", false, between(0, 1e6)},
          {"learning_rate", OptionType::Double, 1e-3, "fine-tuning learning rate", false, greater_than(0)},
          {"batch_size", OptionType::Int, std::int64_t{32}, "fine-tuning batch size", false, between(1, 1e9)},
          {"optimizer", OptionType::String, std::string("adam"), "adam or sgd"},
          {"weight_decay", OptionType::Double, 0.0, "L2 weight decay", false, at_least(0)},
          {"accumulation_steps", OptionType::Int, std::int64_t{1},
           "batches whose gradients are summed (each batch's loss divided by this) before one optimizer "
           "step; "
           "an epoch's last step takes what is left (Hugging Face's gradient_accumulation_steps)",
           false, between(1, 1e6)},
          {"schedule", OptionType::String, std::string("constant"),
           "learning rate: \"constant\", or \"linear\" decay to 0 over all optimizer steps (Hugging Face's "
           "default)"},
          {"max_grad_norm", OptionType::Double, 0.0,
           "clip the gradient of each optimizer step to this norm (Hugging Face's default: 1); 0: no "
           "clipping",
           false, at_least(0)},
          {"pretrain_epochs", OptionType::Int, std::int64_t{5},
           "base pretraining epochs (models without packaged weights)", false, between(0, 1e6)},
          {"pretrain_learning_rate", OptionType::Double, 1e-3, "base pretraining learning rate", false,
           greater_than(0)},
          {"pretrain_ema", OptionType::Double, 0.0,
           "decay of an exponential moving average of the base's weights over pretraining's optimizer steps "
           "(warmed up as min(decay, (1 + step) / (10 + step))), which becomes the base; 0: the last weights",
           false, Range{0.0, 1.0, false, true}},
          {"pretrain_condition_dropout", OptionType::Double, 0.0,
           "task denoising: share of pretraining images whose condition is dropped (id -1: none), so that "
           "the base also predicts without one and can sample with classifier-free guidance (`inflab sample "
           "--guidance`, [queries] guidance); 0: never",
           false, Range{0.0, 1.0, false, true}},
      },
      [](Options& values) {
        if (auto problem = one_of(values, "training", "optimizer", {"adam", "sgd"})) return problem;
        return one_of(values, "training", "schedule", {"constant", "linear"});
      }};
  return section;
}

// The base's weights do not depend on the LoRA adapters or the experiment seed (a model plugin's
// contract: it initialises its base from a fixed seed), nor on label noise, nor on a dataset's
// finetune_seed (a dataset plugin's contract: that option picks fine-tuning images only, so the
// seeds of a study share one pretrained base).
const StageDeclaration& base_stage() {
  static const StageDeclaration stage{
      "base",
      3,
      {},
      {"dataset", "model", "task", "training.pretrain_epochs", "training.pretrain_learning_rate",
       "training.batch_size", "training.pretrain_ema", "training.pretrain_condition_dropout"},
      {"dataset.label_noise", "dataset.noise_seed", "dataset.finetune_seed", "model.lora", "model.adapter",
       "model.adapter_from", "model.adapter_key", "task.scored", "task.padding", "task.shared_noise",
       "task.timestep_gradients"},
      {"dataset", "model"},
      {},
      {},
      {{"training.pretrain_ema", 0.0}, {"training.pretrain_condition_dropout", 0.0}}};
  return stage;
}

namespace {
// The task as a training stage sees it: options it does not declare (the influence loss's) at
// their defaults, which training never uses.
std::unique_ptr<Task> stage_task(const StageInputs& inputs) {
  Options options = default_options("[task]", task_option_specs());
  const Options declared = inputs.section("task");
  for (const auto& [name, value] : declared.values()) options.set(name, value);
  return make_task(inputs.get_string("task.name"), options);
}
// What one fine-tuning of the adapters reads: the finetune stage, and each retraining of the
// ground-truth and leave-one-out stages (plus what they add).
std::vector<std::string> fine_tuning_reads(std::vector<std::string> extra = {}) {
  std::vector<std::string> reads{"dataset",
                                 "model",
                                 "task",
                                 "experiment.seed",
                                 "training.epochs",
                                 "training.learning_rate",
                                 "training.batch_size",
                                 "training.optimizer",
                                 "training.weight_decay",
                                 "training.accumulation_steps",
                                 "training.schedule",
                                 "training.max_grad_norm"};
  reads.insert(reads.end(), extra.begin(), extra.end());
  return reads;
}
}  // namespace

// What the influence loss covers (task.scored, task.padding; the denoising gradients' noise and
// timestep layout) is not what fine-tuning learns.
const StageDeclaration& finetune_stage() {
  static const StageDeclaration stage{
      "finetune",
      3,
      {"base"},
      fine_tuning_reads(),
      {"task.scored", "task.padding", "task.shared_noise", "task.timestep_gradients"},
      {"dataset", "model"}};
  return stage;
}

// The fine-tuning, repeated on random subsets of the training set: what finetune reads, and how
// the subsets are drawn. How many queries are scored at once is a setting.
const StageDeclaration& ground_truth_stage() {
  static const StageDeclaration stage{"ground_truth",
                                      1,
                                      {"base"},
                                      fine_tuning_reads({"ground_truth"}),
                                      {},
                                      {"dataset", "model"},
                                      {"evaluation.gradient_batch_size"}};
  return stage;
}

// Leave-one-out: the fine-tuning repeated without single examples, with `repeats` training seeds.
// Which examples is not in the key (they come from the estimators' scores): each result file
// names its example, so any set is computed from the same directory.
const StageDeclaration& leave_one_out_stage() {
  static const StageDeclaration stage{"leave_one_out",
                                      1,
                                      {"base"},
                                      fine_tuning_reads({"leave_one_out.repeats"}),
                                      {},
                                      {"dataset", "model"},
                                      {"evaluation.gradient_batch_size", "leave_one_out.examples"}};
  return stage;
}

namespace {

// What a training needs to continue after an epoch as if never stopped.
struct TrainingState {
  std::int64_t epochs = 0, step = 0;
  double rate_sum = 0;
};

void save_training_state(const fs::path& file, const std::vector<at::Tensor>& parameters,
                         const std::vector<at::Tensor>& averages, torch::optim::Optimizer& optimizer,
                         const at::Generator& order, const TrainingState& state) {
  torch::serialize::OutputArchive archive, optimizer_archive;
  for (std::size_t i = 0; i < parameters.size(); ++i)
    archive.write(fmt::format("parameter{}", i), parameters[i].detach().clone());
  for (std::size_t i = 0; i < averages.size(); ++i) archive.write(fmt::format("average{}", i), averages[i]);
  optimizer.save(optimizer_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("order_generator", order.get_state());
  at::Generator global = at::detail::getDefaultCPUGenerator();
  {
    std::lock_guard<std::mutex> lock(global.mutex());
    archive.write("global_generator", global.get_state());
  }
  archive.write("progress",
                torch::tensor({double(state.epochs), double(state.step), state.rate_sum}, torch::kDouble));
  // Serialised in memory first: LibTorch's file writer finishes the file in its destructor, where a
  // full disk aborts the process instead of raising an error we can report.
  std::ostringstream bytes;
  archive.save_to(bytes);
  PendingEntry pending(file);
  write_file_atomic(pending.temporary, bytes.str());
  fs::path sidecar = file;
  sidecar += ".checksum";
  write_checksum_sidecar(pending.temporary, sidecar);
  pending.commit();
}

// The state of an interrupted training of the same key, loaded into parameters, optimizer and
// generators; nullopt (start afresh) when there is none or it does not fit.
std::optional<TrainingState> load_training_state(const fs::path& file,
                                                 const std::vector<at::Tensor>& parameters,
                                                 const std::vector<at::Tensor>& averages,
                                                 torch::optim::Optimizer& optimizer, at::Generator& order,
                                                 std::int64_t epochs) {
  if (!fs::exists(file)) return std::nullopt;
  if (std::string problem = verify_checksum_sidecar(file); !problem.empty()) {
    warn(fmt::format("training state {} failed its check ({}); training from the start", file.string(),
                     problem));
    return std::nullopt;
  }
  try {
    torch::serialize::InputArchive archive, optimizer_archive;
    archive.load_from(file.string());
    torch::Tensor progress, order_state, global_state;
    archive.read("progress", progress);
    TrainingState state{static_cast<std::int64_t>(progress[0].item<double>()),
                        static_cast<std::int64_t>(progress[1].item<double>()), progress[2].item<double>()};
    if (state.epochs < 1 || state.epochs >= epochs) return std::nullopt;
    std::vector<torch::Tensor> loaded(parameters.size());
    for (std::size_t i = 0; i < parameters.size(); ++i) {
      archive.read(fmt::format("parameter{}", i), loaded[i]);
      if (loaded[i].sizes() != parameters[i].sizes()) return std::nullopt;
    }
    std::vector<torch::Tensor> loaded_averages(averages.size());
    for (std::size_t i = 0; i < averages.size(); ++i) {
      archive.read(fmt::format("average{}", i), loaded_averages[i]);
      if (loaded_averages[i].sizes() != averages[i].sizes()) return std::nullopt;
    }
    archive.read("optimizer", optimizer_archive);
    archive.read("order_generator", order_state);
    archive.read("global_generator", global_state);
    {
      torch::NoGradGuard no_grad;
      for (std::size_t i = 0; i < parameters.size(); ++i) parameters[i].copy_(loaded[i]);
      for (std::size_t i = 0; i < averages.size(); ++i) averages[i].copy_(loaded_averages[i]);
    }
    optimizer.load(optimizer_archive);
    order.set_state(order_state);
    at::Generator global = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(global.mutex());
    global.set_state(global_state);
    return state;
  } catch (const std::exception& e) {
    warn(fmt::format("training state {} is unreadable ({}); training from the start", file.string(),
                     e.what()));
    return std::nullopt;
  }
}

}  // namespace

void train(Model& model, const std::function<at::Tensor(const Batch&)>& loss,
           const std::vector<at::Tensor>& parameters, const Batch& examples,
           const TrainingSchedule& schedule) {
  if (!schedule.resume_file.empty() && schedule.after_epoch)
    throw Error("internal: a resumable training cannot also call after_epoch");
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  if (schedule.optimizer == "sgd")
    optimizer = std::make_unique<torch::optim::SGD>(
        parameters,
        torch::optim::SGDOptions(schedule.learning_rate).momentum(0.9).weight_decay(schedule.weight_decay));
  else
    optimizer = std::make_unique<torch::optim::Adam>(
        parameters, torch::optim::AdamOptions(schedule.learning_rate).weight_decay(schedule.weight_decay));
  const std::int64_t n = examples.size(), batch_size = schedule.batch_size;
  const std::int64_t batches = (n + batch_size - 1) / batch_size, accumulation = schedule.accumulation_steps;
  const std::int64_t steps_per_epoch = (batches + accumulation - 1) / accumulation;
  const double total_steps = static_cast<double>(schedule.epochs * steps_per_epoch);
  auto generator = at::detail::createCPUGenerator(static_cast<std::uint64_t>(schedule.seed));
  model.set_training(true);
  std::optional<Progress> progress;
  if (schedule.show_progress) progress.emplace(schedule.label, schedule.epochs * batches, "batches");
  std::int64_t step = 0, first_epoch = 0;
  double rate_sum = 0;
  std::vector<torch::Tensor> averages;  // the moving average of the parameters (ema_decay > 0)
  if (schedule.ema_decay > 0)
    for (const auto& p : parameters) averages.push_back(p.detach().clone());
  if (!schedule.resume_file.empty())
    if (auto resumed = load_training_state(schedule.resume_file, parameters, averages, *optimizer, generator,
                                           schedule.epochs)) {
      first_epoch = resumed->epochs, step = resumed->step, rate_sum = resumed->rate_sum;
      log(fmt::format("{}: resuming after epoch {} of {} ({})", schedule.label, first_epoch, schedule.epochs,
                      schedule.resume_file.string()));
      if (progress) progress->advance(first_epoch * batches);
    }
  for (std::int64_t epoch = first_epoch; epoch < schedule.epochs; ++epoch) {
    torch::Tensor order = torch::randperm(n, generator, torch::kLong);
    for (std::int64_t b = 0; b < batches; ++b) {
      torch::Tensor index = order.narrow(0, b * batch_size, std::min(batch_size, n - b * batch_size));
      if (b % accumulation == 0) optimizer->zero_grad();
      Batch batch{examples.inputs.index_select(0, index), examples.targets.index_select(0, index),
                  examples.example_ids.index_select(0, index)};
      torch::Tensor value = loss(batch);
      (accumulation == 1 ? value : value / static_cast<double>(accumulation)).backward();
      if ((b + 1) % accumulation == 0 || b + 1 == batches) {
        if (schedule.max_grad_norm > 0) torch::nn::utils::clip_grad_norm_(parameters, schedule.max_grad_norm);
        if (schedule.linear_decay)  // Hugging Face's linear schedule without warm-up
          for (auto& group : optimizer->param_groups())
            group.options().set_lr(schedule.learning_rate * (1.0 - static_cast<double>(step) / total_steps));
        const double rate = schedule.linear_decay
                                ? schedule.learning_rate * (1.0 - static_cast<double>(step) / total_steps)
                                : schedule.learning_rate;
        optimizer->step();
        ++step;
        rate_sum += rate;
        if (!averages.empty()) {
          torch::NoGradGuard no_grad;
          const double decay = std::min(schedule.ema_decay, (1.0 + double(step)) / (10.0 + double(step)));
          for (std::size_t i = 0; i < averages.size(); ++i)
            averages[i].mul_(decay).add_(parameters[i].detach(), 1.0 - decay);
        }
      }
      if (progress) progress->advance();
    }
    if (schedule.after_epoch) schedule.after_epoch(epoch + 1, step, rate_sum);
    if (!schedule.resume_file.empty() && epoch + 1 < schedule.epochs)
      save_training_state(schedule.resume_file, parameters, averages, *optimizer, generator,
                          {epoch + 1, step, rate_sum});
  }
  if (progress) progress->finish();
  if (!averages.empty()) {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < averages.size(); ++i) parameters[i].copy_(averages[i]);
  }
  model.set_training(false);
  if (!schedule.resume_file.empty()) {  // done: nothing to resume
    fs::path sidecar = schedule.resume_file;
    sidecar += ".checksum";
    fs::remove(schedule.resume_file), fs::remove(sidecar);
  }
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
void train_probe_head(const StageInputs& inputs, Model& model, LinearProbe& probe, const Batch& pretrain,
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
      chunks.push_back(probe.probe_features(pretrain.inputs.narrow(0, s, count)));
      progress.advance(count);
    }
    features = torch::cat(chunks);
  }
  train(
      model,
      [&](const Batch& b) {
        return torch::nn::functional::cross_entropy(probe.probe_head(b.inputs), b.targets);
      },
      base, Batch{features, pretrain.targets, pretrain.example_ids}, schedule);
}

// The fine-tuning of the adapters on `examples` as the finetune stage runs it (the ground-truth
// stage repeats it on subsets): the experiment's seed draws dropout, batch order and a task's noise.
void fine_tune_adapters(const StageInputs& inputs, Model& model, const std::vector<torch::Tensor>& lora,
                        const Batch& examples, const std::string& label, bool show_progress = true,
                        std::optional<std::int64_t> training_seed = std::nullopt,
                        decltype(TrainingSchedule::after_epoch) after_epoch = {}) {
  const std::int64_t seed = training_seed.value_or(inputs.get_int("experiment.seed"));
  torch::manual_seed(static_cast<std::uint64_t>(seed));  // dropout masks (and a task's own draws)
  auto task = stage_task(inputs);
  TrainingSchedule schedule;
  schedule.epochs = inputs.get_int("training.epochs");
  schedule.learning_rate = inputs.get_double("training.learning_rate");
  schedule.batch_size = inputs.get_int("training.batch_size");
  schedule.optimizer = inputs.get_string("training.optimizer");
  schedule.weight_decay = inputs.get_double("training.weight_decay");
  schedule.accumulation_steps = inputs.get_int("training.accumulation_steps");
  schedule.linear_decay = inputs.get_string("training.schedule") == "linear";
  schedule.max_grad_norm = inputs.get_double("training.max_grad_norm");
  schedule.seed = seed;
  schedule.label = label;
  schedule.show_progress = show_progress;
  schedule.after_epoch = std::move(after_epoch);
  train(
      model, [&](const Batch& b) { return task->training_loss(model, b); }, lora, examples, schedule);
}

// Every query's loss under the model as it is (float64, one per query).
torch::Tensor query_losses(Model& model, const Task& task, const LoadedData& data, std::int64_t batch_size) {
  torch::NoGradGuard no_grad;
  model.set_training(false);
  torch::Tensor losses = torch::zeros({data.validation.size()}, torch::kDouble);
  for (std::int64_t s = 0; s < data.validation.size(); s += batch_size) {
    const auto count = std::min(batch_size, data.validation.size() - s);
    losses.narrow(0, s, count).copy_(task.example_losses(model, data.validation.slice(s, count)));
  }
  return losses;
}

// The adapters as they are now (at their initialisation on the base), to retrain from again and
// again: the ground-truth and leave-one-out stages.
struct AdapterSnapshot {
  std::vector<torch::Tensor> live, saved;
  explicit AdapterSnapshot(Model& model) : live(lora_tensors(model)) {
    for (const auto& t : live) saved.push_back(t.detach().clone());
  }
  void restore() {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < live.size(); ++i) live[i].copy_(saved[i]);
  }
};

// Every query's loss after the fine-tuning on the training rows `kept`, from the snapshot: with
// the finetune stage's own initialisation and seed, or (`seed` given) adapters re-initialised
// and trained with that seed.
torch::Tensor losses_after_fine_tuning(const StageInputs& inputs, Model& model, AdapterSnapshot& adapters,
                                       const LoadedData& data, const torch::Tensor& kept, const Task& task,
                                       std::optional<std::int64_t> seed = std::nullopt) {
  adapters.restore();
  if (seed) {
    torch::NoGradGuard no_grad;
    for (auto* layer : model.lora_layers()) layer->reset_adapter(static_cast<std::uint64_t>(*seed));
  }
  Batch subset{data.train_fit.inputs.index_select(0, kept), data.train_fit.targets.index_select(0, kept),
               data.train_fit.example_ids.index_select(0, kept)};
  fine_tune_adapters(inputs, model, adapters.live, subset, "", /*show_progress=*/false, seed);
  return query_losses(model, task, data, inputs.get_int("evaluation.gradient_batch_size"));
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
      if (auto* probe = capability<LinearProbe>(model)) {
        schedule.label = "training the head";
        train_probe_head(inputs, model, *probe, data.pretrain, base, schedule);
      } else {
        schedule.label = "pretraining base";
        // An interrupted pretraining (an hour for a 28x28 base) resumes after its last epoch.
        schedule.resume_file = file;
        schedule.resume_file += ".partial";
        schedule.ema_decay = inputs.get_double("training.pretrain_ema");
        const double dropout = inputs.get_double("training.pretrain_condition_dropout");
        auto task = stage_task(inputs);  // dropout > 0 only with task denoising (config.cpp checks)
        train(
            model,
            [&](const Batch& b) {
              if (dropout == 0) return task->training_loss(model, b);
              // Classifier-free guidance's training: some images without their condition (id -1).
              Batch dropped = b;
              dropped.targets =
                  torch::where(torch::rand({b.size()}) < dropout, torch::full_like(b.targets, -1), b.targets);
              return task->training_loss(model, dropped);
            },
            base, data.pretrain, schedule);
      }
      save_tensors(file, base);
    }
    outcome.stage_seconds["pretrain"] = seconds_since(start);
  }
  for (auto& t : base) t.set_requires_grad(false);  // the base stays frozen from here on
  for (auto& t : lora) t.set_requires_grad(true);
}

fs::path adapter_file(const std::string& finetune_key, const RunPaths& paths) {
  return cache_root_of(paths) / "finetune" / (finetune_key + ".pt");
}

void finetune(const StageInputs& inputs, Model& model, const LoadedData& data, const RunPaths& paths,
              RunOutcome& outcome, std::int64_t checkpoints) {
  auto start = Clock::now();
  if (inputs.present("model.adapter")) {  // trained elsewhere: read, never retrained (cheap, not cached)
    const std::string adapter = inputs.get_string("model.adapter");
    log(fmt::format("LoRA adapters from the PEFT adapter {} (no fine-tuning)", adapter));
    import_peft_adapter(model, inputs.get_string("model.plugin"), adapter);
    outcome.stage_cached["finetune"] = false;
    outcome.stage_seconds["finetune"] = seconds_since(start);
    return;
  }
  std::vector<torch::Tensor> lora = lora_tensors(model);
  if (inputs.present("model.adapter_key")) {  // another experiment's fine-tuning (pipeline: adapter_from)
    const fs::path file = adapter_file(inputs.get_string("model.adapter_key"), paths);
    if (!load_tensors(file, lora))  // a run's config.toml, loaded after the cache lost the adapter
      throw Error(fmt::format(
          "the adapter this run takes from {} (model.adapter_from; its finetune key {}) is "
          "not in the cache ({}): run that experiment again to fine-tune it",
          inputs.get_string("model.adapter_from"), inputs.get_string("model.adapter_key"), file.string()));
    log(fmt::format("LoRA adapters from the fine-tuning of {} (model.adapter_from)",
                    inputs.get_string("model.adapter_from")));
    outcome.stage_cached["finetune"] = true;
    outcome.stage_seconds["finetune"] = seconds_since(start);
    return;
  }
  fs::path file = adapter_file(inputs.key(), paths);
  outcome.stage_cached["finetune"] = load_tensors(file, lora);
  if (!outcome.stage_cached["finetune"]) {
    if (checkpoints > 0)  // one training for both: the last checkpoint is this stage's adapter
      load_adapters(model, fine_tuning_checkpoints(inputs, model, data, checkpoints, paths).back().adapters);
    else
      fine_tune_adapters(inputs, model, lora, data.train_fit, "fine-tuning LoRA");
    save_tensors(file, lora);
  }
  outcome.stage_seconds["finetune"] = seconds_since(start);
}

void load_adapters(Model& model, const std::vector<at::Tensor>& adapters) {
  std::vector<torch::Tensor> lora = lora_tensors(model);
  if (lora.size() != adapters.size())
    throw Error(
        fmt::format("a checkpoint holds {} adapter tensors, the model has {}", adapters.size(), lora.size()));
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < lora.size(); ++i) lora[i].copy_(adapters[i]);
}

std::vector<Checkpoint> fine_tuning_checkpoints(const StageInputs& inputs, Model& model,
                                                const LoadedData& data, std::int64_t count,
                                                const RunPaths& paths) {
  if (inputs.present("model.adapter") || inputs.present("model.adapter_key"))
    throw Error(
        "[checkpoints] needs the run's own fine-tuning: this run takes its adapter from elsewhere "
        "([model] adapter or adapter_from), whose training inflab did not see");
  const std::int64_t epochs = inputs.get_int("training.epochs");
  std::vector<std::int64_t> at_epoch;  // epochs completed at each checkpoint
  for (std::int64_t c = 1; c <= count; ++c)
    at_epoch.push_back(static_cast<std::int64_t>(std::llround(double(epochs) * double(c) / double(count))));
  const fs::path directory = cache_root_of(paths) / "checkpoints" / fmt::format("{}-{}", inputs.key(), count);
  std::vector<torch::Tensor> lora = lora_tensors(model);
  std::vector<Checkpoint> out(static_cast<std::size_t>(count));
  auto file = [&](std::size_t c) { return directory / fmt::format("checkpoint_{:03d}.pt", c + 1); };
  bool cached = true;
  for (std::size_t c = 0; c < out.size() && cached; ++c) {
    std::vector<torch::Tensor> held;
    for (const auto& t : lora) held.push_back(torch::empty_like(t));
    held.push_back(torch::zeros({2}, torch::kDouble));  // epoch, learning rate
    cached = load_tensors(file(c), held);
    if (cached) {
      out[c].epoch = static_cast<std::int64_t>(held.back()[0].item<double>());
      out[c].learning_rate = held.back()[1].item<double>();
      held.pop_back();
      out[c].adapters = std::move(held);
    }
  }
  if (cached) return out;
  AdapterSnapshot initial(model);
  std::size_t next = 0;
  std::int64_t steps_before = 0;
  double rate_before = 0;
  fine_tune_adapters(
      inputs, model, lora, data.train_fit, fmt::format("fine-tuning LoRA, keeping {} checkpoints", count),
      true, std::nullopt, [&](std::int64_t done, std::int64_t steps, double rate_sum) {
        while (next < out.size() && at_epoch[next] == done) {
          Checkpoint& checkpoint = out[next];
          checkpoint.epoch = done;
          checkpoint.learning_rate =
              steps > steps_before ? (rate_sum - rate_before) / double(steps - steps_before) : 0.0;
          for (const auto& t : lora) checkpoint.adapters.push_back(t.detach().clone());
          std::vector<torch::Tensor> saved = checkpoint.adapters;
          saved.push_back(torch::tensor({double(done), checkpoint.learning_rate}, torch::kDouble));
          save_tensors(file(next), saved);
          ++next, steps_before = steps, rate_before = rate_sum;
        }
      });
  // The last checkpoint is the finetune stage's adapter: the same training, so the same bits.
  std::vector<torch::Tensor> finetuned;
  for (const auto& t : lora) finetuned.push_back(torch::empty_like(t));
  if (load_tensors(adapter_file(inputs.key(), paths), finetuned))
    for (std::size_t i = 0; i < finetuned.size(); ++i)
      if (!finetuned[i].equal(out.back().adapters[i]))
        throw Error(fmt::format(
            "the fine-tuning repeated for [checkpoints] ended at other adapters than the finetune stage's "
            "cached ones ({}): the training is not deterministic here (threads or kernels changed since "
            "the cache was written?); clear that cache entry and rerun",
            adapter_file(inputs.key(), paths).string()));
  initial.restore();
  return out;
}

GroundTruth ground_truth(const StageInputs& inputs, Model& model, const LoadedData& data,
                         const RunPaths& paths, RunOutcome& outcome) {
  auto start = Clock::now();
  const std::int64_t subsets = inputs.get_int("ground_truth.subsets");
  const std::int64_t n = data.train.size();
  const auto size = std::max<std::int64_t>(
      1, static_cast<std::int64_t>(std::llround(inputs.get_double("ground_truth.fraction") * double(n))));
  const fs::path directory = cache_root_of(paths) / "ground_truth" / inputs.key();
  fs::create_directories(directory);
  remove_stale_temporaries(directory);
  auto task = stage_task(inputs);
  AdapterSnapshot adapters(model);
  GroundTruth truth;
  truth.subsets = torch::zeros({subsets, n}, torch::kBool);
  truth.losses = torch::zeros({subsets, data.validation.size()}, torch::kDouble);
  std::int64_t reused = 0;
  Progress progress("ground truth: fine-tuning on subsets", subsets, "subsets");
  for (std::int64_t m = 0; m < subsets; ++m) {
    // Subset m: `size` examples drawn by (seed, m) alone, so any subset can be recomputed alone.
    auto generator = at::detail::createCPUGenerator(
        static_cast<std::uint64_t>(inputs.get_int("ground_truth.seed")) * 1000003u +
        static_cast<std::uint64_t>(m));
    torch::Tensor chosen = std::get<0>(torch::randperm(n, generator, torch::kLong).narrow(0, 0, size).sort());
    truth.subsets[m].index_fill_(0, chosen, true);
    // Each subset's file: its examples (a mask) and the queries' losses after fine-tuning on it.
    std::vector<torch::Tensor> result{torch::zeros({n}, torch::kBool), truth.losses[m].clone()};
    const fs::path file = directory / fmt::format("subset_{:05d}.pt", m);
    if (load_tensors(file, result) && result[0].equal(truth.subsets[m])) {  // from an interrupted run
      truth.losses[m].copy_(result[1]);
      ++reused, progress.advance();
      continue;
    }
    truth.losses[m].copy_(losses_after_fine_tuning(inputs, model, adapters, data, chosen, *task));
    save_tensors(file, {truth.subsets[m], truth.losses[m]});
    progress.advance();
  }
  progress.finish();
  adapters.restore();  // the model leaves as it came: adapters at their initialisation
  if (reused)
    log(fmt::format("ground truth: {} of {} subsets from an earlier, interrupted run", reused, subsets));
  outcome.stage_seconds["ground_truth"] = seconds_since(start);
  outcome.stage_cached["ground_truth"] = reused == subsets;
  return truth;
}

LeaveOneOut leave_one_out(const StageInputs& inputs, Model& model, const LoadedData& data,
                          const std::vector<std::int64_t>& rows, const RunPaths& paths, RunOutcome& outcome) {
  auto start = Clock::now();
  const std::int64_t repeats = inputs.get_int("leave_one_out.repeats"), n = data.train.size();
  const fs::path directory = cache_root_of(paths) / "leave_one_out" / inputs.key();
  fs::create_directories(directory);
  remove_stale_temporaries(directory);
  auto task = stage_task(inputs);
  AdapterSnapshot adapters(model);
  const std::int64_t ids_total = static_cast<std::int64_t>(rows.size());
  std::int64_t reused = 0;
  Progress progress("leave-one-out: fine-tuning without single examples", (ids_total + 1) * repeats,
                    "fine-tunings");
  // The mean query loss after fine-tuning on `kept` with training seed r (initialisation, batch
  // order, dropout): from its cache file when an earlier run computed it.
  auto mean_loss = [&](const torch::Tensor& kept, std::int64_t repeat, const std::string& name) {
    // Seed 0 is the finetune stage's own (its initialisation and seed); the others redraw both.
    const std::optional<std::int64_t> seed =
        repeat == 0 ? std::nullopt
                    : std::optional<std::int64_t>(inputs.get_int("experiment.seed") * 1000 + repeat);
    std::vector<torch::Tensor> result{torch::zeros({data.validation.size()}, torch::kDouble)};
    const fs::path file = directory / fmt::format("{}_r{}.pt", name, repeat);
    if (!load_tensors(file, result)) {
      result[0] = losses_after_fine_tuning(inputs, model, adapters, data, kept, *task, seed);
      save_tensors(file, result);
    } else {
      ++reused;
    }
    progress.advance();
    return result[0].mean().item<double>();
  };
  LeaveOneOut out;
  out.rows = rows;
  out.change.assign(rows.size(), 0.0);
  const torch::Tensor all = torch::arange(n, torch::kLong);
  for (std::int64_t r = 0; r < repeats; ++r) {
    const double full = mean_loss(all, r, "full");
    auto& changes = out.change_per_seed.emplace_back(rows.size(), 0.0);
    for (std::size_t k = 0; k < rows.size(); ++k) {
      const torch::Tensor kept =
          torch::cat({all.narrow(0, 0, rows[k]), all.narrow(0, rows[k] + 1, n - rows[k] - 1)});
      const auto id = data.train.example_ids[rows[k]].item<std::int64_t>();
      changes[k] = mean_loss(kept, r, fmt::format("without_{}", id)) - full;
      out.change[k] += changes[k] / static_cast<double>(repeats);
    }
  }
  progress.finish();
  adapters.restore();  // the model leaves as it came: adapters at their initialisation
  if (reused)
    log(fmt::format("leave-one-out: {} of {} fine-tunings from an earlier run", reused,
                    (ids_total + 1) * repeats));
  outcome.stage_seconds["leave_one_out"] = seconds_since(start);
  outcome.stage_cached["leave_one_out"] = reused == (ids_total + 1) * repeats;
  return out;
}

}  // namespace inflab
