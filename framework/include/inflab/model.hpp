// Model plugins own an architecture and its pretrained base weights. LoRA adapters, training,
// per-example gradients and caching are framework code (inflab/lora.hpp for implementers).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "inflab/plugin.hpp"

namespace inflab {

class LoraLayer;  // framework/include/inflab/lora.hpp

struct LoraConfig {
  std::int64_t rank = 4;
  double alpha = 4.0;
  double dropout = 0.05;
  std::vector<std::string> targets;  // glob patterns over layer names, e.g. "fc*"
};

struct DataShape {
  std::vector<std::int64_t> input_shape;  // one example, without the batch dimension
  std::int64_t num_classes = 0;
};

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

class Model : public Plugin {
 public:
  // Creates the architecture with random base weights and LoRA adapters (B = 0).
  virtual void build(const DataShape& shape, const LoraConfig& lora, std::uint64_t seed) = 0;
  // Classification: logits, batch x classes. Causal LMs: logits, batch x positions x vocabulary.
  virtual at::Tensor forward(const at::Tensor& inputs) = 0;
  virtual NamedTensors base_parameters() = 0;         // frozen after pretraining
  virtual std::vector<LoraLayer*> lora_layers() = 0;  // in a fixed order
  virtual void set_training(bool training) = 0;
  // True when base_parameters() must be trained on the dataset's pretrain split first (a model
  // without packaged weights, or a new classifier head on a packaged encoder).
  virtual bool needs_base_pretraining() const { return true; }
};

// Optional capabilities. A model plugin inherits, beside Model, the interfaces of what it can do;
// the framework asks for one with capability<T>(model) (nullptr: the model lacks it, and the
// framework's default applies where there is one) or require_capability<T>(model, what) (a clear
// error naming what needed it). LanguageModel (inflab/language_model.hpp) is one more of them.

// Text models: token ids etc. for raw texts, as the `inputs` tensor forward() takes, and which of
// those positions are real tokens.
class TextEncoder {
 public:
  static constexpr const char* kInterface = "inflab::TextEncoder (a text model, e.g. minilm_lora)";
  virtual ~TextEncoder() = default;
  virtual at::Tensor encode_texts(const std::vector<std::string>& texts) = 0;
  // (batch, positions) with 1 for real tokens and 0 for padding, over the same positions the
  // tracked layers see for this batch in forward(). The gradient engine then leaves padding out of
  // per-example gradients and K-FAC statistics. An undefined tensor: this batch has no padding.
  virtual at::Tensor token_mask(const at::Tensor& inputs) = 0;
};

// Models whose base stage is a head on a frozen trunk: forward(x) must equal
// probe_head(probe_features(x)) while the LoRA adapters are zero. The framework then computes the
// features once and trains the head on them instead of re-running the trunk every epoch.
class LinearProbe {
 public:
  static constexpr const char* kInterface = "inflab::LinearProbe";
  virtual ~LinearProbe() = default;
  virtual at::Tensor probe_features(const at::Tensor& inputs) = 0;
  virtual at::Tensor probe_head(const at::Tensor& features) = 0;
};

// Causal LMs with a large vocabulary (task causal_lm): logits only at the positions where `scored`
// (batch x positions, bool) is true, as rows (scored positions in row-major order) x vocabulary.
// Without it the task gathers those rows from forward(), which must then give batch x positions x
// vocabulary.
class ScoredTokenLogits {
 public:
  static constexpr const char* kInterface = "inflab::ScoredTokenLogits";
  virtual ~ScoredTokenLogits() = default;
  virtual at::Tensor token_logits(const at::Tensor& inputs, const at::Tensor& scored) = 0;
};

// Denoisers (task denoising): the predicted noise for noisy images (n x C x H x W) at integer
// timesteps (n) under condition ids (n). Id -1 means no condition (the unconditional prediction
// classifier-free guidance needs; [training] pretrain_condition_dropout trains it); a denoiser
// without one throws.
class Denoiser {
 public:
  static constexpr const char* kInterface = "inflab::Denoiser (a denoiser, e.g. ddpm_lora)";
  virtual ~Denoiser() = default;
  virtual at::Tensor denoise(const at::Tensor& noisy, const at::Tensor& timesteps,
                             const at::Tensor& condition) = 0;
};

// Sentence-embedding models (`inflab embed`): one L2-normalised row per text.
class SentenceEmbedder {
 public:
  static constexpr const char* kInterface = "inflab::SentenceEmbedder (e.g. minilm_lora)";
  virtual ~SentenceEmbedder() = default;
  virtual at::Tensor embed(const std::vector<std::string>& texts) = 0;
};

// Models with a Hugging Face counterpart, for PEFT adapters (`inflab export --peft`, [model]
// adapter = DIR): the Hub id of the base model the adapters belong to, and the module path there
// of each LoRA layer ("" = a layer the Hugging Face model lacks, such as an inflab classifier head:
// exported beside the adapter, in inflab_head.safetensors).
class PeftCounterpart {
 public:
  static constexpr const char* kInterface =
      "inflab::PeftCounterpart (a model with a Hugging Face counterpart)";
  virtual ~PeftCounterpart() = default;
  virtual std::string peft_base_model() const = 0;
  virtual std::string peft_module(const std::string& layer) const = 0;
  // A layer's LoRA B (out x r) in the Hugging Face module's row order (to_peft) or back: for
  // weights stored with their output rows permuted (llama.cpp's query and key rows). Default: as is.
  virtual at::Tensor peft_lora_b(const std::string& layer, const at::Tensor& b, bool to_peft) const {
    (void)layer, (void)to_peft;
    return b;
  }
};

template <class Capability>
Capability* capability(Model& model) {
  return dynamic_cast<Capability*>(&model);
}

[[noreturn]] void throw_missing_capability(const char* interface, const std::string& needed_by);

// The capability, or an Error: "<needed_by> needs a model that implements <interface>; ...".
template <class Capability>
Capability& require_capability(Model& model, const std::string& needed_by) {
  if (auto* found = capability<Capability>(model)) return *found;
  throw_missing_capability(Capability::kInterface, needed_by);
}

}  // namespace inflab
