#include "inflab/index.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "inflab/error.hpp"
#include "inflab/io.hpp"
#include "inflab/language_model.hpp"
#include "inflab/pipeline.hpp"
#include "inflab/progress.hpp"
#include "inflab/registry.hpp"
#include "inflab/sampling.hpp"
#include "inflab/task_table.hpp"
#include "stage_keys.hpp"
#include "stages/stages.hpp"

namespace fs = std::filesystem;

namespace inflab {

namespace {
constexpr int kIndexVersion = 1;

nlohmann::json record_json(const IndexRecord& r) {
  return {{"format", "inflab-index"},       {"version", kIndexVersion},
          {"experiment", r.experiment},     {"run", r.run},
          {"finetune_key", r.finetune_key}, {"gradients_key", r.gradients_key},
          {"projection", r.projection},     {"dtype", r.dtype},
          {"examples", r.examples}};
}

IndexRecord read_record(const fs::path& file) {
  if (!fs::is_regular_file(file))
    throw Error(fmt::format(
        "{}: not found; an index directory is written by `inflab index build FILE.toml --out DIR`",
        file.string()));
  nlohmann::json j;
  try {
    std::ifstream in(file);
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw Error(fmt::format("{}: not valid JSON ({})", file.string(), e.what()));
  }
  if (j.value("format", "") != "inflab-index" || j.value("version", 0) != kIndexVersion)
    throw Error(fmt::format("{}: expected format \"inflab-index\" version {}, found {} version {}",
                            file.string(), kIndexVersion, j.value("format", std::string("(none)")),
                            j.value("version", 0)));
  IndexRecord r;
  try {
    r.experiment = j.at("experiment"), r.run = j.at("run"), r.finetune_key = j.at("finetune_key");
    r.gradients_key = j.at("gradients_key"), r.projection = j.at("projection"), r.dtype = j.at("dtype");
    r.examples = j.at("examples");
  } catch (const std::exception& e) {
    throw Error(fmt::format("{}: {}", file.string(), e.what()));
  }
  return r;
}
}  // namespace

IndexRecord build_index(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                        const fs::path& dir, const std::string& dtype) {
  if (dtype != "float16" && dtype != "float32")
    throw Error(fmt::format("--dtype: expected float16 or float32, found '{}'", dtype));
  IndexRecord record{config.source.string(),
                     config.run_name,
                     stage_key("finetune", config),
                     stage_key("gradients", config),
                     "",
                     dtype,
                     0};
  if (fs::exists(dir / "index.json")) {
    const IndexRecord existing = read_record(dir / "index.json");
    if (existing.gradients_key == record.gradients_key && existing.dtype == dtype) {
      log(fmt::format("index {}: already built from these gradients", dir.string()));
      return existing;
    }
    throw Error(
        fmt::format("{}: holds the index of other gradients ({} run {}, dtype {}); choose another --out "
                    "or remove it",
                    dir.string(), existing.experiment, existing.run, existing.dtype));
  }
  if (fs::exists(dir) && !fs::is_empty(dir))
    throw Error(fmt::format("--out {}: exists and is not an index; choose a new folder", dir.string()));
  GradientStore store = prepare_gradients(config, registry, paths);
  record.projection = store.projection;
  record.examples = store.train.empty() ? 0 : store.train[0].values.size(0);
  if (dtype == "float16")
    for (auto& block : store.train) block.values = block.values.to(torch::kHalf);
  PendingEntry pending(dir);
  save_gradient_store(pending.temporary / "gradients", store);
  const fs::path examples = gradients_directory(stage_inputs("gradients", config), paths) / "examples.jsonl";
  if (fs::exists(examples)) write_file_atomic(pending.temporary / "examples.jsonl", read_file(examples));
  write_file_atomic(pending.temporary / "config.toml", config.resolved_toml);
  write_file_atomic(pending.temporary / "index.json", record_json(record).dump(1) + "\n");
  write_directory_checksums(pending.temporary);
  pending.commit();
  return record;
}

AttributionIndex open_index(const fs::path& dir, Registry& registry) {
  AttributionIndex index;
  index.dir = dir;
  index.record = read_record(dir / "index.json");
  if (std::string problem = verify_directory_checksums(dir); !problem.empty())
    throw Error(fmt::format("index {}: {}; rebuild it with `inflab index build`", dir.string(), problem));
  auto runs = load_experiment(dir / "config.toml", {}, registry);
  if (runs.size() != 1)
    throw Error(fmt::format("{}: describes {} runs; an index holds one run's configuration",
                            (dir / "config.toml").string(), runs.size()));
  index.config = std::move(runs[0]);
  // The plugins or the framework changed what the adapter or the gradients would be: the index
  // no longer describes what the model now computes.
  for (const auto& [stage, recorded] :
       {std::pair<const char*, std::string>{"finetune", index.record.finetune_key},
        {"gradients", index.record.gradients_key}})
    if (const std::string now = stage_key(stage, index.config); now != recorded)
      throw Error(
          fmt::format("index {}: built from {} stage {}, but its configuration now gives {} (a plugin, "
                      "the kernels or inflab changed it); rebuild it with `inflab index build {}`",
                      dir.string(), stage, recorded, now, index.record.experiment));
  index.store = load_gradient_store(dir / "gradients");
  if (index.store.projection != index.record.projection)
    throw Error(fmt::format("index {}: gradients/blocks.json says projection '{}', index.json '{}'",
                            dir.string(), index.store.projection, index.record.projection));
  std::ifstream lines(dir / "examples.jsonl");
  for (std::string line; std::getline(lines, line);)
    if (line.find("\"split\":\"train\"") != std::string::npos) index.examples.push_back(line);
  return index;
}

PromptGradients prompt_gradients(const AttributionIndex& index, Registry& registry, const RunPaths& paths,
                                 const std::vector<std::string>& prompts,
                                 const std::vector<std::string>& responses, std::int64_t max_tokens) {
  {  // Before any fine-tuning: only a language model answers prompts.
    auto unbuilt =
        registry.create_as<Model>(PluginKind::Model, index.config.model.plugin, index.config.model.options);
    if (!capability<LanguageModel>(*unbuilt))
      throw Error(
          fmt::format("--prompt: prompts as queries need a language model; the index's model '{}' is not "
                      "one (use --validation ROW)",
                      index.config.model.plugin));
  }
  FinetunedModel tuned = finetuned_model(index.config, registry, paths);
  auto queries = prompt_query_gradients(stage_inputs("gradients", index.config), *tuned.model, prompts,
                                        responses, max_tokens);
  return {queries.prompts, queries.answers, std::move(queries.gradients)};
}

ImageGradients image_gradients(const AttributionIndex& index, Registry& registry, const RunPaths& paths,
                               const std::vector<std::string>& conditions, const fs::path& images_file,
                               std::int64_t sampling_steps, std::uint64_t seed) {
  if (conditions.empty()) throw Error("--image: give the images' condition with --condition NAME");
  if (!find_task(index.config.task)->generates_images)  // before any model is built
    throw Error(
        fmt::format("--condition/--image: the index's run is not a denoiser (task '{}'); use --validation "
                    "ROW or, for a language model, --prompt",
                    index.config.task));
  FinetunedModel tuned = finetuned_model(index.config, registry, paths);
  std::vector<std::int64_t> ids;
  for (const auto& name : conditions) {
    auto it = std::find(tuned.class_names.begin(), tuned.class_names.end(), name);
    if (it == tuned.class_names.end())
      throw Error(fmt::format("--condition {}: not a condition of the index's dataset; conditions: {}", name,
                              fmt::join(tuned.class_names, ", ")));
    ids.push_back(it - tuned.class_names.begin());
  }
  ImageGradients out;
  std::int64_t pixels = 1;
  for (auto d : tuned.example_shape) pixels *= d;
  std::vector<std::int64_t> shape{-1};
  shape.insert(shape.end(), tuned.example_shape.begin(), tuned.example_shape.end());
  if (images_file.empty()) {
    SamplingOptions options;
    options.diffusion_steps = tuned.task_options.get_int("diffusion_steps");
    options.sampling_steps = sampling_steps;
    options.seed = seed;
    out.images = sample_images(*tuned.model, ids, tuned.example_shape, options).contiguous();
  } else {
    at::Tensor images = load_npy(images_file).to(torch::kFloat);
    if (images.dim() < 2 || images.numel() % pixels != 0 || images.numel() / images.size(0) != pixels)
      throw Error(fmt::format("--image {}: expected rows of {} values (images of shape {}), found shape ({})",
                              images_file.string(), pixels, fmt::join(tuned.example_shape, " x "),
                              fmt::join(images.sizes(), ", ")));
    out.images = images.reshape(shape).contiguous();
    const std::int64_t rows = out.images.size(0);
    if (ids.size() == 1) ids.assign(static_cast<std::size_t>(rows), ids[0]);
    if (static_cast<std::int64_t>(ids.size()) != rows)
      throw Error(
          fmt::format("--image {} has {} images and {} --condition; give one condition for all or one "
                      "per image",
                      images_file.string(), rows, conditions.size()));
  }
  for (auto id : ids) out.conditions.push_back(tuned.class_names[static_cast<std::size_t>(id)]);
  out.gradients =
      image_query_gradients(stage_inputs("gradients", index.config), *tuned.model, out.images, ids);
  return out;
}

GradientBlocks gather_queries(const AttributionIndex& index, const std::vector<std::int64_t>& validation_rows,
                              const GradientBlocks& extra) {
  const std::int64_t count = index.store.query.empty() ? 0 : index.store.query[0].values.size(0);
  for (auto row : validation_rows)
    if (row < 0 || row >= count)
      throw Error(
          fmt::format("--validation {}: the index's run has validation rows 0 to {}", row, count - 1));
  GradientBlocks out;
  for (std::size_t b = 0; b < index.store.train.size(); ++b) {
    std::vector<torch::Tensor> pieces;
    if (!validation_rows.empty())
      pieces.push_back(
          index.store.query[b].values.index_select(0, torch::tensor(validation_rows, torch::kLong)));
    if (!extra.empty()) pieces.push_back(extra.at(b).values);
    out.push_back({index.store.train[b].name, torch::cat(pieces).contiguous()});
  }
  return out;
}

std::vector<QueryRanking> rank_training_rows(const at::Tensor& scores, std::int64_t k) {
  const at::Tensor columns = scores.dim() == 1 ? scores.unsqueeze(1) : scores;
  const std::int64_t n = columns.size(0), top = std::min(k, n);
  std::vector<QueryRanking> out;
  const at::Tensor values = columns.to(torch::kDouble).contiguous();
  for (std::int64_t q = 0; q < columns.size(1); ++q) {
    QueryRanking ranking;
    const at::Tensor column = values.select(1, q);
    for (bool harmful : {false, true}) {
      auto [picked, rows] = column.topk(top, 0, /*largest=*/harmful, /*sorted=*/true);
      auto& list = harmful ? ranking.harmful : ranking.helpful;
      for (std::int64_t i = 0; i < top; ++i)
        list.push_back({rows[i].item<std::int64_t>(), picked[i].item<double>()});
    }
    out.push_back(std::move(ranking));
  }
  return out;
}

}  // namespace inflab
