// LoRA adapters around frozen layers: y = base(x) + (alpha / r) * B (A dropout(x)).
// Included by model plugins (which use LibTorch anyway); estimators never see it.
// While `capture` is on, forward keeps, as (batch, positions, features) tensors, the adapter's
// input x, hidden h = A x and output u = B h, so the gradient engine forms per-example
// gradients the same way for every layer type (a convolution's positions are its patches).
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <string>

#include "inflab/model.hpp"

namespace inflab {

class LoraLayer : public torch::nn::Module {
 public:
  const std::string& name() const { return name_; }
  bool has_adapter() const { return adapter_; }
  torch::Tensor& lora_a() { return a_; }  // rank x fan_in
  torch::Tensor& lora_b() { return b_; }  // out x rank
  double scale() const { return scale_; }
  std::int64_t rank() const { return rank_; }

  // A ~ Kaiming-uniform (bound 1/sqrt(fan_in), as PEFT) from a generator seeded by (seed, layer
  // name), B = 0. Uses no global RNG, so base-weight initialisation never depends on the LoRA config.
  void reset_adapter(std::uint64_t seed);
  virtual void merge() = 0;    // fold scale * B A into the base weight; forward then skips the adapter
  virtual void unmerge() = 0;  // undo merge()
  bool merged() const { return merged_; }
  virtual torch::Tensor base_weight() = 0;
  virtual torch::Tensor base_bias() = 0;

  // Gradient capture (framework use), each (batch, positions, features).
  bool capture = false;
  torch::Tensor captured_input, captured_hidden, captured_output;

 protected:
  LoraLayer(std::string name, std::int64_t fan_in, std::int64_t out, const LoraConfig& config,
            bool with_adapter);
  // The adapter on (batch, positions, fan_in) inputs: returns (batch, positions, out), scaled.
  torch::Tensor adapter(const torch::Tensor& tokens);

  std::string name_;
  bool adapter_;
  std::int64_t rank_;
  double scale_, dropout_;
  bool merged_ = false;
  torch::Tensor a_, b_;
};

// LoRA on a Linear layer; inputs (batch, ..., in).
class LoraLinear : public LoraLayer {
 public:
  LoraLinear(std::string name, std::int64_t in_features, std::int64_t out_features, const LoraConfig& config,
             bool with_adapter);
  torch::Tensor forward(const torch::Tensor& x);
  torch::nn::Linear& base() { return base_; }
  void merge() override;
  void unmerge() override;
  torch::Tensor base_weight() override { return base_->weight; }
  torch::Tensor base_bias() override { return base_->bias; }

 private:
  torch::nn::Linear base_{nullptr};
};

// LoRA on a Conv2d: A is a convolution with the base's kernel, stride and padding into `rank`
// channels, B a 1x1 convolution back to the output channels (as PEFT does for Conv2d).
class LoraConv2d : public LoraLayer {
 public:
  LoraConv2d(std::string name, std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel,
             std::int64_t stride, std::int64_t padding, const LoraConfig& config, bool with_adapter);
  torch::Tensor forward(const torch::Tensor& x);  // (batch, in, H, W) -> (batch, out, H', W')
  void merge() override;
  void unmerge() override;
  torch::Tensor base_weight() override { return base_->weight; }
  torch::Tensor base_bias() override { return base_->bias; }

 private:
  torch::nn::Conv2d base_{nullptr};
  std::int64_t kernel_, stride_, padding_;
};

// True when `name` matches any glob pattern (`*` and `?`).
bool matches_any(const std::string& name, const std::vector<std::string>& patterns);

}  // namespace inflab
