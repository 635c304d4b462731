// Instruction examples as causal-LM token ids and targets (inflab/causal_lm.hpp).
#include "inflab/causal_lm.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <algorithm>

#include "inflab/error.hpp"
#include "inflab/language_model.hpp"

namespace inflab {

namespace {

const std::string& choice(const Options& task, const std::string& key,
                          const std::vector<std::string>& allowed) {
  const std::string& value = task.get_string(key);
  if (std::find(allowed.begin(), allowed.end(), value) == allowed.end())
    throw Error(fmt::format("key 'task.{}': expected one of \"{}\", found \"{}\"", key,
                            fmt::join(allowed, "\", \""), value));
  return value;
}

bool chat_template(const Options& task) { return choice(task, "template", {"chat", "raw"}) == "chat"; }

struct Encoded {
  std::vector<std::int64_t> ids;
  std::size_t first_target = 0;  // position of the first token that predicts a scored one
};

Encoded encode_one(LanguageModel& model, const std::string& prompt, const std::string& response,
                   const CausalLmEncoding& encoding) {
  const std::int64_t end = model.end_token(encoding.chat);
  const std::string prefix = encoding.chat ? model.chat_prompt(prompt) : prompt;
  Encoded out;
  out.ids = model.tokenize(prefix, encoding.chat);
  if (encoding.scored == "prompt") return out;  // the prompt alone, every next token scored
  if (encoding.scored == "all" && !encoding.chat) {
    out.ids = model.tokenize(prompt + response, false);  // one text, as a tokenizer sees `text`
  } else {
    if (encoding.scored == "response") out.first_target = out.ids.empty() ? 0 : out.ids.size() - 1;
    auto answer = model.tokenize(response, false);
    out.ids.insert(out.ids.end(), answer.begin(), answer.end());
  }
  out.ids.push_back(end);  // the model learns to stop
  return out;
}

}  // namespace

CausalLmEncoding influence_encoding(const Options& task) {
  CausalLmEncoding out;
  out.chat = chat_template(task);
  out.scored = choice(task, "scored", {"response", "prompt", "all"});
  out.pad_to_longest = choice(task, "padding", {"none", "longest"}) == "longest";
  choice(task, "reduction", {"sum", "mean"});
  return out;
}

CausalLmEncoding fine_tuning_encoding(const Options& task) {
  CausalLmEncoding out;
  out.chat = chat_template(task);
  out.scored = choice(task, "fine_tune_scored", {"response", "all"});
  return out;
}

std::pair<at::Tensor, at::Tensor> encode_causal_lm(LanguageModel& model,
                                                   const std::vector<std::string>& prompts,
                                                   const std::vector<std::string>& responses,
                                                   const CausalLmEncoding& encoding) {
  if (prompts.size() != responses.size())
    throw Error(fmt::format("causal_lm: {} prompts but {} responses", prompts.size(), responses.size()));
  std::vector<Encoded> all;
  std::size_t longest = 2;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    all.push_back(encode_one(model, prompts[i], responses[i], encoding));
    const auto length = all.back().ids.size();
    if (static_cast<std::int64_t>(length) > model.max_tokens())
      throw Error(
          fmt::format("causal_lm: example {} has {} tokens{}, over model.max_length = {}; raise "
                      "model.max_length{}",
                      i, length, encoding.chat ? " with the chat template" : "", model.max_tokens(),
                      encoding.chat ? " or shorten the system_prompt" : ""));
    if (length < 2 && !encoding.pad_to_longest)
      throw Error(fmt::format("causal_lm: example {} has {} token(s): nothing to predict", i, length));
    longest = std::max(longest, length);
  }
  const auto n = static_cast<std::int64_t>(all.size()), width = static_cast<std::int64_t>(longest);
  torch::Tensor ids = torch::full({n, width}, -1, torch::kLong),
                targets = torch::full({n, width}, -100, torch::kLong);
  const std::int64_t pad = model.end_token(false);
  for (std::int64_t i = 0; i < n; ++i) {
    const auto& e = all[static_cast<std::size_t>(i)];
    auto* row = ids[i].data_ptr<std::int64_t>();
    auto* target = targets[i].data_ptr<std::int64_t>();
    for (std::size_t t = 0; t < e.ids.size(); ++t) row[t] = e.ids[t];
    // Position t predicts token t + 1.
    for (std::size_t t = e.first_target; t + 1 < e.ids.size(); ++t) target[t] = e.ids[t + 1];
    if (!encoding.pad_to_longest) continue;
    for (std::size_t t = e.ids.size(); t < longest; ++t) {
      row[t] = -2 - pad;  // scored padding, invisible to attention
      if (t > 0) target[t - 1] = pad;
    }
  }
  return {ids, targets};
}

}  // namespace inflab
