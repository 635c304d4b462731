// Dataset plugins read real data into tensors; label noise is applied by the framework.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "inflab/plugin.hpp"

namespace inflab {

struct Split {
  at::Tensor inputs;  // first dimension = examples (float32 images; undefined for text)
  at::Tensor labels;  // int64, length n: the class of each example
  // What the task's loss compares with when that is not the class (causal_lm: next-token ids per
  // position, -100 where not scored). Undefined: the labels (after label noise).
  at::Tensor targets;
  std::vector<std::int64_t> ids;  // stable example ids within the source data
  // Text datasets give raw texts instead of inputs; the model tokenizes them
  // (TextEncoder::encode_texts, inflab/model.hpp), since the vocabulary belongs to the model.
  std::vector<std::string> texts;
  // Instruction datasets: the response to each text (the prompt). A language model encodes both
  // (inflab/causal_lm.hpp, as the [task] options say) and the causal-LM loss covers what they choose.
  std::vector<std::string> responses;
  std::int64_t size() const { return static_cast<std::int64_t>(ids.size()); }
};

struct DatasetSplits {
  Split train;
  Split validation;
  Split pretrain;  // disjoint from train and validation; may be empty
  std::vector<std::string> class_names;
  std::int64_t num_classes() const { return static_cast<std::int64_t>(class_names.size()); }
};

class Dataset : public Plugin {
 public:
  virtual DatasetSplits load() = 0;
};

}  // namespace inflab
