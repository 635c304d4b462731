// An optional capability of model plugins that generate text (causal LMs): tokenization, the chat
// template, and generation with a KV cache. `inflab generate` and `inflab tokenize` use it through
// dynamic_cast; training and influence use the Model interface and the causal_lm task.
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
  virtual ~LanguageModel() = default;
  // Token ids; with `special`, control tokens written in the text become their ids.
  virtual std::vector<std::int64_t> tokenize(const std::string& text, bool special) = 0;
  virtual std::string detokenize(const std::vector<std::int64_t>& ids) = 0;
  // The text of a one-turn conversation in the model's chat template, up to where the assistant's
  // answer starts (to be tokenized with special = true).
  virtual std::string chat_prompt(const std::string& user_message) = 0;
  // Instruction examples as token ids (examples x positions, right-padded with -1) and causal-LM
  // targets (-100 except where the next token belongs to the response or the end of turn).
  virtual std::pair<at::Tensor, at::Tensor> encode_instructions(
      const std::vector<std::string>& prompts, const std::vector<std::string>& responses) = 0;
  // Logits (vocabulary) at the last position of the prompt.
  virtual at::Tensor last_logits(const std::vector<std::int64_t>& prompt) = 0;
  // The continuation of the prompt: up to max_tokens ids, stopping after an end-of-turn token.
  virtual std::vector<std::int64_t> generate(const std::vector<std::int64_t>& prompt,
                                             const GenerationOptions& options) = 0;
};

}  // namespace inflab
