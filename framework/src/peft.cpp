#include "inflab/peft.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>

#include "inflab/error.hpp"
#include "inflab/io.hpp"
#include "inflab/lora.hpp"
#include "inflab/progress.hpp"
#include "inflab/safetensors.hpp"

namespace fs = std::filesystem;

namespace inflab {
namespace {

constexpr const char* kConfig = "adapter_config.json";
constexpr const char* kWeights = "adapter_model.safetensors";
constexpr const char* kHead = "inflab_head.safetensors";

std::string peft_key(const std::string& module, const char* factor) {
  return fmt::format("base_model.model.{}.{}.weight", module, factor);
}

std::vector<LoraLayer*> adapted_layers(Model& model) {
  std::vector<LoraLayer*> out;
  for (auto* layer : model.lora_layers())
    if (layer->has_adapter()) out.push_back(layer);
  if (out.empty())
    throw Error(
        "the model has no LoRA adapters ([model.lora] targets matched no layer): nothing to export or "
        "import");
  return out;
}

}  // namespace

void export_peft_adapter(Model& model, const std::string& model_name, const fs::path& directory) {
  const auto* hugging_face = capability<PeftCounterpart>(model);
  if (!hugging_face)
    throw Error(fmt::format("model '{}' has no Hugging Face counterpart, so its adapters have no PEFT form",
                            model_name));
  const std::string base = hugging_face->peft_base_model();
  const auto layers = adapted_layers(model);
  std::vector<std::pair<std::string, at::Tensor>> adapter, head;
  std::vector<std::string> modules;
  for (auto* layer : layers) {
    const std::string module = hugging_face->peft_module(layer->name());
    auto a = layer->lora_a().detach().to(torch::kFloat32).contiguous();
    auto b = hugging_face->peft_lora_b(layer->name(), layer->lora_b().detach().to(torch::kFloat32), true)
                 .contiguous();
    if (module.empty()) {
      head.emplace_back(layer->name() + ".lora_A.weight", a);
      head.emplace_back(layer->name() + ".lora_B.weight", b);
    } else {
      adapter.emplace_back(peft_key(module, "lora_A"), a);
      adapter.emplace_back(peft_key(module, "lora_B"), b);
      modules.push_back(module);
    }
  }
  const auto* first = layers.front();
  // alpha from the scale (alpha / r): what the adapter applies, whatever the TOML spelled.
  const double alpha = first->scale() * static_cast<double>(first->rank());
  // The keys PEFT's LoraConfig has known since 0.4 (a later PEFT fills in the rest).
  nlohmann::json config{{"base_model_name_or_path", base},
                        {"peft_type", "LORA"},
                        {"task_type", nullptr},
                        {"inference_mode", true},
                        {"r", first->rank()},
                        {"lora_alpha", alpha},
                        {"lora_dropout", 0.0},
                        {"target_modules", modules},
                        {"fan_in_fan_out", false},
                        {"bias", "none"},
                        {"modules_to_save", nullptr},
                        {"init_lora_weights", true},
                        {"layers_to_transform", nullptr},
                        {"layers_pattern", nullptr},
                        {"revision", nullptr}};
  fs::create_directories(directory);
  save_safetensors(directory / kWeights, adapter, {{"format", "pt"}});
  if (!head.empty()) save_safetensors(directory / kHead, head, {{"format", "pt"}, {"written_by", "inflab"}});
  write_file_atomic(directory / kConfig, config.dump(2) + "\n");
}

void import_peft_adapter(Model& model, const std::string& model_name, const fs::path& directory) {
  const fs::path config_file = directory / kConfig, weights_file = directory / kWeights;
  if (!fs::is_regular_file(config_file))
    throw Error(fmt::format("{}: missing (a PEFT adapter directory holds {} and {})", config_file.string(),
                            kConfig, kWeights));
  if (!fs::is_regular_file(weights_file)) {
    if (fs::exists(directory / "adapter_model.bin"))
      throw Error(
          fmt::format("{}: only adapter_model.safetensors is read, not the pickled adapter_model.bin; "
                      "save the adapter with save_pretrained(..., safe_serialization=True)",
                      directory.string()));
    throw Error(fmt::format("{}: missing", weights_file.string()));
  }
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(read_file(config_file));
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{}: invalid JSON: {}", config_file.string(), e.what()));
  }
  auto number = [&](const char* key) {
    if (!config.contains(key) || !config[key].is_number())
      throw Error(fmt::format("{}: key '{}': expected a number, found {}", config_file.string(), key,
                              config.contains(key) ? config[key].dump() : "nothing"));
    return config[key].get<double>();
  };
  if (config.value("peft_type", std::string("LORA")) != "LORA")
    throw Error(fmt::format("{}: peft_type is '{}'; only LORA adapters are read", config_file.string(),
                            config["peft_type"].dump()));
  const auto* hugging_face = capability<PeftCounterpart>(model);
  if (!hugging_face)
    throw Error(
        fmt::format("model '{}' has no Hugging Face counterpart: it cannot take a PEFT adapter", model_name));
  const std::string expected_base = hugging_face->peft_base_model();
  const std::string base = config.value("base_model_name_or_path", std::string());
  // A local copy of the base may be named by its path: its last component must still be the model's.
  const std::string expected_name = fs::path(expected_base).filename().string();
  if (base != expected_base && fs::path(base).filename().string() != expected_name)
    throw Error(
        fmt::format("{}: base_model_name_or_path is '{}', but model '{}' is {}: the adapter belongs "
                    "to another base model",
                    config_file.string(), base, model_name, expected_base));
  if (config.value("fan_in_fan_out", false))
    throw Error(
        fmt::format("{}: fan_in_fan_out = true (transposed weights) is not supported", config_file.string()));
  const auto layers = adapted_layers(model);
  const double rank = number("r"), alpha = number("lora_alpha");
  const auto* first = layers.front();
  if (rank != static_cast<double>(first->rank()))
    throw Error(fmt::format("{}: r = {} but [model.lora] rank = {}: set model.lora.rank = {}",
                            config_file.string(), rank, first->rank(), rank));
  if (std::abs(alpha / rank - first->scale()) > 1e-9 * std::abs(first->scale()))
    throw Error(
        fmt::format("{}: lora_alpha = {} (scale {}) but [model.lora] alpha gives scale {}: set "
                    "model.lora.alpha = {}",
                    config_file.string(), alpha, alpha / rank, first->scale(), alpha));
  auto tensors = load_safetensors(weights_file);
  std::map<std::string, at::Tensor> head;
  if (fs::is_regular_file(directory / kHead)) head = load_safetensors(directory / kHead);
  std::set<std::string> used;
  std::vector<std::string> head_layers_without_file;
  torch::NoGradGuard no_grad;
  for (auto* layer : layers) {
    const std::string module = hugging_face->peft_module(layer->name());
    const bool in_head = module.empty();
    if (in_head && head.empty()) {
      head_layers_without_file.push_back(layer->name());
      continue;
    }
    auto& source = in_head ? head : tensors;
    const fs::path& file = in_head ? directory / kHead : weights_file;
    for (const char* factor : {"lora_A", "lora_B"}) {
      const std::string key =
          in_head ? fmt::format("{}.{}.weight", layer->name(), factor) : peft_key(module, factor);
      auto found = source.find(key);
      if (found == source.end())
        throw Error(
            fmt::format("{}: no tensor '{}' for the LoRA on layer '{}' ([model.lora] targets put one "
                        "there; the adapter was trained with other target_modules?)",
                        file.string(), key, layer->name()));
      torch::Tensor& target = factor[5] == 'A' ? layer->lora_a() : layer->lora_b();
      if (found->second.sizes() != target.sizes())
        throw Error(fmt::format("{}: tensor '{}' has shape [{}], expected [{}] (layer '{}', rank {})",
                                file.string(), key, fmt::join(found->second.sizes(), ", "),
                                fmt::join(target.sizes(), ", "), layer->name(), layer->rank()));
      if (!found->second.is_floating_point())
        throw Error(fmt::format("{}: tensor '{}' is {}, expected floating point", file.string(), key,
                                c10::toString(found->second.scalar_type())));
      at::Tensor value = found->second.to(target.scalar_type());
      target.copy_(factor[5] == 'B' && !in_head ? hugging_face->peft_lora_b(layer->name(), value, false)
                                                : value);
      if (!in_head) used.insert(key);
    }
  }
  for (const auto& [key, value] : tensors)
    if (!used.count(key))
      throw Error(
          fmt::format("{}: tensor '{}' has no LoRA layer to go to in model '{}' (its LoRA layers come "
                      "from [model.lora] targets; the adapter was trained with other target_modules?)",
                      weights_file.string(), key, model_name));
  if (!head_layers_without_file.empty())
    if (!Progress::quiet())
      std::cerr << fmt::format(
          "[inflab] {}: no {}: the LoRA on {} (inflab's own, not in the Hugging Face model) keeps its "
          "initialisation (B = 0, no effect)\n",
          directory.string(), kHead, fmt::join(head_layers_without_file, ", "));
}

}  // namespace inflab
