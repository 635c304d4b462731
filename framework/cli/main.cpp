// The `inflab` command line: run experiments, validate them, list plugins, extract gradients,
// and score gradient files written by inflab or by anyone else.
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "explain.hpp"
#include "inflab/config.hpp"
#include "inflab/distributed.hpp"
#include "inflab/error.hpp"
#include "inflab/gradients.hpp"
#include "inflab/index.hpp"
#include "inflab/io.hpp"
#include "inflab/language_model.hpp"
#include "inflab/model.hpp"
#include "inflab/numerics.hpp"
#include "inflab/peft.hpp"
#include "inflab/pipeline.hpp"
#include "inflab/progress.hpp"
#include "inflab/registry.hpp"
#include "inflab/runtime.hpp"
#include "inflab/sampling.hpp"
#include "inflab/scoring.hpp"
#include "inflab/task_table.hpp"
#include "launch.hpp"

namespace fs = std::filesystem;
using namespace inflab;

namespace {

struct Common {
  int threads = 0;
  std::string kernels;  // --kernels: pinned | native (numerics.hpp)
  bool quiet = false;
  std::vector<std::string> plugin_paths;
};

// Computes on the kernels asked for (--kernels, $INFLAB_KERNELS, the experiment's numerics.kernels);
// may start the process again (numerics.hpp), so it comes before any computation.
const Numerics& use_kernels(const Common& common, const std::vector<ExperimentConfig>& runs = {}) {
  return select_kernels(requested_kernel_mode(common.kernels, runs.empty() ? "" : runs.front().kernels));
}

// A folder results or caches go to, checked before any work: created if absent, and writable.
void check_writable_folder(const fs::path& dir, const std::string& option) {
  std::error_code error;
  fs::create_directories(dir, error);
  if (error || !fs::is_directory(dir))
    throw Error(fmt::format("{} {}: cannot be used as a folder: {}", option, dir.string(),
                            error ? error.message() : "it exists and is not a folder"));
  const fs::path probe = dir / fmt::format(".inflab-write-check-{}", ::getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0)
    throw Error(fmt::format("{} {}: cannot write there: {}", option, dir.string(), std::strerror(errno)));
  ::close(fd);
  ::unlink(probe.c_str());
}

bool is_inside(const fs::path& inner, const fs::path& outer) {
  const fs::path a = fs::weakly_canonical(fs::absolute(inner)), b = fs::weakly_canonical(fs::absolute(outer));
  auto [end_b, end_a] = std::mismatch(b.begin(), b.end(), a.begin(), a.end());
  (void)end_a;
  return end_b == b.end();
}

void load_plugins(Registry& registry, const Common& common) {
  registry.load_default_locations();
  for (const auto& p : common.plugin_paths) registry.discover_directory(p);
}

std::string table_row(const std::vector<std::string>& cells, const std::vector<std::size_t>& widths) {
  std::string row;
  for (std::size_t i = 0; i < cells.size(); ++i) row += fmt::format("{:<{}}  ", cells[i], widths[i]);
  while (!row.empty() && row.back() == ' ') row.pop_back();
  return row + "\n";
}

void print_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths(rows.at(0).size(), 0);
  for (const auto& r : rows)
    for (std::size_t i = 0; i < r.size(); ++i) widths[i] = std::max(widths[i], r[i].size());
  for (std::size_t k = 0; k < rows.size(); ++k) {
    std::cout << table_row(rows[k], widths);
    if (k == 0) {
      std::vector<std::string> rule;
      for (auto w : widths) rule.push_back(std::string(w, '-'));
      std::cout << table_row(rule, widths);
    }
  }
}

// torchrun-style environment (set by `inflab launch` or by hand): join the process group.
void join_distributed_from_environment() {
  const char* timeout = std::getenv("INFLAB_DISTRIBUTED_TIMEOUT");
  double seconds = 300.0;
  if (timeout && *timeout) {
    char* end = nullptr;
    seconds = std::strtod(timeout, &end);
    if (*end != '\0' || !(seconds > 0) || seconds > 1e7)
      throw Error(fmt::format("INFLAB_DISTRIBUTED_TIMEOUT: expected seconds > 0, found '{}'", timeout));
  }
  init_distributed_from_environment(std::chrono::milliseconds(static_cast<long long>(1000 * seconds)));
}

int command_run(const fs::path& file, const std::vector<std::string>& sets, const fs::path& out,
                const fs::path& cache, bool no_resume, bool replace, const Common& common) {
  Registry registry;
  load_plugins(registry, common);
  auto runs = load_experiment(file, sets, registry);
  const Numerics& numerics = use_kernels(common, runs);
  join_distributed_from_environment();  // after use_kernels, which may start the process again
  check_writable_folder(out, "--out");
  check_writable_folder(cache.empty() ? default_cache_root() : cache, cache.empty() ? "cache" : "--cache");
  int threads = current_threads();
  const int rank = distributed_rank(), world_size = distributed_world_size();
  if (!common.quiet && world_size > 1)
    std::cerr << fmt::format("[inflab] rank {} of {}: {}: {} run(s), {} thread(s), {}\n", rank, world_size,
                             file.string(), runs.size(), threads, numerics.summary());
  else if (!common.quiet)
    std::cerr << fmt::format("[inflab] {}: {} run(s), {} thread(s), {}\n", file.string(), runs.size(),
                             threads, numerics.summary());
  RunPaths paths{out, cache};
  std::vector<std::vector<std::string>> rows{{"run", "estimator", "AUC", "seconds"}};
  std::set<std::string> extra_metrics;
  std::vector<RunOutcome> outcomes;
  for (std::size_t k = 0; k < runs.size(); ++k) {
    if (rank == 0 && !common.quiet)
      std::cerr << fmt::format("[inflab] run {}/{}: {}\n", k + 1, runs.size(), runs[k].run_name);
    outcomes.push_back(run_experiment(runs[k], registry, paths, !no_resume, replace));
    if (outcomes.back().skipped && !common.quiet)
      std::cerr << fmt::format("[inflab]   already finished in {} (use --no-resume to redo)\n",
                               outcomes.back().directory.string());
    for (const auto& e : outcomes.back().estimators)
      for (const auto& [m, v] : e.metrics)
        if (m != "auc") extra_metrics.insert(m);
  }
  if (rank != 0) return 0;  // rank 0 reports for everyone
  for (const auto& m : extra_metrics) rows[0].push_back(m);
  for (std::size_t k = 0; k < runs.size(); ++k)
    for (const auto& e : outcomes[k].estimators) {
      auto metric = [&](const std::string& m) {
        auto it = e.metrics.find(m);
        return it == e.metrics.end() ? std::string("-") : fmt::format("{:.4f}", it->second);
      };
      std::vector<std::string> row{runs[k].run_name, e.label, metric("auc"),
                                   e.label == "model" ? "-" : fmt::format("{:.3f}", e.seconds)};
      for (const auto& m : extra_metrics) row.push_back(metric(m));
      rows.push_back(row);
    }
  std::cout << "\n";
  print_table(rows);
  if (!outcomes.empty()) {
    std::cout << "\nstage seconds (" << outcomes.back().directory.string() << "):";
    for (const auto& [stage, s] : outcomes.back().stage_seconds)
      std::cout << fmt::format(" {}={:.2f}{}", stage, s,
                               outcomes.back().stage_cached[stage] ? " (cached)" : "");
    std::cout << "\nresults: " << (out / runs[0].name).string() << "/\n";
  }
  return 0;
}

int command_validate(const fs::path& file, const std::vector<std::string>& sets, const Common& common) {
  Registry registry;
  load_plugins(registry, common);
  auto runs = load_experiment(file, sets, registry);
  const KernelMode kernels = requested_kernel_mode(common.kernels, runs.front().kernels);
  std::cout << fmt::format("{}: valid, {} run(s), {} kernels\n", file.string(), runs.size(),
                           to_string(kernels));
  for (const auto& r : runs) std::cout << "  " << r.run_name << "\n";
  return 0;
}

int command_plugins(const std::string& name, const Common& common) {
  Registry registry;
  load_plugins(registry, common);
  if (!name.empty()) {
    bool found = false;
    for (const auto& r : registry.plugins()) {
      if (name != r.info->name) continue;
      found = true;
      std::cout << fmt::format("{} {} {} -- {}\n  file: {}\n  options:\n", to_string(r.info->kind),
                               r.info->name, r.info->version, r.info->description, r.file.string());
      for (const auto& o : r.info->options()) {
        const bool numeric = o.type == OptionType::Int || o.type == OptionType::Double ||
                             o.type == OptionType::IntList || o.type == OptionType::DoubleList;
        const std::string range = numeric ? o.range.describe() : "";
        std::cout << fmt::format("    {:<22} {:<18} {:<12} {}{}\n", o.name, to_string(o.type),
                                 o.required ? "(required)" : format_value(o.default_value), o.help,
                                 range.empty() || range == "finite" ? "" : " [" + range + "]");
      }
    }
    if (!found) {  // any kind: the closest name among all plugins
      std::vector<std::string> names;
      for (const auto& r : registry.plugins()) names.push_back(r.info->name);
      const std::string suggestion = closest_match(name, names);
      throw Error(fmt::format("no plugin named '{}'{}; `inflab plugins` lists them all", name,
                              suggestion.empty() ? "" : fmt::format(" (did you mean '{}'?)", suggestion)));
    }
    return 0;
  }
  std::vector<std::vector<std::string>> rows{{"kind", "name", "version", "description", "file"}};
  for (const auto& r : registry.plugins())
    rows.push_back({to_string(r.info->kind), r.info->name, r.info->version, r.info->description,
                    r.file.filename().string()});
  print_table(rows);
  return 0;
}

int command_gradients(const fs::path& file, const std::vector<std::string>& sets, const fs::path& out,
                      const fs::path& cache, bool safetensors, const Common& common) {
  Registry registry;
  load_plugins(registry, common);
  auto runs = load_experiment(file, sets, registry);
  use_kernels(common, runs);
  check_writable_folder(out, "--out");
  check_writable_folder(cache.empty() ? default_cache_root() : cache, cache.empty() ? "cache" : "--cache");
  for (const auto& run : runs) {
    fs::path dir = runs.size() == 1 ? out : out / run.run_name;
    GradientStore store = prepare_gradients(run, registry, RunPaths{"results", cache});
    save_gradient_store(dir, store);
    if (safetensors) save_gradient_store_safetensors(dir / "gradients.safetensors", store);
    std::cout << fmt::format("{}: {} blocks, {} train x {} query examples\n", dir.string(),
                             store.train.size(), store.train.at(0).values.size(0),
                             store.query.at(0).values.size(0));
  }
  return 0;
}

int command_score(const fs::path& gradients, const std::string& estimator_name,
                  const std::vector<std::string>& sets, const std::string& mode, const std::string& normalise,
                  const fs::path& out, const std::vector<std::string>& blocks, const Common& common) {
  if (mode != "aggregate" && mode != "pairwise")
    throw Error(fmt::format("--mode: expected aggregate or pairwise, found '{}'", mode));
  Registry registry;
  load_plugins(registry, common);
  registry.find(PluginKind::Estimator, estimator_name);  // a misspelt name fails before the reading
  if (is_inside(out, gradients))
    throw Error(
        fmt::format("--out {}: inside the gradient directory {} that it reads; write the scores "
                    "elsewhere",
                    out.string(), gradients.string()));
  check_writable_folder(fs::absolute(out).parent_path(), "--out's folder");
  GradientStore store = load_gradient_store(gradients);
  if (!blocks.empty()) select_blocks(store, blocks);
  ScoredBlocks scored =
      score_with_estimator(registry, estimator_name, sets, mode, store.train, store.query, normalise);
  save_npy(out, scored.scores.contiguous());
  if (common.quiet) return 0;
  std::cerr << fmt::format("[inflab] wrote {} ({})\n", out.string(), fmt::join(scored.scores.sizes(), " x "));
  for (const auto& [k, v] : scored.diagnostics) std::cerr << fmt::format("[inflab]   {} = {:.6g}\n", k, v);
  return 0;
}

int command_embed(const std::string& model_name, const std::vector<std::string>& texts,
                  const std::vector<std::string>& sets, const Common& common) {
  Registry registry;
  load_plugins(registry, common);
  const PluginRecord& record = registry.find(PluginKind::Model, model_name);
  Options options =
      options_from_assignments(fmt::format("model '{}'", model_name), record.info->options(), sets);
  auto model = registry.create_as<Model>(PluginKind::Model, model_name, options);
  at::Tensor embeddings =
      require_capability<SentenceEmbedder>(*model, fmt::format("`inflab embed --model {}`", model_name))
          .embed(texts)
          .contiguous();
  // One JSON array per text, full float precision.
  for (std::int64_t i = 0; i < embeddings.size(0); ++i) {
    std::string line = "[";
    const float* row = embeddings.data_ptr<float>() + i * embeddings.size(1);
    for (std::int64_t k = 0; k < embeddings.size(1); ++k)
      line += fmt::format("{}{:.9g}", k ? ", " : "", row[k]);
    std::cout << line << "]\n";
  }
  return 0;
}

// A model plugin that generates text (inflab/language_model.hpp), with its options from --set.
struct LoadedLanguageModel {
  Registry registry;
  std::unique_ptr<Model> model;
  LanguageModel* language = nullptr;
};
std::unique_ptr<LoadedLanguageModel> load_language_model(const std::string& name,
                                                         const std::vector<std::string>& sets,
                                                         const Common& common) {
  auto loaded = std::make_unique<LoadedLanguageModel>();
  load_plugins(loaded->registry, common);
  const PluginRecord& record = loaded->registry.find(PluginKind::Model, name);
  Options options = options_from_assignments(fmt::format("model '{}'", name), record.info->options(), sets);
  loaded->model = loaded->registry.create_as<Model>(PluginKind::Model, name, options);
  loaded->language = capability<LanguageModel>(*loaded->model);
  if (!loaded->language)
    throw Error(
        fmt::format("model '{}' does not generate text; choose a language model such as smollm2_lora", name));
  return loaded;
}

std::string json_ids(const std::vector<std::int64_t>& ids) {
  return fmt::format("[{}]", fmt::join(ids, ", "));
}

int command_tokenize(const std::string& model_name, const std::string& text, bool special,
                     const std::vector<std::string>& sets, const Common& common) {
  auto loaded = load_language_model(model_name, sets, common);
  std::cout << json_ids(loaded->language->tokenize(text, special)) << "\n";
  return 0;
}

// The thread count a run's manifest.json records, or 0 when there is none to read.
int recorded_threads(const fs::path& manifest) {
  try {
    if (!fs::is_regular_file(manifest)) return 0;
    const auto json = nlohmann::json::parse(read_file(manifest));
    return json.value("threads", 0);
  } catch (const std::exception&) {
    return 0;  // an unreadable manifest only costs the hint
  }
}

// The model of a finished run with its fine-tuned adapters (`generate --lora RUN_DIR`, `export`):
// the run's resolved config.toml names the model, its options and the LoRA; the adapters come from
// the stage cache (recomputed when evicted). `option` names the flag in errors.
std::unique_ptr<LoadedLanguageModel> load_run_model(const fs::path& run_directory, const std::string& option,
                                                    const fs::path& cache, const Common& common,
                                                    std::string* model_name) {
  const fs::path config_file = run_directory / "config.toml";
  if (!fs::is_regular_file(config_file))
    throw Error(
        fmt::format("{} {}: not a run directory (expected {}, written by `inflab run`; e.g. "
                    "results/<experiment>/<run>)",
                    option, run_directory.string(), config_file.string()));
  auto loaded = std::make_unique<LoadedLanguageModel>();
  load_plugins(loaded->registry, common);
  auto runs = load_experiment(config_file, {}, loaded->registry);
  if (runs.size() != 1)
    throw Error(fmt::format("{} {}: {} describes {} runs; expected one run's resolved configuration", option,
                            run_directory.string(), config_file.string(), runs.size()));
  // The run's kernels (pinned unless it chose native): they are part of the adapter's stage key.
  use_kernels(common, runs);
  *model_name = runs[0].model.plugin;
  if (!Progress::quiet())
    std::cerr << fmt::format("[inflab] {}: model '{}' with the run's fine-tuned LoRA adapters\n",
                             run_directory.string(), *model_name);
  // The thread count is part of the fine-tuning's stage key (threaded GEMMs round differently):
  // main() starts a process without --threads or $INFLAB_THREADS on the run's count; with another
  // count the cached adapter is not found and the model is fine-tuned again, so say so.
  if (const int run_threads = recorded_threads(run_directory / "manifest.json");
      run_threads > 0 && run_threads != current_threads())
    std::cerr << fmt::format(
        "[inflab] warning: {} was fine-tuned on {} thread(s) and this process uses {}: its adapter is "
        "cached for {} thread(s), so unless this count's is cached too the model is fine-tuned again; "
        "pass --threads {} to reuse the run's\n",
        run_directory.string(), run_threads, current_threads(), run_threads, run_threads);
  loaded->model = finetuned_model(runs[0], loaded->registry, RunPaths{"results", cache}).model;
  loaded->language = capability<LanguageModel>(*loaded->model);
  return loaded;
}

std::unique_ptr<LoadedLanguageModel> load_finetuned_language_model(const fs::path& run_directory,
                                                                   const std::string& requested_model,
                                                                   const fs::path& cache,
                                                                   const Common& common) {
  std::string run_model;
  auto loaded = load_run_model(run_directory, "--lora", cache, common, &run_model);
  if (!requested_model.empty() && requested_model != run_model)
    throw Error(fmt::format("--model {} disagrees with the run in {}, whose model is '{}'", requested_model,
                            run_directory.string(), run_model));
  if (!loaded->language)
    throw Error(fmt::format("--lora {}: the run's model '{}' does not generate text", run_directory.string(),
                            run_model));
  return loaded;
}

int command_export(const fs::path& run_directory, const fs::path& peft_directory, const fs::path& cache,
                   const Common& common) {
  std::string model_name;
  auto loaded = load_run_model(run_directory, "export", cache, common, &model_name);
  export_peft_adapter(*loaded->model, model_name, peft_directory);
  if (!common.quiet)
    std::cerr << fmt::format(
        "[inflab] wrote the PEFT adapter {} (adapter_config.json, adapter_model.safetensors{})\n",
        peft_directory.string(),
        fs::exists(peft_directory / "inflab_head.safetensors") ? ", inflab_head.safetensors" : "");
  return 0;
}

int command_generate(const std::string& model_name, const std::string& prompt, bool raw, bool json,
                     const fs::path& logits_file, const GenerationOptions& options,
                     const std::vector<std::string>& sets, const fs::path& lora_run, const fs::path& cache,
                     const Common& common) {
  if (!lora_run.empty() && !sets.empty())
    throw Error(
        fmt::format("--set cannot be combined with --lora: the model's options are those of the run "
                    "({}); found --set {}",
                    (lora_run / "config.toml").string(), sets.front()));
  auto loaded = lora_run.empty()
                    ? load_language_model(model_name.empty() ? "smollm2_lora" : model_name, sets, common)
                    : load_finetuned_language_model(lora_run, model_name, cache, common);
  LanguageModel& lm = *loaded->language;
  const auto ids = raw ? lm.tokenize(prompt, false) : lm.tokenize(lm.chat_prompt(prompt), true);
  if (!logits_file.empty()) save_npy(logits_file, lm.last_logits(ids).contiguous());
  const auto continuation = lm.generate(ids, options);
  const std::string text = lm.detokenize(continuation);
  if (json)
    std::cout << nlohmann::json{{"ids", continuation}, {"text", text}}.dump() << "\n";
  else
    std::cout << text << "\n";
  return 0;
}

// `inflab sample`: images from the fine-tuned denoiser of an experiment (or its base), a row per
// condition.
struct SampleRequest {
  std::vector<std::string> conditions;  // names; empty: every condition of the dataset
  std::int64_t count = 8;               // images per condition
  SamplingOptions sampling;
  fs::path png;
  fs::path npy;       // optional: the images as float32 (images x pixels), condition-major rows
  bool base = false;  // the pretrained base, without the fine-tuned adapters
};

int command_sample(const fs::path& file, const std::vector<std::string>& sets, const fs::path& cache,
                   const SampleRequest& request, const Common& common) {
  Registry registry;
  load_plugins(registry, common);
  auto runs = load_experiment(file, sets, registry);
  if (runs.size() != 1)
    throw Error(
        fmt::format("{}: {} runs; sample takes one (e.g. --set 'sweep={{}}')", file.string(), runs.size()));
  use_kernels(common, runs);
  if (request.count < 1)
    throw Error(fmt::format("--count: expected at least 1 image per condition, found {}", request.count));
  const bool guidance_given = !std::isnan(request.sampling.guidance);
  if (guidance_given) check_guidance(request.sampling.guidance, 1.0, "--guidance");  // before any work
  FinetunedModel tuned = finetuned_model(runs[0], registry, RunPaths{"results", cache},
                                         request.base ? Adapters::none : Adapters::finetuned);
  if (!find_task(tuned.task)->generates_images)
    throw Error(fmt::format("{}: task '{}' does not generate images; sample needs task.name = \"denoising\"",
                            file.string(), tuned.task));
  std::vector<std::int64_t> conditions;
  for (const auto& name : request.conditions) {
    auto it = std::find(tuned.class_names.begin(), tuned.class_names.end(), name);
    if (it == tuned.class_names.end())
      throw Error(fmt::format("--condition {}: not a condition of this dataset; conditions: {}", name,
                              fmt::join(tuned.class_names, ", ")));
    conditions.push_back(it - tuned.class_names.begin());
  }
  if (conditions.empty())
    for (std::size_t k = 0; k < tuned.class_names.size(); ++k)
      conditions.push_back(static_cast<std::int64_t>(k));
  std::vector<std::int64_t> per_image;
  for (auto c : conditions) per_image.insert(per_image.end(), static_cast<std::size_t>(request.count), c);
  SamplingOptions options = request.sampling;
  options.diffusion_steps = tuned.task_options.get_int("diffusion_steps");
  if (!guidance_given)  // the experiment's [queries] guidance (checked when the file was read), else 1
    options.guidance =
        toml::parse(runs[0].resolved_toml, std::string_view("resolved configuration"))["queries"]["guidance"]
            .value_or(1.0);
  check_guidance(options.guidance, tuned.condition_dropout, "--guidance");
  at::Tensor images = sample_images(*tuned.model, per_image, tuned.example_shape, options);
  save_png_grid(request.png, images, request.count);
  if (!request.npy.empty()) save_npy(request.npy, images.reshape({images.size(0), -1}).contiguous());
  if (!common.quiet)
    std::cerr << fmt::format(
        "[inflab] {} images ({} per condition, {} model, {} DDIM steps, guidance {}, seed {}) -> {}{}\n",
        per_image.size(), request.count, request.base ? "base" : "fine-tuned", options.sampling_steps,
        options.guidance, options.seed, request.png.string(),
        request.npy.empty() ? "" : ", " + request.npy.string());
  return 0;
}

}  // namespace

static int run_cli(int argc, char** argv) {
  CLI::App app{"inflab: influence of training examples on LoRA-fine-tuned models (DataInf and baselines)"};
  app.require_subcommand(1);
  Common common;
  app.add_option("--threads", common.threads, "LibTorch threads (default: $INFLAB_THREADS or all cores)")
      ->check(CLI::Range(1, 4096));
  app.add_flag("--quiet", common.quiet, "no progress output");
  app.add_option("--kernels", common.kernels,
                 "pinned (default: the same numbers on every x86-64 processor with AVX2) or native (this "
                 "processor's own BLAS and vector kernels); also $INFLAB_KERNELS and the experiment's "
                 "[numerics] kernels, in that order (docs/performance.md, \"Pinned kernels\")")
      ->check(CLI::IsMember({"pinned", "native"}));
  app.add_option("--plugin-path", common.plugin_paths,
                 "extra plugin directory (repeatable; also $INFLAB_PLUGIN_PATH)");

  fs::path file, out = "results", cache, gradients_dir, score_out;
  std::vector<std::string> sets;
  bool no_resume = false, replace = false;
  std::string plugin_name, estimator_name, mode = "aggregate";

  auto* run = app.add_subcommand("run", "run an experiment (all sweep points) and print a results table");
  run->add_option("file", file, "experiment TOML file")->required()->check(CLI::ExistingFile);
  run->add_option("--set", sets, "override a key: --set model.lora.rank=8 (repeatable)");
  run->add_option("--out", out, "results root (default: results); runs go to OUT/<experiment>/<run>/");
  run->add_option("--cache", cache, "stage cache (default: $INFLAB_CACHE or ~/.cache/inflab)");
  run->add_flag("--no-resume", no_resume, "recompute runs that already finished");
  run->add_flag(
      "--replace", replace,
      "replace finished runs of another configuration or other kernels in --out (without it, such a "
      "run is an error, never overwritten)");

  auto* validate = app.add_subcommand(
      "validate", "check an experiment file (and its plugins' options) without running it");
  validate->add_option("file", file, "experiment TOML file")->required()->check(CLI::ExistingFile);
  validate->add_option("--set", sets, "override a key (repeatable)");

  auto* plugins = app.add_subcommand("plugins", "list plugins, or show one plugin's options");
  plugins->add_option("name", plugin_name, "plugin whose options to show");

  auto* gradients =
      app.add_subcommand("gradients", "write per-example LoRA gradients of an experiment to a directory");
  gradients->add_option("file", file, "experiment TOML file")->required()->check(CLI::ExistingFile);
  gradients->add_option("--out", gradients_dir, "output directory (train/, query/, blocks.json)")->required();
  gradients->add_option("--set", sets, "override a key (repeatable)");
  gradients->add_option("--cache", cache, "stage cache");
  bool safetensors = false;
  gradients->add_flag(
      "--safetensors", safetensors,
      "also write DIR/gradients.safetensors (tensors train/<block>, query/<block>, factors/...)");

  auto* score = app.add_subcommand(
      "score", "score a gradient directory (written by inflab, numpy or PyTorch) with one estimator");
  score
      ->add_option("--gradients", gradients_dir,
                   "directory with blocks.json, train/<block>.npy, query/<block>.npy")
      ->required()
      ->check(CLI::ExistingDirectory);
  score->add_option("--estimator", estimator_name, "estimator plugin (see `inflab plugins`)")->required();
  score->add_option("--set", sets, "estimator option: --set damping_scale=0.1 (repeatable)");
  score->add_option("--mode", mode, "aggregate (mean query gradient, n scores) or pairwise (n x q)");
  score->add_option("--out", score_out, "output .npy (float32; row i = training example i)")->required();
  std::string normalise = "none";
  score
      ->add_option("--normalise", normalise,
                   "none; unit: score / (||g_train|| ||g_query||); relatif: score / sqrt(the training "
                   "example's self-influence) (docs/estimators.md, \"Normalised scores\")")
      ->check(CLI::IsMember({"none", "unit", "relatif"}));
  std::vector<std::string> blocks;
  score->add_option("--blocks", blocks,
                    "only blocks matching these glob patterns, e.g. '*.lora_B' (repeatable)");

  std::string model_name = "minilm_lora";
  std::vector<std::string> texts;
  auto* embed = app.add_subcommand(
      "embed", "print a text model's sentence embedding (mean-pooled, L2-normalised) as a JSON array");
  embed->add_option("--model", model_name, "model plugin (default: minilm_lora)");
  embed->add_option("--text", texts, "text to embed (repeatable: one JSON array per text, in order)")
      ->required();
  embed->add_option("--set", sets, "model option, e.g. --set max_length=256 (repeatable)");

  std::string lm_name, prompt, lm_text;  // lm_name empty: smollm2_lora, or the --lora run's model
  fs::path lora_run;
  bool raw = false, json = false, special = false;
  fs::path logits_file;
  GenerationOptions generation;
  auto* generate =
      app.add_subcommand("generate", "continue a prompt with a language model (greedy by default)");
  generate->add_option("--model", lm_name, "language model plugin (default: smollm2_lora)");
  generate->add_option("--prompt", prompt, "the user's message (or, with --raw, the whole prompt)")
      ->required();
  generate->add_option("--max-tokens", generation.max_tokens, "most tokens to generate (default 64)");
  generate->add_option("--temperature", generation.temperature, "sampling temperature; 0 = greedy (default)");
  generate->add_option("--seed", generation.seed, "seed of sampling");
  generate->add_flag("--raw", raw, "feed the prompt as is, without the chat template");
  generate->add_flag("--json", json, "print {\"ids\": [...], \"text\": \"...\"} of the continuation");
  generate->add_option("--logits", logits_file,
                       "also write the float32 logits at the prompt's last position (.npy)");
  generate->add_option("--set", sets, "model option, e.g. --set system_prompt=... (repeatable)");
  generate->add_option("--lora", lora_run,
                       "a run directory of `inflab run` (results/<experiment>/<run>): its model with its "
                       "fine-tuned LoRA adapters (from the stage cache, on the run's kernels and, without "
                       "--threads, its thread count; retrained if evicted)");
  generate->add_option("--cache", cache,
                       "stage cache, with --lora (default: $INFLAB_CACHE or ~/.cache/inflab)");
  auto* tokenize =
      app.add_subcommand("tokenize", "print a language model's token ids of a text as a JSON array");
  tokenize->add_option("--model", lm_name, "language model plugin (default: smollm2_lora)");
  tokenize->add_option("--text", lm_text, "the text")->required();
  tokenize->add_flag("--special", special, "parse control tokens written in the text (<|im_start|>, ...)");
  tokenize->add_option("--set", sets, "model option (repeatable)");

  fs::path export_run, peft_out;
  auto* export_command = app.add_subcommand(
      "export", "write a run's fine-tuned LoRA adapters as a Hugging Face PEFT adapter directory");
  export_command
      ->add_option("run", export_run, "a run directory of `inflab run` (results/<experiment>/<run>)")
      ->required();
  export_command
      ->add_option("--peft", peft_out, "output directory (adapter_config.json, adapter_model.safetensors)")
      ->required();
  export_command->add_option("--cache", cache, "stage cache (the fine-tuned adapters; retrained if evicted)");
  export_command->footer(
      "Load it with PEFT: PeftModel.from_pretrained(AutoModel.from_pretrained(BASE), DIR); an inflab "
      "classifier\n"
      "head's LoRA goes to DIR/inflab_head.safetensors. docs/python.md, \"PEFT adapters\".");

  SampleRequest sample_request;
  auto* sample = app.add_subcommand(
      "sample", "generate images with an experiment's fine-tuned denoiser (task denoising) into a PNG grid");
  sample->add_option("file", file, "experiment TOML file (one run)")->required()->check(CLI::ExistingFile);
  sample->add_option("--set", sets, "override a key (repeatable)");
  sample->add_option("--cache", cache, "stage cache (the fine-tuned adapters; trained if missing)");
  sample->add_option("--condition", sample_request.conditions,
                     "a condition (class or style) name (repeatable; default: all)");
  sample->add_option("--count", sample_request.count, "images per condition: one row each (default 8)");
  sample->add_option("--steps", sample_request.sampling.sampling_steps, "DDIM steps (default 50)");
  sample->add_option("--seed", sample_request.sampling.seed, "seed of the starting noise (default 0)");
  sample_request.sampling.guidance = std::numeric_limits<double>::quiet_NaN();  // not given
  sample->add_option("--guidance", sample_request.sampling.guidance,
                     "classifier-free guidance scale (default: the experiment's [queries] guidance, else 1: "
                     "none); needs a base pretrained with training.pretrain_condition_dropout > 0");
  sample->add_option("--out", sample_request.png, "output PNG")->required();
  sample->add_option("--npy", sample_request.npy,
                     "also write the images as float32 .npy (images x pixels, rows condition by condition)");
  sample->add_flag(
      "--base", sample_request.base,
      "sample the pretrained base model, without the fine-tuned adapters (no fine-tuning is run)");

  int launch_ranks = 0;
  auto* index_command = app.add_subcommand("index", "an on-disk index of a run's training gradients");
  index_command->require_subcommand(1);
  auto* index_build = index_command->add_subcommand(
      "build", "write an experiment run's training gradients (projected with [projection]) as an index");
  fs::path index_out;
  IndexBuildOptions index_options;
  index_build->add_option("file", file, "experiment TOML file (one run)")
      ->required()
      ->check(CLI::ExistingFile);
  index_build->add_option("--out", index_out, "index directory (new)")->required();
  index_build->add_option("--set", sets, "override a key (repeatable)");
  index_build->add_option("--dtype", index_options.dtype,
                          "float16 (default), bfloat16 (both half the size of float32, scored in float32) or "
                          "float32");
  index_build
      ->add_option(
          "--fit", index_options.fit,
          "estimators whose preconditioner is fitted once and kept with the index, where it is no "
          "larger than the training rows (comma-separated; default datainf; none: keep none; explain "
          "fits any other at query time)")
      ->delimiter(',');
  index_build->add_option("--fit-budget-mb", index_options.fit_budget_mb,
                          "largest size of one estimator's kept preconditioners (d x d float32 per block; "
                          "default 2048)");
  index_build->add_flag(
      "--self-influence", index_options.self_influence,
      "also keep each kept fit's self-influence of every training row, for `explain "
      "--normalise relatif` (costs d x d per row and block, once; given for an index built without it, "
      "adds it in place)");
  index_build->add_option("--cache", cache, "stage cache");
  auto* index_append = index_command->add_subcommand(
      "append",
      "add examples to an index as a new shard: their gradients under the index's adapter and projection "
      "(kept preconditioners are left as fitted on the run's training rows)");
  fs::path append_index, append_examples;
  std::vector<std::string> append_classes;
  index_append->add_option("index", append_index, "index directory (from `inflab index build`)")
      ->required()
      ->check(CLI::ExistingDirectory);
  index_append
      ->add_option(
          "examples", append_examples,
          "a language model's: JSON lines, one {\"prompt\": \"...\", \"response\": \"...\"} per "
          "example; a classifier's or a denoiser's: a .npy of inputs, one per row, shaped as the run's")
      ->required()
      ->check(CLI::ExistingFile);
  index_append->add_option(
      "--class", append_classes,
      "a classifier's or a denoiser's rows: their class (label, or condition) by name, one "
      "for all rows or one per row (repeatable)");
  index_append->add_option("--cache", cache, "stage cache (the index's fine-tuned adapter is read from it)");
  index_append->footer(
      "Example: inflab index append idx-math more.jsonl   (then: inflab explain idx-math --prompt ...; "
      "docs/explain.md, \"Appending examples\")\n"
      "Images:  inflab index append idx-styles more.npy --class sketch\n"
      "By N ranks, a shard each: inflab launch -n 2 index append idx-math more.jsonl");
  index_build->footer(
      "Example: inflab index build experiments/quickstart.toml --out idx   (then: inflab explain idx "
      "--validation 0)\n"
      "By N ranks, a shard each: inflab launch -n 2 index build FILE.toml --out idx   (docs/explain.md)");

  ExplainRequest explain_request;
  auto* explain = app.add_subcommand(
      "explain", "the most helpful and harmful training examples of queries, scored against an index");
  explain->add_option("index", explain_request.index, "index directory (`inflab index build`)")
      ->required()
      ->check(CLI::ExistingDirectory);
  explain->add_option("--prompt", explain_request.prompts,
                      "a prompt (repeatable); the fine-tuned model answers it unless --response is given");
  explain->add_option("--response", explain_request.responses,
                      "answers to score, the i-th for the i-th --prompt (the rest are generated)");
  explain->add_option("--queries", explain_request.queries_file,
                      "JSON lines {\"prompt\": ..., \"response\": ...} (response optional)");
  explain->add_option("--validation", explain_request.validation_rows,
                      "a validation row of the index's run as the query (repeatable)");
  explain->add_option(
      "--condition", explain_request.conditions,
      "denoisers: a condition (repeatable); the fine-tuned model draws one image for each, or "
      "with --image the images' condition (one for all, or one per image)");
  explain->add_option("--image", explain_request.images_file, "denoisers: a .npy of images (rows) to score")
      ->check(CLI::ExistingFile);
  explain
      ->add_option("--steps", explain_request.sampling_steps,
                   "DDIM steps of drawn images (default 50, as inflab sample)")
      ->check(CLI::Range(1, 1000000));
  explain->add_option("--seed", explain_request.seed, "starting noise of drawn images (default 0)");
  explain->add_option("--save-images", explain_request.save_images,
                      "write the image queries: FILE.npy (rows, as scored) or a PNG row");
  explain->add_option("--estimator", explain_request.estimator, "estimator plugin (default datainf)");
  explain->add_option("--set", explain_request.estimator_sets,
                      "estimator option, e.g. --set damping_scale=0.1");
  explain->add_option("--top", explain_request.top, "training examples listed per side (default 5)");
  explain->add_option("--max-tokens", explain_request.max_tokens, "longest generated answer (default 64)");
  explain->add_option("--hash-limit-mb", explain_request.hash_limit_mb,
                      "shards up to this size in total are checked byte by byte when the index opens, larger "
                      "ones by size (default 64; about 1 s per GB to hash; rebuilding the index checks all)");
  explain->add_option("--chunk-rows", explain_request.chunk_rows,
                      "training rows scored at a time (default 0: 16 MiB of float32 values; memory: rows x "
                      "total width x 4 bytes)");
  explain
      ->add_option("--normalise", explain_request.normalise,
                   "none; unit: each score divided by the training and query gradients' norms (with "
                   "hessian_free, the gradient cosine); relatif: by the square root of the training "
                   "example's self-influence g.M^-1 g (kept by `index build --self-influence`, else "
                   "computed first; docs/estimators.md, \"Normalised scores\")")
      ->check(CLI::IsMember({"none", "unit", "relatif"}));
  explain->add_flag("--json", explain_request.json, "print JSON (one object per query) instead of text");
  explain->add_option("--cache", explain_request.cache, "stage cache (for the fine-tuned model)");
  explain->footer(
      "Scores: < 0 helpful (up-weighting the example lowers the query's loss), > 0 harmful.\n"
      "Example: inflab explain idx --validation 0 --estimator hessian_free --top 3");

  double launch_timeout = 300;
  std::vector<std::string> launch_arguments;
  auto* launch = app.add_subcommand(
      "launch",
      "run an experiment on N local ranks (distributed, like torchrun): inflab launch -n 2 FILE.toml");
  launch->add_option("-n,--ranks", launch_ranks, "number of ranks (processes)")->required();
  launch->add_option("--timeout", launch_timeout, "seconds a collective may wait for a rank (default 300)");
  // Everything after the options (FILE.toml and `inflab run` options) goes to each rank's run.
  launch->prefix_command();
  launch->footer(
      "Example: inflab --threads 1 launch -n 2 experiments/quickstart.toml --set dataset.n_train=4000\n"
      "An index by ranks (a shard each): inflab launch -n 2 index build FILE.toml --out IDX\n"
      "Appended by ranks (a shard each): inflab launch -n 2 index append IDX FILE.jsonl");

  CLI11_PARSE(app, argc, argv);
  Progress::set_quiet(common.quiet);
  try {
    if (*launch) {
      launch_arguments = launch->remaining();
      if (launch_arguments.empty()) throw Error("launch: expected FILE.toml (and any `inflab run` options)");
      if (!common.kernels.empty()) setenv("INFLAB_KERNELS", common.kernels.c_str(), 1);  // for each rank
      return command_launch(launch_ranks, launch_arguments, common.threads, launch_timeout);
    }
    // A finished run's fine-tuned model (generate --lora, export) is cached for the run's thread
    // count: unless the user chose one, use it (before anything reads the count).
    const fs::path model_run = *generate ? lora_run : *export_command ? export_run : fs::path();
    if (const char* env = std::getenv("INFLAB_THREADS");
        !model_run.empty() && common.threads == 0 && !(env && *env))
      if (const int run_threads = recorded_threads(model_run / "manifest.json"); run_threads > 0) {
        common.threads = run_threads;
        if (!common.quiet && !std::getenv("INFLAB_KERNELS_RESTARTED"))  // once, not again after a restart
          std::cerr << fmt::format(
              "[inflab] {} thread(s), as {} was run with (its adapter is cached for them)\n", run_threads,
              model_run.string());
      }
    configure_threads(common.threads);  // LibTorch defaults to 1 thread on these machines
    // Commands without an experiment file choose their kernels now; the others once it is read.
    const bool reads_experiment = *run || *validate || *gradients || *sample || *export_command ||
                                  (*generate && !lora_run.empty()) || *index_command || *explain;
    if (!reads_experiment && !*plugins) use_kernels(common);
    if (*run) return command_run(file, sets, out, cache, no_resume, replace, common);
    if (*validate) return command_validate(file, sets, common);
    if (*plugins) return command_plugins(plugin_name, common);
    if (*gradients) return command_gradients(file, sets, gradients_dir, cache, safetensors, common);
    if (*score)
      return command_score(gradients_dir, estimator_name, sets, mode, normalise, score_out, blocks, common);
    if (*embed) return command_embed(model_name, texts, sets, common);
    if (*generate)
      return command_generate(lm_name, prompt, raw, json, logits_file, generation, sets, lora_run, cache,
                              common);
    if (*sample) return command_sample(file, sets, cache, sample_request, common);
    if (*export_command) return command_export(export_run, peft_out, cache, common);
    if (*index_build) {
      Registry registry;
      load_plugins(registry, common);
      auto runs = load_experiment(file, sets, registry);
      if (runs.size() != 1)
        throw Error(fmt::format("{}: {} runs; an index holds one (e.g. --set 'sweep={{}}')", file.string(),
                                runs.size()));
      use_kernels(common, runs);
      join_distributed_from_environment();  // `inflab launch -n N index build ...`: a shard per rank
      return command_index_build(runs[0], registry, index_out, cache, index_options);
    }
    if (*explain || *index_append) {
      Registry registry;
      load_plugins(registry, common);
      const fs::path& index = *explain ? explain_request.index : append_index;
      const fs::path config = index / "config.toml";
      if (!fs::is_regular_file(config))
        throw Error(
            fmt::format("{}: not an index (no config.toml); build one with `inflab index build FILE.toml "
                        "--out DIR`",
                        index.string()));
      use_kernels(common, load_experiment(config, {}, registry));
      if (*index_append) {
        join_distributed_from_environment();  // `inflab launch -n N index append ...`: a shard per rank
        return command_index_append(append_index, append_examples, append_classes, registry, cache);
      }
      explain_request.cache = cache.empty() ? explain_request.cache : cache;
      return command_explain(explain_request, registry);
    }
    if (*tokenize)
      return command_tokenize(lm_name.empty() ? "smollm2_lora" : lm_name, lm_text, special, sets, common);
  } catch (const Error& e) {
    std::cerr << "inflab: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "inflab: internal error: " << e.what() << "\n";
    return 3;
  }
  return 0;
}

// Nothing escapes main: an exception while setting up the command line is reported too.
int main(int argc, char** argv) {
  try {
    remember_command_line(argc, argv);  // select_kernels may start the process again
    return run_cli(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "inflab: internal error: " << e.what() << "\n";
  } catch (...) {
    std::cerr << "inflab: internal error: unknown exception\n";
  }
  return 3;
}
