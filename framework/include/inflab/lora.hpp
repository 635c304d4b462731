// LoRA adapter around a frozen Linear: y = W x + b + (alpha / r) * B (A dropout(x)).
// Included by model plugins (which use LibTorch anyway); estimators never see it.
// While `capture` is on, forward keeps the adapter's input x, hidden h = A x and
// adapter output u = B h so the gradient engine can form per-example gradients.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include <string>

#include "inflab/model.hpp"

namespace inflab {

class LoraLinear : public torch::nn::Module {
 public:
  LoraLinear(std::string name, std::int64_t in_features, std::int64_t out_features,
             const LoraConfig& config, bool with_adapter);

  torch::Tensor forward(const torch::Tensor& x);

  const std::string& name() const { return name_; }
  bool has_adapter() const { return adapter_; }
  torch::nn::Linear& base() { return base_; }
  torch::Tensor& lora_a() { return a_; }  // rank x in
  torch::Tensor& lora_b() { return b_; }  // out x rank
  double scale() const { return scale_; }
  std::int64_t rank() const { return rank_; }

  // A ~ Kaiming-uniform (bound 1/sqrt(in), as PEFT) from a generator seeded by (seed, layer name),
  // B = 0. Uses no global RNG, so base-weight initialisation never depends on the LoRA config.
  void reset_adapter(std::uint64_t seed);
  void merge();    // W += scale * B A (for deployment); forward then skips the adapter
  void unmerge();  // undoes merge()
  bool merged() const { return merged_; }

  // Gradient capture (framework use).
  bool capture = false;
  torch::Tensor captured_input, captured_hidden, captured_output;

 private:
  std::string name_;
  bool adapter_;
  std::int64_t rank_;
  double scale_, dropout_;
  bool merged_ = false;
  torch::nn::Linear base_{nullptr};
  torch::Tensor a_, b_;
};

// True when `name` matches any glob pattern (`*` and `?`).
bool matches_any(const std::string& name, const std::vector<std::string>& patterns);

}  // namespace inflab
