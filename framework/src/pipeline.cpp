#include "inflab/pipeline.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "inflab/distributed.hpp"
#include "inflab/error.hpp"
#include "inflab/io.hpp"
#include "inflab/lora.hpp"
#include "inflab/metrics.hpp"
#include "inflab/progress.hpp"
#include "inflab/registry.hpp"
#include "inflab/runtime.hpp"
#include "inflab/scoring.hpp"

namespace fs = std::filesystem;

namespace inflab {

fs::path default_cache_root() {
  if (const char* env = std::getenv("INFLAB_CACHE"); env && *env) return env;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return fs::path(xdg) / "inflab";
  if (const char* home = std::getenv("HOME"); home && *home) return fs::path(home) / ".cache" / "inflab";
  return fs::temp_directory_path() / "inflab-cache";
}

namespace {

// A cache entry (file or directory) is written under `temporary` and renamed into place by
// commit(): an interrupted write is never mistaken for a hit, and a failure (a full disk, a faulty
// plugin) leaves nothing behind. A killed process's temporaries go at the next start
// (remove_stale_temporaries).
class PendingEntry {
 public:
  explicit PendingEntry(fs::path final_path) : final_(std::move(final_path)) {
    temporary = final_;
    temporary += fmt::format(".tmp-{}", ::getpid());
    fs::remove_all(temporary);
    fs::create_directories(final_.parent_path());
  }
  PendingEntry(const PendingEntry&) = delete;
  PendingEntry& operator=(const PendingEntry&) = delete;
  ~PendingEntry() {
    std::error_code ignored;
    if (!committed_) fs::remove_all(temporary, ignored);
  }
  void commit() {
    fs::remove_all(final_);
    fs::rename(temporary, final_);
    committed_ = true;
  }
  fs::path temporary;

 private:
  fs::path final_;
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

std::string describe_plugin(Registry& registry, PluginKind kind, const std::string& name) {
  return fmt::format("{} plugin '{}' ({})", to_string(kind), name,
                     registry.find(kind, name).file.filename().string());
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void log(const std::string& message) { std::fprintf(stderr, "[inflab] %s\n", message.c_str()); }

// Flips exactly round(fraction * n) labels, each to a different class chosen uniformly.
std::vector<std::uint8_t> flip_labels(std::vector<std::int64_t>& labels, std::int64_t classes,
                                      double fraction, std::int64_t seed) {
  std::vector<std::uint8_t> flipped(labels.size(), 0);
  if (fraction <= 0) return flipped;
  if (classes < 2) throw Error("label_noise needs at least two classes");
  std::mt19937_64 rng(static_cast<std::uint64_t>(seed));
  std::vector<std::size_t> order(labels.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  auto count = static_cast<std::size_t>(std::llround(fraction * static_cast<double>(labels.size())));
  std::uniform_int_distribution<std::int64_t> other(1, classes - 1);
  for (std::size_t k = 0; k < count; ++k) {
    std::size_t i = order[k];
    labels[i] = (labels[i] + other(rng)) % classes;
    flipped[i] = 1;
  }
  return flipped;
}

std::vector<std::int64_t> to_vector(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kLong).contiguous();
  return std::vector<std::int64_t>(c.data_ptr<std::int64_t>(), c.data_ptr<std::int64_t>() + c.numel());
}

void train(Model& model, const std::function<torch::Tensor(const torch::Tensor&)>& forward,
           const std::vector<torch::Tensor>& parameters, const torch::Tensor& inputs,
           const torch::Tensor& labels, std::int64_t epochs, double learning_rate, std::int64_t batch_size,
           const std::string& optimizer_name, double weight_decay, std::int64_t seed,
           const std::string& label) {
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  if (optimizer_name == "sgd")
    optimizer = std::make_unique<torch::optim::SGD>(
        parameters, torch::optim::SGDOptions(learning_rate).momentum(0.9).weight_decay(weight_decay));
  else
    optimizer = std::make_unique<torch::optim::Adam>(
        parameters, torch::optim::AdamOptions(learning_rate).weight_decay(weight_decay));
  const std::int64_t n = inputs.size(0);
  const std::int64_t batches = (n + batch_size - 1) / batch_size;
  auto generator = at::detail::createCPUGenerator(static_cast<std::uint64_t>(seed));
  model.set_training(true);
  Progress progress(label, epochs * batches, "batches");
  for (std::int64_t epoch = 0; epoch < epochs; ++epoch) {
    torch::Tensor order = torch::randperm(n, generator, torch::kLong);
    for (std::int64_t b = 0; b < batches; ++b) {
      torch::Tensor index = order.narrow(0, b * batch_size, std::min(batch_size, n - b * batch_size));
      optimizer->zero_grad();
      torch::Tensor loss = torch::nn::functional::cross_entropy(forward(inputs.index_select(0, index)),
                                                                labels.index_select(0, index));
      loss.backward();
      optimizer->step();
      progress.advance();
    }
  }
  progress.finish();
  model.set_training(false);
}

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
    log(fmt::format("warning: cache entry {} failed its check ({}); recomputing", path.string(), problem));
    return false;
  }
  std::vector<torch::Tensor> loaded;
  try {
    torch::load(loaded, path.string());
  } catch (const std::exception& e) {
    log(fmt::format("cache file {} is unreadable ({}); recomputing", path.string(), e.what()));
    return false;
  }
  if (loaded.size() != targets.size()) return false;
  for (std::size_t i = 0; i < loaded.size(); ++i)
    if (loaded[i].sizes() != targets[i].sizes()) return false;
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < loaded.size(); ++i) targets[i].copy_(loaded[i]);
  return true;
}

}  // namespace

GradientStore prepare_gradients(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                                RunOutcome* outcome) {
  RunOutcome local;
  RunOutcome& out = outcome ? *outcome : local;
  fs::path cache = paths.cache_root.empty() ? default_cache_root() : paths.cache_root;
  // Distributed: each rank extracts (and caches) the gradients of its shard of the training rows.
  const int world_size = distributed_world_size();
  std::string gradient_key = config.gradients_key_text;
  if (world_size > 1) gradient_key += fmt::format("\nshard {} of {}", distributed_rank(), world_size);
  fs::path gradient_dir = cache / "gradients" / content_hash(gradient_key);
  for (const char* stage : {"base", "finetune", "gradients", "fits"}) remove_stale_temporaries(cache / stage);
  if (fs::exists(gradient_dir / "blocks.json")) {
    if (std::string problem = verify_directory_checksums(gradient_dir); !problem.empty()) {
      log(fmt::format("warning: cached gradients {} failed their check ({}); recomputing",
                      gradient_dir.string(), problem));
      fs::remove_all(gradient_dir);
    }
  }
  if (fs::exists(gradient_dir / "blocks.json")) {
    auto start = Clock::now();
    GradientStore store = load_gradient_store(gradient_dir);
    out.stage_seconds["gradients"] = seconds_since(start);
    out.stage_cached["gradients"] = true;
    log(fmt::format("gradients: cached ({})", gradient_dir.string()));
    return store;
  }

  auto start = Clock::now();
  auto dataset =
      registry.create_as<Dataset>(PluginKind::Dataset, config.dataset.plugin, config.dataset.options);
  DatasetSplits data = in_plugin(describe_plugin(registry, PluginKind::Dataset, config.dataset.plugin),
                                 [&] { return dataset->load(); });
  if (data.train.size() == 0 || data.validation.size() == 0)
    throw Error(
        fmt::format("dataset '{}' returned an empty training or validation split", config.dataset.plugin));
  ExampleMeta train_meta, query_meta;
  train_meta.ids = data.train.ids;
  train_meta.labels = to_vector(data.train.labels);
  train_meta.observed_labels = train_meta.labels;
  train_meta.flipped =
      flip_labels(train_meta.observed_labels, data.num_classes(), config.label_noise, config.noise_seed);
  query_meta.ids = data.validation.ids;
  query_meta.labels = to_vector(data.validation.labels);
  torch::Tensor observed = torch::tensor(train_meta.observed_labels, torch::kLong);
  out.stage_seconds["data"] = seconds_since(start);
  log(fmt::format("data: {} train ({} flipped), {} validation, {} pretrain examples, {} classes",
                  data.train.size(), std::count(train_meta.flipped.begin(), train_meta.flipped.end(), 1),
                  data.validation.size(), data.pretrain.size(), data.num_classes()));

  auto model = registry.create_as<Model>(PluginKind::Model, config.model.plugin, config.model.options);
  // Text datasets: the model's tokenizer turns texts into its input tensor.
  for (Split* split : {&data.train, &data.validation, &data.pretrain})
    if (!split->texts.empty() && !split->inputs.defined()) {
      auto encode_start = Clock::now();
      split->inputs = model->encode_texts(split->texts);
      out.stage_seconds["tokenize"] += seconds_since(encode_start);
    }
  if (data.pretrain.size() > 0 && !data.pretrain.inputs.defined())
    throw Error(fmt::format("dataset '{}' gave a pretrain split without inputs", config.dataset.plugin));
  DataShape shape;
  for (std::int64_t d = 1; d < data.train.inputs.dim(); ++d)
    shape.input_shape.push_back(data.train.inputs.size(d));
  shape.num_classes = data.num_classes();
  in_plugin(describe_plugin(registry, PluginKind::Model, config.model.plugin),
            [&] { model->build(shape, config.lora, static_cast<std::uint64_t>(config.seed)); });
  std::vector<torch::Tensor> lora = lora_tensors(*model);
  if (lora.empty())
    throw Error(fmt::format("model '{}': no layer matches model.lora.targets", config.model.plugin));
  std::vector<torch::Tensor> base;
  for (auto& [name, tensor] : model->base_parameters()) base.push_back(tensor);

  if (model->needs_base_pretraining()) {
    start = Clock::now();
    fs::path file = cache / "base" / (content_hash(config.pretrain_key_text) + ".pt");
    out.stage_cached["pretrain"] = load_tensors(file, base);
    if (!out.stage_cached["pretrain"]) {
      if (data.pretrain.size() == 0)
        throw Error(fmt::format("model '{}' needs base pretraining but dataset '{}' has no pretrain split",
                                config.model.plugin, config.dataset.plugin));
      for (auto& t : lora) t.set_requires_grad(false);
      for (auto& t : base) t.set_requires_grad(true);
      if (model->has_probe()) {
        // A head on a frozen trunk: compute the trunk's features once, train the head on them.
        torch::Tensor features;
        {
          torch::NoGradGuard no_grad;
          model->set_training(false);
          std::vector<torch::Tensor> chunks;
          Progress progress("probe features", data.pretrain.size(), "examples");
          for (std::int64_t s = 0; s < data.pretrain.size(); s += config.training.batch_size) {
            auto count = std::min(config.training.batch_size, data.pretrain.size() - s);
            chunks.push_back(model->probe_features(data.pretrain.inputs.narrow(0, s, count)));
            progress.advance(count);
          }
          features = torch::cat(chunks);
        }
        train(
            *model, [&](const torch::Tensor& f) { return model->probe_head(f); }, base, features,
            data.pretrain.labels, config.training.pretrain_epochs, config.training.pretrain_learning_rate,
            config.training.batch_size, "adam", 0.0, 0, "training the head");
      } else {
        train(
            *model, [&](const torch::Tensor& x) { return model->forward(x); }, base, data.pretrain.inputs,
            data.pretrain.labels, config.training.pretrain_epochs, config.training.pretrain_learning_rate,
            config.training.batch_size, "adam", 0.0, 0, "pretraining base");
      }
      save_tensors(file, base);
    }
    out.stage_seconds["pretrain"] = seconds_since(start);
  }
  for (auto& t : base) t.set_requires_grad(false);  // the base stays frozen from here on
  for (auto& t : lora) t.set_requires_grad(true);

  start = Clock::now();
  fs::path finetune_file = cache / "finetune" / (content_hash(config.finetune_key_text) + ".pt");
  out.stage_cached["finetune"] = load_tensors(finetune_file, lora);
  if (!out.stage_cached["finetune"]) {
    torch::manual_seed(static_cast<std::uint64_t>(config.seed));  // dropout masks
    train(
        *model, [&](const torch::Tensor& x) { return model->forward(x); }, lora, data.train.inputs, observed,
        config.training.epochs, config.training.learning_rate, config.training.batch_size,
        config.training.optimizer, config.training.weight_decay, config.seed, "fine-tuning LoRA");
    save_tensors(finetune_file, lora);
  }
  out.stage_seconds["finetune"] = seconds_since(start);

  start = Clock::now();
  PendingEntry pending(gradient_dir);
  const fs::path& temporary = pending.temporary;
  const auto dtype = config.evaluation.gradient_dtype == "float16" ? torch::kHalf : torch::kFloat;
  const Shard shard = shard_of(data.train.size());
  torch::Tensor train_inputs = data.train.inputs.narrow(0, shard.begin, shard.size());
  torch::Tensor train_labels = observed.narrow(0, shard.begin, shard.size());
  if (world_size > 1) {
    auto cut = [&](auto& v) {
      v = std::decay_t<decltype(v)>(v.begin() + shard.begin, v.begin() + shard.end);
    };
    cut(train_meta.ids), cut(train_meta.labels), cut(train_meta.observed_labels), cut(train_meta.flipped);
  }
  std::int64_t width = 0;
  for (const auto& t : lora) width += t.numel();
  const double train_mb = static_cast<double>(shard.size()) * static_cast<double>(width) *
                          static_cast<double>(c10::elementSize(dtype)) / 1048576.0;
  // Over the budget (or 16-bit): extraction writes each batch straight into mapped files.
  const bool on_disk = train_mb > config.evaluation.gradient_memory_mb || dtype != torch::kFloat;
  BlockAllocator to_disk = [&](const std::string& block, std::int64_t rows, std::int64_t cols) {
    return create_mapped_npy(temporary / "train" / (block + ".npy"), {rows, cols}, dtype);
  };
  if (on_disk)
    log(fmt::format("gradients: {:.0f} MiB of training gradients ({}) go to memory-mapped files in {}",
                    train_mb, config.evaluation.gradient_dtype, gradient_dir.string()));
  GradientStore store;
  store.train =
      per_example_gradients(*model, train_inputs, train_labels, config.evaluation.gradient_batch_size,
                            "train gradients", /*factors=*/true, on_disk ? to_disk : BlockAllocator{});
  store.query = per_example_gradients(*model, data.validation.inputs, data.validation.labels,
                                      config.evaluation.gradient_batch_size, "validation gradients");
  store.train_meta = std::move(train_meta);
  store.query_meta = std::move(query_meta);
  save_gradient_store(temporary, store, /*train_values_written=*/on_disk);
  write_directory_checksums(temporary);
  pending.commit();
  if (dtype != torch::kFloat) store = load_gradient_store(gradient_dir);  // float32 arithmetic
  out.stage_seconds["gradients"] = seconds_since(start);
  out.stage_cached["gradients"] = false;
  return store;
}

namespace {

std::vector<double> to_doubles(const torch::Tensor& t) {
  torch::Tensor c = t.to(torch::kDouble).contiguous().reshape({-1});
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

std::string metrics_csv(const std::vector<EstimatorOutcome>& estimators) {
  std::string csv = "estimator,metric,value\n";
  for (const auto& e : estimators) {
    csv += fmt::format("{},seconds,{:.6f}\n", e.label, e.seconds);
    for (const auto& [metric, value] : e.metrics)
      csv += fmt::format("{},{},{:.8g}\n", e.label, metric, value);
  }
  return csv;
}

std::vector<EstimatorOutcome> read_metrics_csv(const fs::path& file) {
  std::vector<EstimatorOutcome> out;
  std::stringstream lines(read_file(file));
  std::string line;
  std::getline(lines, line);  // header
  while (std::getline(lines, line)) {
    std::stringstream fields(line);
    std::string label, metric, value;
    std::getline(fields, label, ',');
    std::getline(fields, metric, ',');
    std::getline(fields, value, ',');
    if (out.empty() || out.back().label != label) out.push_back({label, 0, {}});
    if (metric == "seconds")
      out.back().seconds = std::stod(value);
    else
      out.back().metrics[metric] = std::stod(value);
  }
  return out;
}

}  // namespace

RunOutcome run_experiment(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                          bool resume) {
  RunOutcome outcome;
  outcome.directory = paths.results_root / config.name / config.run_name;
  fs::path metrics_file = outcome.directory / "metrics.csv";
  // Distributed: every rank computes, rank 0 alone writes the results (identical to one process).
  const int world_size = distributed_world_size();
  const bool writer = distributed_rank() == 0;
  const std::uint64_t run_bytes_before = distributed_bytes_communicated();
  // A run is finished when metrics.csv (written last) exists for the same resolved config.
  bool finished = resume && fs::exists(metrics_file) && fs::exists(outcome.directory / "config.toml") &&
                  read_file(outcome.directory / "config.toml") == config.resolved_toml;
  if (world_size > 1)  // all ranks must take the same path, or one would wait for the others
    finished = sum_over_ranks(finished ? 1.0 : 0.0) == world_size;
  if (finished) {
    outcome.skipped = true;
    outcome.estimators = read_metrics_csv(metrics_file);
    return outcome;
  }
  if (world_size > 1)
    for (const auto& spec : config.estimators) {
      auto probe = registry.create_as<Estimator>(PluginKind::Estimator, spec.plugin, spec.options);
      if (!probe->supports_distributed())
        throw Error(fmt::format(
            "estimator '{}' (plugin '{}') does not support distributed runs with these options (see "
            "`inflab plugins {}`); run it in one process or remove it",
            spec.label, spec.plugin, spec.plugin));
    }
  if (writer) {
    fs::create_directories(outcome.directory);
    fs::remove(metrics_file);
    write_file_atomic(outcome.directory / "config.toml", config.resolved_toml);
  }

  GradientStore store = prepare_gradients(config, registry, paths, &outcome);
  select_blocks(store, config.evaluation.blocks);
  if (world_size > 1) {
    combine_factors_over_ranks(store.train);
    gather_meta_over_ranks(store.train_meta);
  }
  const bool aggregate = config.evaluation.mode == "aggregate";
  std::vector<int> flipped(store.train_meta.flipped.begin(), store.train_meta.flipped.end());
  std::map<std::string, std::vector<double>> all_scores;
  nlohmann::json diagnostics;

  for (const auto& spec : config.estimators) {
    auto estimator = registry.create_as<Estimator>(PluginKind::Estimator, spec.plugin, spec.options);
    const std::string who = fmt::format("estimator '{}' ({})", spec.label,
                                        describe_plugin(registry, PluginKind::Estimator, spec.plugin));
    auto start = Clock::now();
    const std::uint64_t bytes_before = distributed_bytes_communicated();
    // Fitted state is cached by the gradients it was fitted on and the estimator's options.
    std::string fit_key = config.gradients_key_text + "\nestimator " + spec.plugin;
    if (world_size > 1) fit_key += fmt::format("\nrank {} of {}", distributed_rank(), world_size);
    for (const auto& block : store.train) fit_key += "\nblock " + block.name;
    for (const auto& [name, value] : spec.options.values())
      fit_key += "\n" + name + "=" + format_value(value);
    fs::path fit_dir =
        (paths.cache_root.empty() ? default_cache_root() : paths.cache_root) / "fits" / content_hash(fit_key);
    bool fit_cached = false;
    if (fs::exists(fit_dir / "complete")) {
      if (std::string problem = verify_directory_checksums(fit_dir); !problem.empty())
        log(fmt::format("warning: cached fit {} failed its check ({}); fitting again", fit_dir.string(),
                        problem));
      else
        fit_cached = in_plugin(who, [&] { return estimator->load_fit(fit_dir.string(), store.train); });
    }
    // Fitting has collectives: the ranks fit unless every one of them found its cached fit.
    if (world_size > 1 && sum_over_ranks(fit_cached ? 1.0 : 0.0) != world_size) fit_cached = false;
    if (!fit_cached) {
      in_plugin(who, [&] { estimator->fit(store.train); });
      PendingEntry pending(fit_dir);  // estimators without a fit cache leave it uncommitted
      fs::create_directories(pending.temporary);
      if (in_plugin(who, [&] { return estimator->save_fit(pending.temporary.string()); })) {
        write_file_atomic(pending.temporary / "complete", spec.plugin + "\n");
        write_directory_checksums(pending.temporary);
        pending.commit();
      }
    }
    outcome.stage_cached["fit:" + spec.label] = fit_cached;
    torch::Tensor scores = in_plugin(who, [&] {
      return aggregate ? score_aggregate(*estimator, store.train, store.query)
                       : score_pairwise(*estimator, store.train, store.query);
    });
    scores = gather_rows_over_ranks(scores);  // this rank's rows -> all n rows, in order
    EstimatorOutcome result{spec.label, seconds_since(start), {}};
    if (world_size > 1)  // this rank's all-reduce and all-gather volume for this estimator
      diagnostics[spec.label]["bytes_communicated"] =
          static_cast<double>(distributed_bytes_communicated() - bytes_before);
    if (writer) save_npy(outcome.directory / fmt::format("scores_{}.npy", spec.label), scores.contiguous());
    all_scores[spec.label] = to_doubles(scores);
    if (!flipped.empty() && std::count(flipped.begin(), flipped.end(), 1) > 0) {
      // Pairwise scores are averaged over queries: by linearity this equals the aggregate score.
      auto per_example = to_doubles(aggregate ? scores : scores.mean(1));
      result.metrics["auc"] = roc_auc(per_example, flipped);
    }
    for (const auto& [key, value] : estimator->diagnostics()) diagnostics[spec.label][key] = value;
    log(fmt::format(
        "{}: {:.3f} s{}", spec.label, result.seconds,
        result.metrics.count("auc") ? fmt::format(", mislabel AUC {:.4f}", result.metrics["auc"]) : ""));
    outcome.estimators.push_back(std::move(result));
  }
  const auto& metrics = config.evaluation.metrics;
  for (auto& e : outcome.estimators) {
    if (std::find(metrics.begin(), metrics.end(), "auc") == metrics.end()) e.metrics.erase("auc");
    if (config.evaluation.reference.empty()) continue;
    const auto& reference = all_scores.at(config.evaluation.reference);
    if (std::find(metrics.begin(), metrics.end(), "pearson") != metrics.end())
      e.metrics["pearson"] = pearson(all_scores[e.label], reference);
    if (std::find(metrics.begin(), metrics.end(), "spearman") != metrics.end())
      e.metrics["spearman"] = spearman(all_scores[e.label], reference);
  }

  if (aggregate) {
    std::string csv = "example_id,label,observed_label,flipped";
    for (const auto& e : outcome.estimators) csv += "," + e.label;
    csv += "\n";
    for (std::size_t i = 0; i < store.train_meta.ids.size(); ++i) {
      csv += fmt::format("{},{},{},{}", store.train_meta.ids[i], store.train_meta.labels[i],
                         store.train_meta.observed_labels[i], int(store.train_meta.flipped[i]));
      for (const auto& e : outcome.estimators) csv += fmt::format(",{:.8g}", all_scores[e.label][i]);
      csv += "\n";
    }
    if (writer) write_file_atomic(outcome.directory / "scores.csv", csv);
  }

  nlohmann::json manifest;
  manifest["inflab_version"] = inflab_version();
  manifest["git_commit"] = git_commit();
  manifest["libtorch_version"] = torch_version();
  manifest["threads"] = current_threads();
  manifest["world_size"] = world_size;
  manifest["bytes_communicated_by_rank_0"] = distributed_bytes_communicated() - run_bytes_before;  // this run
  manifest["seed"] = config.seed;
  manifest["experiment_file"] = fs::absolute(config.source).string();
  manifest["run"] = config.run_name;
  manifest["stage_seconds"] = outcome.stage_seconds;
  manifest["stage_cached"] = outcome.stage_cached;
  nlohmann::json plugins;
  auto version_of = [&](PluginKind kind, const std::string& name) {
    return std::string(registry.find(kind, name).info->version);
  };
  plugins["dataset"][config.dataset.plugin] = version_of(PluginKind::Dataset, config.dataset.plugin);
  plugins["model"][config.model.plugin] = version_of(PluginKind::Model, config.model.plugin);
  for (const auto& e : config.estimators)
    plugins["estimator"][e.plugin] = version_of(PluginKind::Estimator, e.plugin);
  manifest["plugins"] = plugins;
  nlohmann::json estimator_seconds;
  for (const auto& e : outcome.estimators) estimator_seconds[e.label] = e.seconds;
  manifest["estimator_seconds"] = estimator_seconds;
  if (!diagnostics.is_null()) manifest["diagnostics"] = diagnostics;
  manifest["train_examples"] = store.train_meta.ids.size();
  manifest["query_examples"] = store.query_meta.ids.size();
  if (writer) {
    write_file_atomic(outcome.directory / "manifest.json", manifest.dump(2) + "\n");
    write_file_atomic(metrics_file, metrics_csv(outcome.estimators));  // last: marks the run finished
  }
  barrier_over_ranks();  // no rank starts the next run before this one is marked finished
  return outcome;
}

}  // namespace inflab
