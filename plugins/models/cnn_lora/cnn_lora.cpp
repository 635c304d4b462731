// A small CNN for square grey images: two 3x3 convolutions (each ReLU + 2x2 max-pool), then two
// linear layers. The base is pretrained on a disjoint split and frozen; LoRA adapters go on the
// layers named by model.lora.targets (conv1, conv2, fc1, fc2).
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/pooling.h>

#include <cmath>
#include <inflab/error.hpp>
#include <inflab/lora.hpp>

namespace {

class CnnLora : public inflab::Model {
 public:
  void configure(const inflab::Options& options) override {
    channels_ = options.get_int_list("channels");
    hidden_ = options.get_int("hidden");
    if (channels_.size() != 2 || channels_[0] < 1 || channels_[1] < 1 || hidden_ < 1)
      throw inflab::Error("model cnn_lora: channels must be two positive integers and hidden positive");
  }

  void build(const inflab::DataShape& shape, const inflab::LoraConfig& lora, std::uint64_t seed) override {
    std::int64_t pixels = 1;
    for (auto d : shape.input_shape) pixels *= d;
    side_ = static_cast<std::int64_t>(std::lround(std::sqrt(static_cast<double>(pixels))));
    if (side_ * side_ != pixels || side_ < 4)
      throw inflab::Error(
          "model cnn_lora: expects square single-channel images of side >= 4 (flattened), found " +
          std::to_string(pixels) + " values per example");
    const std::int64_t pooled = side_ / 4;
    net_ = std::make_shared<torch::nn::Module>("cnn_lora");
    torch::manual_seed(0);  // the base does not depend on the experiment seed
    auto wants = [&](const std::string& name) { return inflab::matches_any(name, lora.targets); };
    conv1_ = net_->register_module("conv1", std::make_shared<inflab::LoraConv2d>("conv1", 1, channels_[0], 3,
                                                                                 1, 1, lora, wants("conv1")));
    conv2_ = net_->register_module(
        "conv2", std::make_shared<inflab::LoraConv2d>("conv2", channels_[0], channels_[1], 3, 1, 1, lora,
                                                      wants("conv2")));
    fc1_ =
        net_->register_module("fc1", std::make_shared<inflab::LoraLinear>(
                                         "fc1", channels_[1] * pooled * pooled, hidden_, lora, wants("fc1")));
    fc2_ = net_->register_module(
        "fc2", std::make_shared<inflab::LoraLinear>("fc2", hidden_, shape.num_classes, lora, wants("fc2")));
    for (auto* layer : lora_layers()) layer->reset_adapter(seed);
    net_->eval();
  }

  at::Tensor forward(const at::Tensor& inputs) override {
    namespace F = torch::nn::functional;
    torch::Tensor x = inputs.reshape({inputs.size(0), 1, side_, side_});
    x = F::max_pool2d(torch::relu(conv1_->forward(x)), F::MaxPool2dFuncOptions(2));
    x = F::max_pool2d(torch::relu(conv2_->forward(x)), F::MaxPool2dFuncOptions(2));
    x = torch::relu(fc1_->forward(x.flatten(1)));
    return fc2_->forward(x);
  }

  inflab::NamedTensors base_parameters() override {
    inflab::NamedTensors out;
    for (auto* layer : lora_layers()) {
      out.emplace_back(layer->name() + ".weight", layer->base_weight());
      out.emplace_back(layer->name() + ".bias", layer->base_bias());
    }
    return out;
  }

  std::vector<inflab::LoraLayer*> lora_layers() override {
    return {conv1_.get(), conv2_.get(), fc1_.get(), fc2_.get()};
  }
  void set_training(bool training) override { net_->train(training); }

 private:
  std::vector<std::int64_t> channels_{16, 32};
  std::int64_t hidden_ = 64, side_ = 0;
  std::shared_ptr<torch::nn::Module> net_;
  std::shared_ptr<inflab::LoraConv2d> conv1_, conv2_;
  std::shared_ptr<inflab::LoraLinear> fc1_, fc2_;
};

std::vector<inflab::OptionSpec> options() {
  return {
      {"channels", inflab::OptionType::IntList, std::vector<std::int64_t>{16, 32},
       "output channels of conv1 and conv2", false, inflab::between(1, 65536)},
      {"hidden", inflab::OptionType::Int, std::int64_t{64}, "width of fc1", false,
       inflab::between(1, 1 << 20)},
  };
}

}  // namespace

INFLAB_PLUGIN(
    Model, "cnn_lora", "1.0.0",
    "Small CNN (2 conv + 2 linear) with a pretrained frozen base and LoRA on conv and linear layers", options,
    CnnLora)
