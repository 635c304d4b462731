#include "inflab/lora.hpp"

#include <torch/nn/functional/dropout.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

namespace inflab {

LoraLinear::LoraLinear(std::string name, std::int64_t in_features, std::int64_t out_features,
                       const LoraConfig& config, bool with_adapter)
    : name_(std::move(name)),
      adapter_(with_adapter),
      rank_(config.rank),
      scale_(config.alpha / static_cast<double>(config.rank)),
      dropout_(config.dropout) {
  base_ = register_module("base", torch::nn::Linear(in_features, out_features));
  if (adapter_) {
    // As in PEFT: A ~ Kaiming-uniform, B = 0, so the adapter starts as the identity update.
    a_ = register_parameter("lora_A", torch::empty({rank_, in_features}));
    b_ = register_parameter("lora_B", torch::zeros({out_features, rank_}));
    reset_adapter(0);
  }
}

void LoraLinear::reset_adapter(std::uint64_t seed) {
  if (!adapter_) return;
  std::uint64_t mixed = seed * 0x9E3779B97F4A7C15ULL;
  for (char c : name_) mixed = (mixed ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  auto generator = at::detail::createCPUGenerator(mixed);
  torch::NoGradGuard no_grad;
  const double bound = 1.0 / std::sqrt(static_cast<double>(a_.size(1)));
  a_.uniform_(-bound, bound, generator);
  b_.zero_();
}

torch::Tensor LoraLinear::forward(const torch::Tensor& x) {
  torch::Tensor y = base_->forward(x);
  if (!adapter_ || merged_) return y;
  torch::Tensor input = x;
  if (is_training() && dropout_ > 0)
    input = torch::nn::functional::dropout(x, torch::nn::functional::DropoutFuncOptions().p(dropout_).training(true));
  torch::Tensor hidden = input.matmul(a_.t());
  torch::Tensor output = hidden.matmul(b_.t());
  if (capture) {
    captured_input = input;
    captured_hidden = hidden;
    captured_output = output;
  }
  return y + scale_ * output;
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
