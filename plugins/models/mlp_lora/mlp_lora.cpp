// A multilayer perceptron whose base is pretrained on a disjoint split and frozen, with LoRA
// adapters on the linear layers named by model.lora.targets (fc1, fc2, ...; the last is the head).
#include <torch/nn/functional/activation.h>
#include <torch/nn/init.h>
#include <torch/utils.h>

#include <cmath>
#include <inflab/error.hpp>
#include <inflab/lora.hpp>

namespace {

class MlpLora : public inflab::Model {
 public:
  void configure(const inflab::Options& options) override { hidden_ = options.get_int_list("hidden"); }

  void build(const inflab::DataShape& shape, const inflab::LoraConfig& lora, std::uint64_t seed) override {
    std::int64_t in = 1;
    for (auto d : shape.input_shape) in *= d;
    std::vector<std::int64_t> widths{in};
    widths.insert(widths.end(), hidden_.begin(), hidden_.end());
    widths.push_back(shape.num_classes);
    net_ = std::make_shared<torch::nn::Module>("mlp_lora");
    layers_.clear();
    torch::manual_seed(0);  // the base does not depend on the experiment seed
    for (std::size_t k = 0; k + 1 < widths.size(); ++k) {
      std::string name = "fc" + std::to_string(k + 1);
      auto layer = std::make_shared<inflab::LoraLinear>(name, widths[k], widths[k + 1], lora,
                                                        inflab::matches_any(name, lora.targets));
      layers_.push_back(net_->register_module(name, layer));
    }
    for (auto& layer : layers_) layer->reset_adapter(seed);
    net_->eval();
  }

  at::Tensor forward(const at::Tensor& inputs) override {
    torch::Tensor x = inputs.reshape({inputs.size(0), -1});
    for (std::size_t k = 0; k < layers_.size(); ++k) {
      x = layers_[k]->forward(x);
      if (k + 1 < layers_.size()) x = torch::relu(x);
    }
    return x;
  }

  inflab::NamedTensors base_parameters() override {
    inflab::NamedTensors out;
    for (auto& layer : layers_) {
      out.emplace_back(layer->name() + ".weight", layer->base_weight());
      out.emplace_back(layer->name() + ".bias", layer->base_bias());
    }
    return out;
  }

  std::vector<inflab::LoraLayer*> lora_layers() override {
    std::vector<inflab::LoraLayer*> out;
    for (auto& layer : layers_) out.push_back(layer.get());
    return out;
  }

  void set_training(bool training) override { net_->train(training); }

 private:
  std::vector<std::int64_t> hidden_{128};
  std::shared_ptr<torch::nn::Module> net_;
  std::vector<std::shared_ptr<inflab::LoraLinear>> layers_;
};

std::vector<inflab::OptionSpec> options() {
  return {{"hidden", inflab::OptionType::IntList, std::vector<std::int64_t>{128}, "hidden layer widths",
           false, inflab::between(1, 1 << 20)}};
}

}  // namespace

INFLAB_PLUGIN(Model, "mlp_lora", "1.0.0",
              "MLP with a pretrained frozen base and LoRA adapters on its linear layers", options, MlpLora)
