#include "inflab/pipeline.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include "evaluation.hpp"
#include "inflab/distributed.hpp"
#include "inflab/error.hpp"
#include "inflab/io.hpp"
#include "inflab/lora.hpp"
#include "inflab/metrics.hpp"
#include "inflab/numerics.hpp"
#include "inflab/progress.hpp"
#include "inflab/registry.hpp"
#include "inflab/runtime.hpp"
#include "inflab/scoring.hpp"
#include "stages/stages.hpp"

namespace fs = std::filesystem;

namespace inflab {

fs::path default_cache_root() {
  if (const char* env = std::getenv("INFLAB_CACHE"); env && *env) return env;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && *xdg) return fs::path(xdg) / "inflab";
  if (const char* home = std::getenv("HOME"); home && *home) return fs::path(home) / ".cache" / "inflab";
  return fs::temp_directory_path() / "inflab-cache";
}

BaseModel base_model(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                     RunOutcome& outcome) {
  BaseModel out{stage_inputs("data", config), {}, nullptr};
  out.data = load_data(out.data_in, registry, outcome);
  out.model = build_model(out.data_in, registry, out.data, outcome);
  prepare_base(stage_inputs("base", config), *out.model, out.data, paths, outcome);
  return out;
}

// Distributed: each rank extracts (and caches) the gradients of its shard of the training rows.
StageInputs gradients_stage_inputs(const ExperimentConfig& config) {
  StageInputs inputs = stage_inputs("gradients", config);
  if (distributed_world_size() > 1)
    inputs.add("shard", fmt::format("{} of {}", distributed_rank(), distributed_world_size()));
  return inputs;
}

namespace {

// The finetune stage of `config`. With [model] adapter_from, the other experiment's fine-tuning
// runs first (on its own data, if its cache lacks it) and this one's stage loads its adapters.
void finetune_stage_of(const ExperimentConfig& config, Registry& registry, Model& model,
                       const LoadedData& data, const RunPaths& paths, RunOutcome& outcome) {
  if (const auto& source = config.adapter_source) {
    const StageInputs source_in = stage_inputs("finetune", *source);
    // A base pretrained here is the dataset's: the adapter must have been trained on the same one.
    if (model.needs_base_pretraining() &&
        stage_inputs("base", *source).key() != stage_inputs("base", config).key())
      throw Error(fmt::format(
          "{}: key 'model.adapter_from': model '{}' pretrains its base on the dataset, and {} pretrains "
          "it on other data or with other settings, so its adapter belongs to another base; give both the "
          "same [dataset] (label noise may differ) and pretraining, or use a model with packaged weights",
          config.source.string(), config.model.plugin, source->source.string()));
    if (!fs::exists(adapter_file(source_in.key(), paths))) {
      log(fmt::format("fine-tuning the adapter of {} first (model.adapter_from)", source->source.string()));
      RunOutcome source_outcome;
      auto chain = base_model(*source, registry, paths, source_outcome);
      finetune(source_in, *chain.model, chain.data, paths, source_outcome);
      outcome.stage_seconds["finetune (adapter_from)"] = source_outcome.stage_seconds["finetune"];
    }
  }
  finetune(stage_inputs("finetune", config), model, data, paths, outcome,
           config.adapter_source ? 0 : config.checkpoints);
}
}  // namespace

FinetunedModel finetuned_model(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                               Adapters adapters) {
  RunOutcome outcome;
  auto [data_in, data, model] = base_model(config, registry, paths, outcome);
  if (adapters == Adapters::finetuned) finetune_stage_of(config, registry, *model, data, paths, outcome);
  model->set_training(false);
  FinetunedModel out;
  out.model = std::move(model);
  for (std::int64_t d = 1; d < data.train.inputs.dim(); ++d)
    out.example_shape.push_back(data.train.inputs.size(d));
  out.class_names = data.splits.class_names;
  out.task = data_in.get_string("task.name");
  out.task_options = data_in.section("task");
  out.condition_dropout = stage_inputs("base", config).get_double("training.pretrain_condition_dropout");
  return out;
}

std::string stage_key(const std::string& stage, const ExperimentConfig& config) {
  return stage_inputs(stage, config).key();
}

// The chain up to the gradient store: data -> base -> finetune -> gradients, each stage reading
// its declared inputs (stage units in framework/src/stages/).
GradientStore prepare_gradients(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                                RunOutcome* outcome) {
  RunOutcome local;
  RunOutcome& out = outcome ? *outcome : local;
  const StageInputs gradients_in = gradients_stage_inputs(config);
  const fs::path gradient_dir = gradients_directory(gradients_in, paths);
  for (const char* stage : {"base", "finetune", "gradients", "fits"})
    remove_stale_temporaries(cache_root_of(paths) / stage);
  if (fs::exists(gradient_dir / "blocks.json")) {
    if (std::string problem = verify_directory_checksums(gradient_dir); !problem.empty()) {
      warn(fmt::format("cached gradients {} failed their check ({}); recomputing", gradient_dir.string(),
                       problem));
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
  auto [data_in, data, model] = base_model(config, registry, paths, out);
  finetune_stage_of(config, registry, *model, data, paths, out);
  return extract_gradients(gradients_in, *model, data, paths, out);
}

namespace {

// The gradients at each checkpoint the fine-tuning kept ([checkpoints]), each cached as an entry of
// the gradients stage (its key plus the checkpoint), with the checkpoint's learning-rate weight.
struct CheckpointStore {
  std::int64_t epoch;
  double learning_rate;
  GradientStore store;
};
// The last checkpoint is the final adapter (fine_tuning_checkpoints checks it bit for bit): its
// gradients are `final_store`, not extracted again.
std::vector<CheckpointStore> checkpoint_gradients(const ExperimentConfig& config, Registry& registry,
                                                  const RunPaths& paths, RunOutcome& outcome,
                                                  const std::string& who, const GradientStore& final_store) {
  if (config.checkpoints == 0)
    throw Error(fmt::format(
        "{} is scored over the fine-tuning's checkpoints: add a [checkpoints] section (count = 3 keeps the "
        "adapters after every third of the epochs; docs/estimators.md, \"TracIn\")",
        who));
  const auto start = Clock::now();
  RunOutcome chain_outcome;  // this run's data/base/finetune times are the main chain's
  auto [data_in, data, model] = base_model(config, registry, paths, chain_outcome);
  const std::vector<Checkpoint> checkpoints =
      fine_tuning_checkpoints(stage_inputs("finetune", config), *model, data, config.checkpoints, paths);
  std::vector<CheckpointStore> out;
  for (std::size_t c = 0; c < checkpoints.size(); ++c) {
    if (c + 1 == checkpoints.size()) {
      out.push_back({checkpoints[c].epoch, checkpoints[c].learning_rate, final_store});
      break;
    }
    StageInputs inputs = gradients_stage_inputs(config);
    inputs.add("checkpoint", fmt::format("{} of {}", c + 1, checkpoints.size()));
    const fs::path directory = gradients_directory(inputs, paths);
    GradientStore store;
    if (fs::exists(directory / "blocks.json") && verify_directory_checksums(directory).empty()) {
      store = load_gradient_store(directory);
    } else {
      fs::remove_all(directory);
      load_adapters(*model, checkpoints[c].adapters);
      log(fmt::format("gradients at checkpoint {} of {} (epoch {})", c + 1, checkpoints.size(),
                      checkpoints[c].epoch));
      store = extract_gradients(inputs, *model, data, paths, chain_outcome, /*measure=*/false);
    }
    select_blocks(store, config.evaluation.blocks);
    out.push_back({checkpoints[c].epoch, checkpoints[c].learning_rate, std::move(store)});
  }
  outcome.stage_seconds["checkpoints"] = seconds_since(start);
  return out;
}

std::string metrics_csv(const std::vector<EstimatorOutcome>& estimators) {
  std::string csv = "estimator,metric,value\n";
  for (const auto& e : estimators) {
    if (e.label != "model")  // the fine-tuned model's own row has measurements, not an estimator's time
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

namespace {
// The first lines (up to three) where two resolved configurations differ, with their sections.
std::string first_difference(const std::string& before, const std::string& after) {
  std::istringstream a(before), b(after);
  std::string line_a, line_b, section;
  std::vector<std::string> differences;
  auto trimmed = [](std::string& line) { line.erase(0, line.find_first_not_of(" \t")); };
  while (differences.size() < 3) {
    const bool more_a = static_cast<bool>(std::getline(a, line_a)),
               more_b = static_cast<bool>(std::getline(b, line_b));
    if (!more_a && !more_b) break;
    trimmed(line_a), trimmed(line_b);
    if (more_a && more_b && line_a == line_b) {
      if (!line_a.empty() && line_a.front() == '[') section = line_a;
      continue;
    }
    differences.push_back(fmt::format("{}'{}' there, '{}' now", section.empty() ? "" : section + " ",
                                      more_a ? line_a : "(end)", more_b ? line_b : "(end)"));
  }
  return differences.empty() ? "no difference in the text"
                             : "differs at " + fmt::format("{}", fmt::join(differences, "; "));
}

// A fresh hidden folder beside `final` for this process's run; folders left by processes that
// no longer run (killed) are removed.
fs::path staging_directory(const fs::path& final) {
  const fs::path parent = final.parent_path();
  const std::string prefix = "." + final.filename().string() + ".partial-";
  fs::create_directories(parent);
  for (const auto& entry : fs::directory_iterator(parent)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
    if (pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM)) continue;  // still running
    std::error_code ignored;
    fs::remove_all(entry.path(), ignored);
  }
  const fs::path staging = parent / (prefix + std::to_string(::getpid()));
  fs::remove_all(staging);
  fs::create_directories(staging);
  return staging;
}

// Puts the finished `staging` folder at `final` in one step (exchanging it with a previous run,
// which is then removed), so a reader or an interruption sees the old run or the new one, whole.
void swap_into_place(const fs::path& staging, const fs::path& final) {
  if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, final.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(staging);  // now the previous run
    return;
  }
  if (errno != ENOENT)
    throw Error(fmt::format("cannot put the finished run {} in place of {}: {}", staging.string(),
                            final.string(), std::strerror(errno)));
  fs::rename(staging, final);  // no previous run
}

// What makes a finished run the same run: its resolved config without [experiment] repeats. Seed 1
// of an experiment with three repeats is seed 1 of one with two, so adding seeds reuses the runs.
std::string run_identity(const std::string& resolved_toml) {
  std::istringstream in(resolved_toml);
  std::string line, section, out;
  while (std::getline(in, line)) {
    if (!line.empty() && line.front() == '[') section = line;
    if (section == "[experiment]" && line.rfind("repeats =", 0) == 0) continue;
    out += line + '\n';
  }
  return out;
}

// The kernels a run was computed on, as its manifest records them ("" when it does not).
std::string recorded_numerics_key(const fs::path& manifest_file) {
  try {
    const auto manifest = nlohmann::json::parse(read_file(manifest_file));
    return manifest.at("numerics").at("key").get<std::string>();
  } catch (const std::exception&) {
    return "";
  }
}

nlohmann::json numerics_json(const Numerics& n) {
  return {{"key", n.key()},
          {"requested", to_string(n.requested)},
          {"pinned", n.pinned},
          {"blas", n.blas},
          {"blas_library", n.blas_library},
          {"blas_kernel", n.blas_kernel},
          {"aten_capability", n.aten_capability},
          {"onednn_isa", n.onednn_isa},
          {"libtorch", n.libtorch},
          {"processor", n.processor},
          {"threads", current_threads()},
          {"note", n.note}};
}

// The scores stage: each estimator's fit (from the cache when there) and scores, saved as
// scores_<label>.npy, with its metrics computed as they come. Returns the estimators' diagnostics.
nlohmann::json score_estimators(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                                const GradientStore& store, Evaluation& evaluation, RunOutcome& outcome,
                                bool writer, std::map<std::string, std::vector<double>>& all_scores) {
  const bool aggregate = config.evaluation.mode == "aggregate";
  const int world_size = distributed_world_size();
  nlohmann::json diagnostics;
  std::optional<std::vector<CheckpointStore>> checkpoints;  // computed for the first estimator needing them
  for (const auto& spec : config.estimators) {
    auto estimator =
        with_rescaling(registry.create_as<Estimator>(PluginKind::Estimator, spec.plugin, spec.options));
    const std::string who = fmt::format("estimator '{}' ({})", spec.label,
                                        describe_plugin(registry, PluginKind::Estimator, spec.plugin));
    const Normalisation normalisation = normalisation_from(spec.normalise, "estimator " + spec.label);
    if (estimator->over_checkpoints() && !checkpoints)  // a stage of its own: outside the estimator's time
      checkpoints = checkpoint_gradients(config, registry, paths, outcome, who, store);
    auto start = Clock::now();
    const std::uint64_t bytes_before = distributed_bytes_communicated();
    torch::Tensor scores;
    if (estimator->over_checkpoints()) {  // TracIn: sum over checkpoints of learning rate x scores
      for (std::size_t c = 0; c < checkpoints->size(); ++c) {
        const CheckpointStore& at = (*checkpoints)[c];
        torch::Tensor weighted = in_plugin(who, [&] {
          estimator->fit(at.store.train);
          return score_normalised(*estimator, at.store.train, at.store.query, aggregate, normalisation)
              .mul_(at.learning_rate);
        });
        scores = scores.defined() ? scores.add_(weighted) : weighted;
        diagnostics[spec.label][fmt::format("checkpoint{}.epoch", c + 1)] = static_cast<double>(at.epoch);
        diagnostics[spec.label][fmt::format("checkpoint{}.learning_rate", c + 1)] = at.learning_rate;
      }
    } else {
      const StageInputs fit_in =
          fit_inputs(config.resolved_toml, config.plugin_versions, spec,
                     registry.find(PluginKind::Estimator, spec.plugin).info->version, store.train);
      outcome.stage_cached["fit:" + spec.label] = fit_estimator(fit_in, *estimator, store.train, paths, who);
      scores = in_plugin(who, [&] {
        return score_normalised(*estimator, store.train, store.query, aggregate, normalisation);
      });
    }
    scores = gather_rows_over_ranks(scores);  // this rank's rows -> all n rows, in order
    EstimatorOutcome result{spec.label, seconds_since(start), {}};
    if (world_size > 1)  // this rank's all-reduce and all-gather volume for this estimator
      diagnostics[spec.label]["bytes_communicated"] =
          static_cast<double>(distributed_bytes_communicated() - bytes_before);
    if (writer) save_npy(outcome.directory / fmt::format("scores_{}.npy", spec.label), scores.contiguous());
    if (aggregate) all_scores[spec.label] = to_doubles(scores);
    evaluation.of_estimator(result, scores);
    for (const auto& [key, value] : estimator->diagnostics()) diagnostics[spec.label][key] = value;
    log(fmt::format(
        "{}: {:.3f} s{}", spec.label, result.seconds,
        result.metrics.count("auc") ? fmt::format(", mislabel AUC {:.4f}", result.metrics["auc"]) : ""));
    outcome.estimators.push_back(std::move(result));
  }
  return diagnostics;
}

// scores.csv (aggregate mode): one row per training example, its label, flip and every score.
void write_scores_csv(const fs::path& file, const ExampleMeta& train,
                      const std::vector<EstimatorOutcome>& estimators,
                      const std::map<std::string, std::vector<double>>& all_scores) {
  std::string csv = "example_id,label,observed_label,flipped";
  for (const auto& e : estimators) csv += "," + e.label;
  csv += "\n";
  for (std::size_t i = 0; i < train.ids.size(); ++i) {
    csv += fmt::format("{},{},{},{}", train.ids[i], train.labels[i], train.observed_labels[i],
                       int(train.flipped[i]));
    for (const auto& e : estimators) csv += fmt::format(",{:.8g}", all_scores.at(e.label)[i]);
    csv += "\n";
  }
  write_file_atomic(file, csv);
}

// The examples (ids, classes; texts) beside the scores, in the order of the score files; for
// denoisers also the training images and generated queries ([queries]) with their grid.
void copy_examples(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                   const fs::path& run_directory) {
  const fs::path examples = gradients_directory(gradients_stage_inputs(config), paths) / "examples.jsonl";
  if (fs::exists(examples)) write_file_atomic(run_directory / "examples.jsonl", read_file(examples));
  for (const char* name : {"train.npy", "queries.npy", "queries.png"})
    if (const fs::path file = examples.parent_path() / name; fs::exists(file))
      write_file_atomic(run_directory / name, read_file(file));
}

// manifest.json: how the run was made (versions, commit, kernels, threads, ranks), what each stage
// cost or found cached, each estimator's time and diagnostics.
nlohmann::json run_manifest(const ExperimentConfig& config, Registry& registry, const RunOutcome& outcome,
                            const GradientStore& store, const nlohmann::json& diagnostics,
                            std::uint64_t bytes_communicated) {
  nlohmann::json manifest;
  manifest["inflab_version"] = inflab_version();
  manifest["git_commit"] = git_commit();
  manifest["libtorch_version"] = torch_version();
  manifest["threads"] = current_threads();
  manifest["numerics"] = numerics_json(current_numerics());
  manifest["world_size"] = distributed_world_size();
  manifest["bytes_communicated_by_rank_0"] = bytes_communicated;  // this run
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
  for (const auto& e : outcome.estimators)
    if (e.label != "model") estimator_seconds[e.label] = e.seconds;
  manifest["estimator_seconds"] = estimator_seconds;
  if (!diagnostics.is_null()) manifest["diagnostics"] = diagnostics;
  manifest["train_examples"] = store.train_meta.ids.size();
  manifest["query_examples"] = store.query_meta.ids.size();
  // What the store keeps per example: its values over all blocks, and the projection they went through.
  std::int64_t values_per_example = 0;
  for (const auto& block : store.train) values_per_example += block.values.size(1);
  manifest["gradient_values_per_example"] = values_per_example;
  if (!store.projection.empty()) manifest["projection"] = store.projection;
  return manifest;
}

}  // namespace

RunOutcome run_experiment(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                          bool resume, bool replace) {
  RunOutcome outcome;
  const fs::path final_directory = paths.results_root / config.name / config.run_name;
  outcome.directory = final_directory;
  const fs::path finished_metrics = final_directory / "metrics.csv";
  // Distributed: every rank computes, rank 0 alone writes the results (identical to one process).
  const int world_size = distributed_world_size();
  const bool writer = distributed_rank() == 0;
  const std::uint64_t run_bytes_before = distributed_bytes_communicated();
  // A run is finished when metrics.csv (written last) exists; it is this run when its resolved
  // config and the kernels it was computed on are this process's.
  const bool exists = fs::exists(finished_metrics);
  const std::string recorded_config =
      exists && fs::exists(final_directory / "config.toml") ? read_file(final_directory / "config.toml") : "";
  const bool same_config = exists && run_identity(recorded_config) == run_identity(config.resolved_toml);
  const std::string made_on = exists ? recorded_numerics_key(final_directory / "manifest.json") : "";
  const bool same_numerics = made_on == current_numerics().key();
  if (exists && !replace && !same_config)
    throw Error(fmt::format(
        "{} holds a finished run of another configuration ({}): choose another --out (or experiment name), "
        "or pass --replace to replace it",
        final_directory.string(),
        first_difference(run_identity(recorded_config), run_identity(config.resolved_toml))));
  if (exists && !replace && !same_numerics)
    throw Error(fmt::format(
        "{} holds a finished run of this configuration computed on other kernels ({}; this process: {}): "
        "rerun with the kernels it was made with (--kernels pinned|native), choose another --out, or pass "
        "--replace to replace it",
        final_directory.string(),
        made_on.empty() ? "not recorded: made before inflab recorded kernels" : made_on,
        current_numerics().key()));
  bool finished = resume && exists && same_config && same_numerics;
  if (world_size > 1)  // all ranks must take the same path, or one would wait for the others
    finished = sum_over_ranks(finished ? 1.0 : 0.0) == world_size;
  if (finished) {
    outcome.skipped = true;
    outcome.estimators = read_metrics_csv(finished_metrics);
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
  // The run is written into a hidden folder of this process and swapped in when complete.
  const fs::path staging = writer ? staging_directory(final_directory) : final_directory;
  outcome.directory = staging;
  // A run that fails (an estimator that throws) shows what it did finish, unmarked (no metrics.csv),
  // unless that would replace a finished run: then the finished one stays.
  struct RevealOnFailure {
    fs::path staging, final;
    bool active;
    ~RevealOnFailure() {
      if (!active || std::uncaught_exceptions() == 0) return;
      try {
        if (!fs::exists(final / "metrics.csv")) swap_into_place(staging, final);
      } catch (const std::exception&) {  // the error in flight is the one to report
      }
    }
  } reveal_on_failure{staging, final_directory, writer};
  fs::path metrics_file = staging / "metrics.csv";
  if (writer) write_file_atomic(staging / "config.toml", config.resolved_toml);

  GradientStore store = prepare_gradients(config, registry, paths, &outcome);
  select_blocks(store, config.evaluation.blocks);
  if (world_size > 1) {
    combine_factors_over_ranks(store.train);
    gather_meta_over_ranks(store.train_meta);
  }
  const bool aggregate = config.evaluation.mode == "aggregate";
  Evaluation evaluation(config, registry, paths, store, outcome, writer);  // the metrics asked for
  std::map<std::string, std::vector<double>> all_scores;                   // aggregate: for scores.csv
  const nlohmann::json diagnostics =
      score_estimators(config, registry, paths, store, evaluation, outcome, writer, all_scores);
  evaluation.after_all(outcome.estimators);

  if (writer && aggregate)
    write_scores_csv(outcome.directory / "scores.csv", store.train_meta, outcome.estimators, all_scores);
  if (writer) copy_examples(config, registry, paths, outcome.directory);

  // What was measured of the fine-tuned model itself (language models: exact-match test answers):
  // a "model" row of metrics.csv, after every estimator's.
  if (!store.model_metrics.empty()) outcome.estimators.push_back({"model", 0.0, store.model_metrics});

  const nlohmann::json manifest = run_manifest(config, registry, outcome, store, diagnostics,
                                               distributed_bytes_communicated() - run_bytes_before);
  if (writer) {
    write_file_atomic(outcome.directory / "manifest.json", manifest.dump(2) + "\n");
    write_file_atomic(metrics_file, metrics_csv(outcome.estimators));  // last: marks the run finished
    swap_into_place(staging, final_directory);
  }
  outcome.directory = final_directory;
  barrier_over_ranks();  // no rank starts the next run before this one is marked finished
  return outcome;
}

}  // namespace inflab
