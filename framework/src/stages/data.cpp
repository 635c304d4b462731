// The data stage (not cached: datasets read their files quickly) and the model it feeds.
#include <torch/torch.h>

#include <random>

#include "../sections.hpp"
#include "inflab/causal_lm.hpp"
#include "inflab/config.hpp"
#include "inflab/language_model.hpp"
#include "inflab/lora.hpp"
#include "stages.hpp"

namespace fs = std::filesystem;

namespace inflab {

// [dataset]'s framework keys (the plugin's own are in its options): the label noise built below.
const SectionSchema& dataset_section() {
  static const SectionSchema section{
      "dataset",
      {
          {"plugin", OptionType::String, std::string(), "dataset plugin name", true},
          {"label_noise", OptionType::Double, 0.0,
           "fraction of training labels flipped to another class (below 1: some must stay clean)", false,
           Range{0, 1, false, true}},
          {"noise_seed", OptionType::Int, std::int64_t{0}, "seed choosing which labels flip"},
      }};
  return section;
}

// [model.lora]: the adapters build_model puts on the model.
const SectionSchema& lora_section() {
  static const SectionSchema section{
      "model.lora",
      {
          {"rank", OptionType::Int, std::int64_t{4}, "LoRA rank r", false, between(1, 65536)},
          {"alpha", OptionType::Double, -1.0,
           "LoRA alpha; the scale is alpha/r (default: alpha = r, as in the paper)"},
          {"dropout", OptionType::Double, 0.05, "LoRA dropout during fine-tuning (off for gradients)", false,
           Range{0, 1, false, true}},
          {"targets", OptionType::StringList, std::vector<std::string>{"*"},
           "glob patterns of layer names that get adapters"},
      },
      [](Options& values) -> std::optional<SectionProblem> {
        const double alpha = values.get_double("alpha");
        if (alpha == -1) {  // absent: alpha = r
          values.set("alpha", static_cast<double>(values.get_int("rank")));
          return std::nullopt;
        }
        if (alpha > 0) return std::nullopt;  // a zero scale would train nothing and divide by zero later
        return SectionProblem{"alpha", fmt::format("key 'model.lora.alpha': expected a number > 0 (leave it "
                                                   "out for alpha = rank), found {}",
                                                   alpha)};
      }};
  return section;
}

const StageDeclaration& data_stage() {
  // The model is built here too: its options, its adapters and the seed of their initialisation.
  static const StageDeclaration stage{
      "data", 1, {}, {"dataset", "model", "experiment.seed", "task"}, {}, {"dataset", "model"}};
  return stage;
}

namespace {

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

// A plugin's options from its section, typed by its declaration (an empty TOML array has no
// element type of its own; an integer is a valid number).
Options plugin_options(const StageInputs& inputs, const std::string& section, PluginKind kind,
                       const std::string& plugin, Registry& registry) {
  Options out(section + " " + plugin);
  Options values = inputs.section(section);
  for (const auto& spec : registry.find(kind, plugin).info->options()) {
    Value value = values.values().at(spec.name);
    auto* strings = std::get_if<std::vector<std::string>>(&value);
    if (strings && strings->empty()) {
      if (spec.type == OptionType::IntList) value = std::vector<std::int64_t>{};
      if (spec.type == OptionType::DoubleList) value = std::vector<double>{};
    }
    if (auto* i = std::get_if<std::int64_t>(&value); i && spec.type == OptionType::Double)
      value = static_cast<double>(*i);
    out.set(spec.name, value);
  }
  return out;
}

Batch as_batch(const Split& split, const torch::Tensor& labels) {
  return {split.inputs, split.targets.defined() ? split.targets : labels,
          torch::tensor(split.ids, torch::kLong)};
}

}  // namespace

LoadedData load_data(const StageInputs& inputs, Registry& registry, RunOutcome& outcome) {
  auto start = Clock::now();
  const std::string plugin = inputs.get_string("dataset.plugin");
  Options options = plugin_options(inputs, "dataset", PluginKind::Dataset, plugin, registry);
  auto dataset = registry.create_as<Dataset>(PluginKind::Dataset, plugin, options);
  LoadedData out;
  DatasetSplits& data = out.splits;
  data = in_plugin(describe_plugin(registry, PluginKind::Dataset, plugin), [&] { return dataset->load(); });
  if (data.train.size() == 0 || data.validation.size() == 0)
    throw Error(fmt::format("dataset '{}' returned an empty training or validation split", plugin));
  const double label_noise = inputs.get_double("dataset.label_noise");
  out.train_meta.ids = data.train.ids;
  out.train_meta.labels = to_vector(data.train.labels);
  out.train_meta.observed_labels = out.train_meta.labels;
  out.train_meta.flipped = flip_labels(out.train_meta.observed_labels, data.num_classes(), label_noise,
                                       inputs.get_int("dataset.noise_seed"));
  out.query_meta.ids = data.validation.ids;
  out.query_meta.labels = to_vector(data.validation.labels);
  outcome.stage_seconds["data"] = seconds_since(start);
  log(fmt::format("data: {} train ({} flipped), {} validation, {} pretrain examples, {} classes",
                  data.train.size(),
                  std::count(out.train_meta.flipped.begin(), out.train_meta.flipped.end(), 1),
                  data.validation.size(), data.pretrain.size(), data.num_classes()));
  return out;
}

std::unique_ptr<Model> build_model(const StageInputs& inputs, Registry& registry, LoadedData& out,
                                   RunOutcome& outcome) {
  const std::string plugin = inputs.get_string("model.plugin");
  Options options = plugin_options(inputs, "model", PluginKind::Model, plugin, registry);
  auto model = registry.create_as<Model>(PluginKind::Model, plugin, options);
  DatasetSplits& data = out.splits;
  // Instruction datasets: prompt and response as the task encodes them (inflab/causal_lm.hpp); the
  // training split a second time as fine-tuning sees it when that differs.
  const Options task = inputs.section("task");
  const CausalLmEncoding influence = influence_encoding(task), fitting = fine_tuning_encoding(task);
  for (Split* split : {&data.train, &data.validation, &data.pretrain})
    if (!split->responses.empty() && !split->inputs.defined()) {
      auto* language = capability<LanguageModel>(*model);
      if (!language)
        throw Error(
            fmt::format("dataset '{}' gives instructions and responses; model '{}' is not a language model",
                        inputs.get_string("dataset.plugin"), plugin));
      auto start = Clock::now();
      std::tie(split->inputs, split->targets) =
          encode_causal_lm(*language, split->texts, split->responses, influence);
      if (split == &data.train && fitting != influence) {
        auto [ids, targets] = encode_causal_lm(*language, split->texts, split->responses, fitting);
        out.train_fit = Batch{ids, targets, torch::tensor(split->ids, torch::kLong)};
      }
      outcome.stage_seconds["tokenize"] += seconds_since(start);
    }
  // Text datasets: the model's tokenizer turns texts into its input tensor.
  for (Split* split : {&data.train, &data.validation, &data.pretrain})
    if (!split->texts.empty() && !split->inputs.defined()) {
      auto start = Clock::now();
      split->inputs = require_capability<TextEncoder>(
                          *model, fmt::format("dataset '{}' (texts)", inputs.get_string("dataset.plugin")))
                          .encode_texts(split->texts);
      outcome.stage_seconds["tokenize"] += seconds_since(start);
    }
  if (data.pretrain.size() > 0 && !data.pretrain.inputs.defined())
    throw Error(fmt::format("dataset '{}' gave a pretrain split without inputs",
                            inputs.get_string("dataset.plugin")));
  DataShape shape;
  for (std::int64_t d = 1; d < data.train.inputs.dim(); ++d)
    shape.input_shape.push_back(data.train.inputs.size(d));
  shape.num_classes = data.num_classes();
  LoraConfig lora;
  lora.rank = inputs.get_int("model.lora.rank");
  lora.alpha = inputs.get_double("model.lora.alpha");
  lora.dropout = inputs.get_double("model.lora.dropout");
  lora.targets = inputs.get_string_list("model.lora.targets");
  in_plugin(describe_plugin(registry, PluginKind::Model, plugin), [&] {
    model->build(shape, lora, static_cast<std::uint64_t>(inputs.get_int("experiment.seed")));
  });
  bool adapters = false;
  std::vector<std::string> layer_names;
  for (auto* layer : model->lora_layers())
    adapters |= layer->has_adapter(), layer_names.push_back(layer->name());
  if (!adapters)
    throw Error(fmt::format("key 'model.lora.targets': no layer of model '{}' matches {} (its layers: {})",
                            plugin, fmt::format("[\"{}\"]", fmt::join(lora.targets, "\", \"")),
                            fmt::join(layer_names, ", ")));
  out.train = as_batch(data.train, torch::tensor(out.train_meta.observed_labels, torch::kLong));
  if (!out.train_fit.inputs.defined()) out.train_fit = out.train;
  out.validation = as_batch(data.validation, data.validation.labels);
  if (data.pretrain.size() > 0) out.pretrain = as_batch(data.pretrain, data.pretrain.labels);
  return model;
}

}  // namespace inflab
