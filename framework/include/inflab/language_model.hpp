// An optional capability of model plugins that generate text (causal LMs): tokenization, the chat
// template, and generation with a KV cache. The framework finds it like the capabilities in
// inflab/model.hpp (capability<LanguageModel>(model)) for instruction datasets, test answers,
// `inflab generate` and `inflab tokenize`; training and influence use Model and the causal_lm task.
// Token ids as a causal LM's inputs: right-padded with -1 (nothing there); an id v <= -2 is token
// -v - 2 placed as scored padding that no position attends to (Hugging Face's attention_mask = 0
// with labels left on the padding, the paper's rule; inflab/causal_lm.hpp).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace inflab {

struct GenerationOptions {
  std::int64_t max_tokens = 64;
  double temperature = 0;  // 0: greedy
  std::uint64_t seed = 0;  // sampling only
};

class LanguageModel {
 public:
  static constexpr const char* kInterface = "inflab::LanguageModel (a language model, e.g. smollm2_lora)";
  virtual ~LanguageModel() = default;
  // Token ids; with `special`, control tokens written in the text become their ids.
  virtual std::vector<std::int64_t> tokenize(const std::string& text, bool special) = 0;
  virtual std::string detokenize(const std::vector<std::int64_t>& ids) = 0;
  // The text of a one-turn conversation in the model's chat template, up to where the assistant's
  // answer starts (to be tokenized with special = true).
  virtual std::string chat_prompt(const std::string& user_message) = 0;
  // The token that ends an answer: with the chat template its end-of-turn token; in raw text the
  // model's end-of-sequence token (which also pads under the paper's padding rule). The framework
  // encodes instruction examples from tokenize(), chat_prompt() and this (inflab/causal_lm.hpp).
  virtual std::int64_t end_token(bool chat) = 0;
  // The longest token sequence the plugin accepts (its model.max_length option).
  virtual std::int64_t max_tokens() = 0;
  // Logits (vocabulary) at the last position of the prompt.
  virtual at::Tensor last_logits(const std::vector<std::int64_t>& prompt) = 0;
  // The continuation of the prompt: up to max_tokens ids, stopping after an end-of-turn token.
  virtual std::vector<std::int64_t> generate(const std::vector<std::int64_t>& prompt,
                                             const GenerationOptions& options) = 0;
};

}  // namespace inflab
