#include "inflab/lora.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional/dropout.h>
#include <torch/nn/functional/fold.h>

#include <cmath>

namespace inflab {

LoraLayer::LoraLayer(std::string name, std::int64_t fan_in, std::int64_t out, const LoraConfig& config,
                     bool with_adapter)
    : name_(std::move(name)),
      adapter_(with_adapter),
      rank_(config.rank),
      scale_(config.alpha / static_cast<double>(config.rank)),
      dropout_(config.dropout) {
  if (adapter_) {
    a_ = register_parameter("lora_A", torch::empty({rank_, fan_in}));
    b_ = register_parameter("lora_B", torch::zeros({out, rank_}));
    reset_adapter(0);
  }
}

void LoraLayer::reset_adapter(std::uint64_t seed) {
  if (!adapter_) return;
  std::uint64_t mixed = seed * 0x9E3779B97F4A7C15ULL;
  for (char c : name_) mixed = (mixed ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  auto generator = at::detail::createCPUGenerator(mixed);
  torch::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(a_.size(1)));
  a_.uniform_(-bound, bound, generator);
  b_.zero_();
}

torch::Tensor LoraLayer::adapter(const torch::Tensor& tokens) {
  torch::Tensor input = tokens;
  if (is_training() && dropout_ > 0)
    input = torch::nn::functional::dropout(
        tokens, torch::nn::functional::DropoutFuncOptions().p(dropout_).training(true));
  torch::Tensor hidden = input.matmul(a_.t());
  torch::Tensor output = hidden.matmul(b_.t());
  if (capture) {
    captured_input = input;
    captured_hidden = hidden;
    captured_output = output;
  }
  return output * scale_;
}

LoraLinear::LoraLinear(std::string name, std::int64_t in_features, std::int64_t out_features,
                       const LoraConfig& config, bool with_adapter)
    : LoraLayer(std::move(name), in_features, out_features, config, with_adapter) {
  base_ = register_module("base", torch::nn::Linear(in_features, out_features));
}

torch::Tensor LoraLinear::forward(const torch::Tensor& x) {
  torch::Tensor y = base_->forward(x);
  if (!adapter_ || merged_) return y;
  return y + adapter(x);
}

void LoraLinear::merge() {
  if (!adapter_ || merged_) return;
  torch::NoGradGuard no_grad;
  base_->weight.add_(scale_ * b_.matmul(a_));
  merged_ = true;
}

void LoraLinear::unmerge() {
  if (!adapter_ || !merged_) return;
  torch::NoGradGuard no_grad;
  base_->weight.sub_(scale_ * b_.matmul(a_));
  merged_ = false;
}

LoraConv2d::LoraConv2d(std::string name, std::int64_t in_channels, std::int64_t out_channels,
                       std::int64_t kernel, std::int64_t stride, std::int64_t padding,
                       const LoraConfig& config, bool with_adapter)
    : LoraLayer(std::move(name), in_channels * kernel * kernel, out_channels, config, with_adapter),
      kernel_(kernel),
      stride_(stride),
      padding_(padding) {
  base_ = register_module(
      "base",
      torch::nn::Conv2d(
          torch::nn::Conv2dOptions(in_channels, out_channels, kernel).stride(stride).padding(padding)));
}

torch::Tensor LoraConv2d::forward(const torch::Tensor& x) {
  torch::Tensor y = base_->forward(x);
  if (!adapter_ || merged_) return y;
  // Patches (batch, in*k*k, positions) -> tokens (batch, positions, in*k*k): A acts on each patch
  // exactly as the convolution A would, and B (1x1) acts on each position.
  torch::Tensor patches = torch::nn::functional::unfold(
      x, torch::nn::functional::UnfoldFuncOptions({kernel_, kernel_}).stride(stride_).padding(padding_));
  torch::Tensor update = adapter(patches.transpose(1, 2));  // (batch, positions, out)
  return y + update.transpose(1, 2).reshape(y.sizes());
}

void LoraConv2d::merge() {
  if (!adapter_ || merged_) return;
  torch::NoGradGuard no_grad;
  base_->weight.add_((scale_ * b_.matmul(a_)).reshape(base_->weight.sizes()));
  merged_ = true;
}

void LoraConv2d::unmerge() {
  if (!adapter_ || !merged_) return;
  torch::NoGradGuard no_grad;
  base_->weight.sub_((scale_ * b_.matmul(a_)).reshape(base_->weight.sizes()));
  merged_ = false;
}

namespace {
bool glob(const char* pattern, const char* text) {
  if (*pattern == '\0') return *text == '\0';
  if (*pattern == '*') return glob(pattern + 1, text) || (*text && glob(pattern, text + 1));
  if (*text && (*pattern == '?' || *pattern == *text)) return glob(pattern + 1, text + 1);
  return false;
}
}  // namespace

bool matches_any(const std::string& name, const std::vector<std::string>& patterns) {
  for (const auto& p : patterns)
    if (glob(p.c_str(), name.c_str())) return true;
  return false;
}

}  // namespace inflab
