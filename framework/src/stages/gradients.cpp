// The gradients stage: per-example gradients of the training losses and of the queries'
// measurements, written to a cached gradient store.
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "../sections.hpp"
#include "inflab/causal_lm.hpp"
#include "inflab/distributed.hpp"
#include "inflab/io.hpp"
#include "inflab/language_model.hpp"
#include "inflab/lora.hpp"
#include "inflab/progress.hpp"
#include "inflab/sampling.hpp"
#include "inflab/task_table.hpp"
#include "stages.hpp"

namespace fs = std::filesystem;

namespace inflab {

// The batch size of extraction changes no gradient (each example's own loss), nor does the
// memory budget (where the values live): both are settings, outside the key.
const StageDeclaration& gradients_stage() {
  static const StageDeclaration stage{"gradients",
                                      6,  // 6: train.npy of denoisers (5: examples.jsonl for every dataset)
                                      {"finetune"},
                                      {"task", "evaluation.gradient_dtype", "queries", "projection"},
                                      {},
                                      {"dataset", "model"},
                                      {"evaluation.gradient_batch_size", "evaluation.gradient_memory_mb"},
                                      {"projection"},
                                      {{"queries.guidance", 1.0}}};
  return stage;
}

// [queries] (only with task.name = "denoising"): generate_queries below.
const SectionSchema& queries_section() {
  static const SectionSchema section{
      "queries",
      {
          {"generated_per_class", OptionType::Int, std::int64_t{10},
           "images the fine-tuned denoiser generates per training class; they replace the validation queries",
           false, between(1, 1e6)},
          {"sampling_steps", OptionType::Int, std::int64_t{50}, "DDIM steps", false, between(1, 1e6)},
          {"seed", OptionType::Int, std::int64_t{0}, "seed of the starting noise"},
          {"guidance", OptionType::Double, 1.0,
           "classifier-free guidance scale of the generated queries (1: none; needs "
           "training.pretrain_condition_dropout > 0)",
           false, at_least(0)},
      }};
  return section;
}

// [projection] (optional): random projection of every block's gradients (inflab/projection.hpp).
const SectionSchema& projection_section() {
  static const SectionSchema section{
      "projection",
      {
          {"kind", OptionType::String, std::string("gaussian"),
           "gaussian | sparse (Achlioptas) | factorised (LoGra: a LoRA layer's wide side only) | none"},
          {"dim", OptionType::Int, std::int64_t{1024},
           "values per block after projection (factorised: dim / rank per side); a block no wider is kept "
           "whole",
           false, between(1, 1e9)},
          {"seed", OptionType::Int, std::int64_t{0}, "seed of the projection matrices", false,
           between(0, 9e15)},
      },
      [](Options& values) -> std::optional<SectionProblem> {
        return one_of(values, "projection", "kind", {"gaussian", "sparse", "factorised", "none"});
      }};
  return section;
}

namespace {
Projection projection_of(const StageInputs& inputs) {
  Projection projection;
  if (!inputs.present("projection")) return projection;
  projection.kind = projection_kind(inputs.get_string("projection.kind"));
  projection.dim = inputs.get_int("projection.dim");
  projection.seed = static_cast<std::uint64_t>(inputs.get_int("projection.seed"));
  return projection;
}
}  // namespace

namespace {

// A language model answering instructions: its greedy answer to every test prompt, and the share
// exactly equal to the expected response (the paper's "did the model learn the tasks").
struct ModelMeasurements {
  std::map<std::string, double> metrics;
  std::vector<std::string> answers;  // per test example; empty for other models
};
// A classifier: accuracy on the training labels it was fine-tuned on (observed, noisy) and on the
// validation set, and the validation set's mean loss (what ground truth retrains against).
std::map<std::string, double> measure_classifier(Model& model, const Task& task, const LoadedData& data,
                                                 std::int64_t batch_size) {
  torch::NoGradGuard no_grad;
  model.set_training(false);
  auto accuracy = [&](const Batch& examples) {
    std::int64_t correct = 0;
    for (std::int64_t s = 0; s < examples.size(); s += batch_size) {
      const Batch part = examples.slice(s, std::min(batch_size, examples.size() - s));
      correct += model.forward(part.inputs).argmax(1).eq(part.targets).sum().item<std::int64_t>();
    }
    return static_cast<double>(correct) / static_cast<double>(std::max<std::int64_t>(1, examples.size()));
  };
  double loss = 0;
  for (std::int64_t s = 0; s < data.validation.size(); s += batch_size)
    loss +=
        task.example_losses(model, data.validation.slice(s, std::min(batch_size, data.validation.size() - s)))
            .sum()
            .item<double>();
  return {{"train_accuracy", accuracy(data.train)},
          {"validation_accuracy", accuracy(data.validation)},
          {"validation_loss", loss / static_cast<double>(std::max<std::int64_t>(1, data.validation.size()))}};
}

// The model's greedy answer to a prompt as fine-tuning saw prompts: in the chat template, or raw
// text (template = "raw").
std::string greedy_answer(LanguageModel& language, const std::string& prompt, bool chat,
                          std::int64_t max_tokens) {
  const auto ids =
      chat ? language.tokenize(language.chat_prompt(prompt), true) : language.tokenize(prompt, false);
  GenerationOptions options;
  options.max_tokens = max_tokens;
  return language.detokenize(language.generate(ids, options));
}

// A language model: its greedy answers to the test prompts, exact-match accuracy. They depend on
// the fine-tuned adapter and the template alone, so they are cached under the finetune stage's key
// (runs that differ in what the influence loss covers share them).
ModelMeasurements measure_model(Model& model, const Task& task, const LoadedData& data,
                                std::int64_t batch_size, const StageInputs& inputs, const RunPaths& paths) {
  if (find_task(task.name())->trains_on_class_labels)
    return {measure_classifier(model, task, data, batch_size), {}};
  auto* language = capability<LanguageModel>(model);
  const Split& test = data.splits.validation;
  if (!language || test.responses.empty()) return {};
  const bool chat = inputs.get_string("task.template") == "chat";
  const fs::path cache = cache_root_of(paths) / "answers" /
                         (content_hash(fmt::format("answers 1\nafter finetune {}\ntemplate {}\n",
                                                   inputs.upstream_key("finetune"), chat ? "chat" : "raw")) +
                          ".json");
  ModelMeasurements measured;
  if (fs::exists(cache) && verify_checksum_sidecar(cache).empty()) {
    try {
      std::ifstream in(cache);
      const auto saved = nlohmann::json::parse(in);
      measured.answers = saved.at("answers").get<std::vector<std::string>>();
      measured.metrics["test_accuracy"] = saved.at("test_accuracy").get<double>();
      if (measured.answers.size() == test.responses.size()) {
        log(fmt::format("test answers: cached ({} of {} exact)", saved.at("correct").get<std::int64_t>(),
                        test.responses.size()));
        return measured;
      }
    } catch (const std::exception& e) {
      warn(fmt::format("cache entry {} is unreadable ({}); recomputing", cache.string(), e.what()));
    }
    measured = {};
  }
  auto start = Clock::now();
  Progress progress("test answers", test.size(), "prompts");
  std::int64_t correct = 0;
  for (std::size_t i = 0; i < test.responses.size(); ++i) {
    const auto expected = language->tokenize(test.responses[i], false);
    measured.answers.push_back(
        greedy_answer(*language, test.texts[i], chat, 2 * static_cast<std::int64_t>(expected.size()) + 8));
    correct += measured.answers.back() == test.responses[i];
    progress.advance();
  }
  progress.finish();
  const double accuracy = static_cast<double>(correct) / static_cast<double>(test.responses.size());
  log(fmt::format("test answers: {} of {} exact ({:.1f} s)", correct, test.responses.size(),
                  seconds_since(start)));
  measured.metrics["test_accuracy"] = accuracy;
  fs::create_directories(cache.parent_path());
  PendingEntry pending(cache);
  std::ofstream(pending.temporary) << nlohmann::json{
      {"answers", measured.answers},
      {"test_accuracy", accuracy},
      {"correct", correct}}.dump();
  fs::path sidecar = cache;
  sidecar += ".checksum";
  write_checksum_sidecar(pending.temporary, sidecar);
  pending.commit();
  return measured;
}

// [queries]: the fine-tuned denoiser's own images, generated_per_class for each class of the
// training split (its conditions), replace the validation split as the queries; their ids are
// new (the denoising noise is drawn from ids). Written as queries.npy and queries.png beside the
// gradients, one row of the grid per class.
void generate_queries(const StageInputs& inputs, Model& model, LoadedData& data, const fs::path& directory) {
  auto start = Clock::now();
  const torch::Tensor classes = std::get<0>(torch::sort(std::get<0>(torch::_unique(data.train.targets))));
  const std::int64_t per_class = inputs.get_int("queries.generated_per_class");
  std::vector<std::int64_t> conditions, ids;
  for (std::int64_t c = 0; c < classes.size(0); ++c)
    for (std::int64_t k = 0; k < per_class; ++k)
      conditions.push_back(classes[c].item<std::int64_t>()), ids.push_back(1'000'000'000 + c * per_class + k);
  SamplingOptions options;
  options.diffusion_steps = inputs.get_int("task.diffusion_steps");
  options.sampling_steps = inputs.get_int("queries.sampling_steps");
  options.seed = static_cast<std::uint64_t>(inputs.get_int("queries.seed"));
  options.guidance = inputs.get_double("queries.guidance");
  std::vector<std::int64_t> shape(data.train.inputs.sizes().begin() + 1, data.train.inputs.sizes().end());
  torch::Tensor images = sample_images(model, conditions, shape, options).contiguous();
  save_npy(directory / "queries.npy", images);
  save_png_grid(directory / "queries.png", images, per_class);
  data.validation = Batch{images, torch::tensor(conditions, torch::kLong), torch::tensor(ids, torch::kLong)};
  data.query_meta = ExampleMeta{ids, conditions, conditions, std::vector<std::uint8_t>(ids.size(), 0)};
  data.splits.validation.inputs = images;
  data.splits.validation.labels = torch::tensor(conditions, torch::kLong);
  data.splits.validation.ids = ids;
  log(fmt::format(
      "queries: {} images generated by the fine-tuned model ({} per class, {} DDIM steps, guidance {}, "
      "{:.1f} s)",
      ids.size(), per_class, options.sampling_steps, options.guidance, seconds_since(start)));
}

// Every example, one JSON object per line in the row order of the scores: split, row, id, class
// label and, for text datasets, the text (instructions: the response, and on query rows the
// fine-tuned model's greedy answer). Results show influential examples and recompute class
// metrics from it.
void write_examples(const fs::path& file, const LoadedData& data, const std::vector<std::string>& answers) {
  write_file_atomic(file, [&](std::ostream& out) {
    for (const auto& [name, split] :
         {std::pair<const char*, const Split*>{"train", &data.splits.train},
          std::pair<const char*, const Split*>{"query", &data.splits.validation}}) {
      for (std::size_t i = 0; i < split->ids.size(); ++i) {
        nlohmann::json line{{"split", name},
                            {"row", i},
                            {"id", split->ids[i]},
                            {"label", split->labels[static_cast<std::int64_t>(i)].item<std::int64_t>()}};
        if (i < split->texts.size()) line["text"] = split->texts[i];
        if (i < split->responses.size()) line["response"] = split->responses[i];
        if (split == &data.splits.validation && i < answers.size()) line["answer"] = answers[i];
        out << line.dump() << "\n";
      }
    }
  });
}

}  // namespace

fs::path gradients_directory(const StageInputs& inputs, const RunPaths& paths) {
  return cache_root_of(paths) / "gradients" / inputs.key();
}

GradientStore extract_gradients(const StageInputs& inputs, Model& model, LoadedData& data,
                                const RunPaths& paths, RunOutcome& outcome, bool measure) {
  auto start = Clock::now();
  const fs::path gradient_dir = gradients_directory(inputs, paths);
  PendingEntry pending(gradient_dir);
  const fs::path& temporary = pending.temporary;
  const std::string dtype_name = inputs.get_string("evaluation.gradient_dtype");
  const auto dtype = dtype_name == "float16" ? torch::kHalf : torch::kFloat;
  // Distributed: each rank extracts the gradients of its shard of the training rows.
  const Shard shard = shard_of(data.train.size());
  Batch train = data.train.slice(shard.begin, shard.size());
  ExampleMeta train_meta = data.train_meta;
  if (distributed_world_size() > 1) {
    auto cut = [&](auto& v) {
      v = std::decay_t<decltype(v)>(v.begin() + shard.begin, v.begin() + shard.end);
    };
    cut(train_meta.ids), cut(train_meta.labels), cut(train_meta.observed_labels), cut(train_meta.flipped);
  }
  auto task = make_task(inputs.get_string("task.name"), inputs.section("task"));
  const Projection projection = projection_of(inputs);
  std::int64_t width = 0;
  for (auto* layer : model.lora_layers())
    if (layer->has_adapter()) {
      const auto shape = projected_layer(projection, layer->lora_a().size(1), layer->rank(),
                                         layer->lora_b().size(0), task->gradient_parts());
      width += shape.width_a + shape.width_b;
    }
  const double train_mb = static_cast<double>(shard.size()) * static_cast<double>(width) *
                          static_cast<double>(c10::elementSize(dtype)) / 1048576.0;
  // Over the budget (or 16-bit): extraction writes each batch straight into mapped files.
  const bool on_disk =
      train_mb > inputs.get_double("evaluation.gradient_memory_mb") || dtype != torch::kFloat;
  BlockAllocator to_disk = [&](const std::string& block, std::int64_t rows, std::int64_t cols) {
    return create_mapped_npy(temporary / "train" / (block + ".npy"), {rows, cols}, dtype);
  };
  if (on_disk)
    log(fmt::format("gradients: {:.0f} MiB of training gradients ({}) go to memory-mapped files in {}",
                    train_mb, dtype_name, gradient_dir.string()));
  if (inputs.present("queries")) {
    fs::create_directories(temporary);
    generate_queries(inputs, model, data, temporary);
  }
  GradientStore store;
  const std::int64_t batch_size = inputs.get_int("evaluation.gradient_batch_size");
  // Kronecker factors, unless a block concatenates per-row gradients (which have none).
  GradientRequest request{batch_size,
                          "train gradients",
                          /*factors=*/task->gradient_parts() == 1,
                          /*measure=*/false,
                          on_disk ? to_disk : BlockAllocator{},
                          projection};
  store.train = per_example_gradients(model, *task, train, request);
  store.query = per_example_gradients(model, *task, data.validation,
                                      {batch_size, "validation gradients", false, true, {}, projection});
  store.projection = projection.describe();
  ModelMeasurements measured =
      measure ? measure_model(model, *task, data, batch_size, inputs, paths) : ModelMeasurements{};
  store.model_metrics = measured.metrics;
  store.train_meta = std::move(train_meta);
  store.query_meta = data.query_meta;
  save_gradient_store(temporary, store, /*train_values_written=*/on_disk);
  write_examples(temporary / "examples.jsonl", data, measured.answers);
  // A denoiser's training images beside its scores (rows in score order): figures show a generated
  // query with its most and least helpful training images.
  if (find_task(inputs.get_string("task.name"))->generates_images)
    save_npy(temporary / "train.npy", data.train.inputs.reshape({data.train.size(), -1}).contiguous());
  write_directory_checksums(temporary);
  pending.commit();
  if (dtype != torch::kFloat) store = load_gradient_store(gradient_dir);  // float32 arithmetic
  outcome.stage_seconds["gradients"] = seconds_since(start);
  outcome.stage_cached["gradients"] = false;
  return store;
}

GradientBlocks image_query_gradients(const StageInputs& inputs, Model& model, const at::Tensor& images,
                                     const std::vector<std::int64_t>& conditions, std::int64_t first_id) {
  const auto n = static_cast<std::int64_t>(conditions.size());
  auto task = make_task(inputs.get_string("task.name"), inputs.section("task"));
  return per_example_gradients(
      model, *task,
      Batch{images, torch::tensor(conditions, torch::kLong), torch::arange(n, torch::kLong) + first_id},
      {inputs.get_int("evaluation.gradient_batch_size"),
       "query gradients",
       false,
       true,
       {},
       projection_of(inputs)});
}

PromptQueries prompt_query_gradients(const StageInputs& inputs, Model& model,
                                     const std::vector<std::string>& prompts,
                                     const std::vector<std::string>& responses, std::int64_t max_tokens) {
  LanguageModel* language = &require_capability<LanguageModel>(model, "prompts as queries");
  const Options task_options = inputs.section("task");
  const bool chat = inputs.get_string("task.template") == "chat";
  PromptQueries out;
  out.prompts = prompts;
  for (std::size_t i = 0; i < prompts.size(); ++i)
    out.answers.push_back(i < responses.size() && !responses[i].empty()
                              ? responses[i]
                              : greedy_answer(*language, prompts[i], chat, max_tokens));
  auto [ids, targets] =
      encode_causal_lm(*language, out.prompts, out.answers, influence_encoding(task_options));
  const std::int64_t n = ids.size(0);
  auto task = make_task(inputs.get_string("task.name"), task_options);
  out.gradients = per_example_gradients(model, *task, Batch{ids, targets, torch::arange(n, torch::kLong)},
                                        {inputs.get_int("evaluation.gradient_batch_size"),
                                         "query gradients",
                                         false,
                                         true,
                                         {},
                                         projection_of(inputs)});
  return out;
}

}  // namespace inflab
