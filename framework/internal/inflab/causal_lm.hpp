// How instruction examples (a prompt and its response) become a causal LM's token ids and
// next-token targets, for the influence loss and for fine-tuning. The [task] options of causal_lm
// choose it (docs/tasks.md says what each measures):
//   template  "chat": the prompt inside the model's chat template, the response, end of turn
//             "raw":  the prompt text, the response, the model's end-of-sequence token
//   scored    "response": the response and its end token (inflab's protocol)
//             "prompt":   the prompt alone, encoded by itself (the paper's code)
//             "all":      prompt, response and end token, tokenized as one text
//   padding   "none" | "longest": every sequence of a split right-padded with the end-of-sequence
//             token to the split's longest, the padding scored but invisible to attention (the
//             paper's code: Hugging Face padding with labels = input ids)
// Fine-tuning scores `fine_tune_scored` ("response" or "all"), never padded.
#pragma once
#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include "inflab/options.hpp"

namespace inflab {

class LanguageModel;

struct CausalLmEncoding {
  bool chat = true;
  std::string scored = "response";
  bool pad_to_longest = false;
};
inline bool operator==(const CausalLmEncoding& a, const CausalLmEncoding& b) {
  return a.chat == b.chat && a.scored == b.scored && a.pad_to_longest == b.pad_to_longest;
}
inline bool operator!=(const CausalLmEncoding& a, const CausalLmEncoding& b) { return !(a == b); }

// From the [task] section: what the influence loss (gradients, queries, query losses) covers, and
// what fine-tuning trains on. Throws an Error naming the key for a value outside its choices.
CausalLmEncoding influence_encoding(const Options& task);
CausalLmEncoding fine_tuning_encoding(const Options& task);

// Token ids (examples x positions, right-padded with -1; scored padding as -2 - id, see
// language_model.hpp) and targets (the next token where scored, else -100).
std::pair<at::Tensor, at::Tensor> encode_causal_lm(LanguageModel& model,
                                                   const std::vector<std::string>& prompts,
                                                   const std::vector<std::string>& responses,
                                                   const CausalLmEncoding& encoding);

}  // namespace inflab
