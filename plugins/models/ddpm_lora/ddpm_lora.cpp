// A small conditional U-Net denoiser for grey images (epsilon prediction, DDPM; task "denoising").
// With two levels (channels = [c1, c2]):
//   conv_in -> res1 -> down (stride 2) -> res2 -> self-attention -> res3 -> up (nearest x2 + conv)
//   -> + skip -> res4 -> conv_out;
// with three, one more halving on each side (res1, down1, res2, down2, res3, attention, res4, up2,
// + skip, res5, up1, + skip, res6), attention always at the lowest resolution;
// each residual block GroupNorm -> SiLU -> 3x3 conv, plus the embedding of (timestep, condition),
// GroupNorm -> SiLU -> 3x3 conv, plus its input. The timestep embedding is sinusoidal followed by a
// two-layer MLP; the condition (a class or style id) has a learned embedding added to it (none for
// id -1, the unconditional prediction of classifier-free guidance). LoRA
// goes on every convolution (LoraConv2d) and on the attention's q, k, v and output projections
// (LoraLinear over the low-resolution positions); the base (all else) is pretrained by the
// framework on the dataset's pretrain split and frozen.
#include <fmt/format.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/normalization.h>
#include <torch/nn/functional/upsampling.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>

#include <algorithm>
#include <cmath>
#include <inflab/error.hpp>
#include <inflab/lora.hpp>

namespace {

namespace F = torch::nn::functional;

class DdpmLora : public inflab::Model, public inflab::Denoiser {
 public:
  void configure(const inflab::Options& options) override {
    channels_ = options.get_int_list("channels");
    embedding_ = options.get_int("embedding");
    groups_ = options.get_int("groups");
    if (channels_.size() < 2 || channels_.size() > 4)
      throw inflab::Error(fmt::format(
          "model ddpm_lora: channels must list 2 to 4 widths (full resolution, then each halving), found {}",
          channels_.size()));
    for (auto c : channels_)
      if (c < 1 || c % groups_)
        throw inflab::Error(fmt::format(
            "model ddpm_lora: channels must be positive multiples of groups = {}, found {}", groups_, c));
    if (embedding_ < 2 || embedding_ % 2)
      throw inflab::Error(
          fmt::format("model ddpm_lora: embedding must be even and >= 2, found {}", embedding_));
  }

  void build(const inflab::DataShape& shape, const inflab::LoraConfig& lora, std::uint64_t seed) override {
    std::int64_t pixels = 1;
    for (auto d : shape.input_shape) pixels *= d;
    side_ = static_cast<std::int64_t>(std::lround(std::sqrt(static_cast<double>(pixels))));
    const std::int64_t halvings = static_cast<std::int64_t>(channels_.size()) - 1;
    if (side_ * side_ != pixels || side_ % (std::int64_t{1} << halvings) || side_ >> halvings < 2)
      throw inflab::Error(
          fmt::format("model ddpm_lora: expects square single-channel images whose side halves {} times to "
                      "at least 2 (the "
                      "channels' levels), found {} values per example",
                      halvings, pixels));
    if (shape.num_classes < 1)
      throw inflab::Error("model ddpm_lora: the dataset must declare its conditions (classes or styles)");
    net_ = std::make_shared<torch::nn::Module>("ddpm_lora");
    torch::manual_seed(0);  // the base does not depend on the experiment seed
    const std::int64_t e = embedding_;
    auto wants = [&](const std::string& name) { return inflab::matches_any(name, lora.targets); };
    // LibTorch module names cannot hold '.'; the layers keep dotted names for their blocks.
    auto key = [](std::string name) {
      std::replace(name.begin(), name.end(), '.', '_');
      return name;
    };
    auto conv = [&](const std::string& name, std::int64_t in, std::int64_t out, std::int64_t stride) {
      auto layer = std::make_shared<inflab::LoraConv2d>(name, in, out, 3, stride, 1, lora, wants(name));
      layers_.push_back(layer.get());
      return net_->register_module(key(name), layer);
    };
    auto linear = [&](const std::string& name, std::int64_t in, std::int64_t out) {
      auto layer = std::make_shared<inflab::LoraLinear>(name, in, out, lora, wants(name));
      layers_.push_back(layer.get());
      return net_->register_module(key(name), layer);
    };
    auto block = [&](const std::string& name, std::int64_t ch) {
      ResBlock b;
      b.norm1 = net_->register_module(key(name + ".norm1"), torch::nn::GroupNorm(groups_, ch));
      b.conv1 = conv(name + ".conv1", ch, ch, 1);
      b.embed = net_->register_module(key(name + ".embed"), torch::nn::Linear(e, ch));
      b.norm2 = net_->register_module(key(name + ".norm2"), torch::nn::GroupNorm(groups_, ch));
      b.conv2 = conv(name + ".conv2", ch, ch, 1);
      return b;
    };
    time1_ = net_->register_module("time_fc1", torch::nn::Linear(e, e));
    time2_ = net_->register_module("time_fc2", torch::nn::Linear(e, e));
    condition_ = net_->register_module("condition", torch::nn::Embedding(shape.num_classes, e));
    // Names (the LoRA blocks') number the residual blocks in order; two levels keep the names of
    // the first version (down, up), deeper ones number their resamplings by level.
    const std::size_t levels = channels_.size();
    auto resample = [&](const char* kind, std::size_t level) {
      return levels == 2 ? std::string(kind) : fmt::format("{}{}", kind, level);
    };
    int next_block = 1;
    auto next_res = [&](std::int64_t ch) { return block(fmt::format("res{}", next_block++), ch); };
    conv_in_ = conv("conv_in", 1, channels_[0], 1);
    encoder_.push_back(next_res(channels_[0]));
    downs_.push_back(nullptr);
    for (std::size_t l = 1; l < levels; ++l) {
      downs_.push_back(conv(resample("down", l), channels_[l - 1], channels_[l], 2));
      encoder_.push_back(next_res(channels_[l]));
    }
    const std::int64_t c2 = channels_.back();
    attention_norm_ = net_->register_module("attn_norm", torch::nn::GroupNorm(groups_, c2));
    q_ = linear("attn.q", c2, c2);
    k_ = linear("attn.k", c2, c2);
    v_ = linear("attn.v", c2, c2);
    o_ = linear("attn.o", c2, c2);
    middle_ = next_res(c2);
    ups_.resize(levels);
    decoder_.resize(levels);
    for (std::size_t l = levels - 1; l >= 1; --l) {
      ups_[l] = conv(resample("up", l), channels_[l], channels_[l - 1], 1);
      decoder_[l - 1] = next_res(channels_[l - 1]);
    }
    out_norm_ = net_->register_module("out_norm", torch::nn::GroupNorm(groups_, channels_[0]));
    conv_out_ = conv("conv_out", channels_[0], 1, 1);
    for (auto* layer : layers_) layer->reset_adapter(seed);
    net_->eval();
  }

  at::Tensor forward(const at::Tensor&) override {
    throw inflab::Error("model ddpm_lora is a denoiser: use task.name = \"denoising\" (it has no logits)");
  }

  // noisy: (n, pixels) or (n, 1, side, side); returns the predicted noise in the same shape.
  at::Tensor denoise(const at::Tensor& noisy, const at::Tensor& timesteps,
                     const at::Tensor& condition) override {
    const std::int64_t n = noisy.size(0);
    torch::Tensor x = noisy.reshape({n, 1, side_, side_});
    torch::Tensor emb = time2_->forward(F::silu(time1_->forward(timestep_embedding(timesteps))));
    const torch::Tensor ids = condition.to(torch::kLong);
    if (ids.lt(0).any().item<bool>()) {
      // Id -1: no condition (classifier-free guidance), a zero condition embedding.
      if (ids.lt(-1).any().item<bool>())
        throw inflab::Error("model ddpm_lora: condition ids must be >= 0, or -1 for none");
      const torch::Tensor kept = ids.ge(0);
      emb = emb + condition_->forward(ids.clamp_min(0)) * kept.unsqueeze(1).to(emb.scalar_type());
    } else {
      emb = emb + condition_->forward(ids);
    }
    const std::size_t levels = channels_.size();
    std::vector<torch::Tensor> skips;  // each level's encoder output, for its decoder
    torch::Tensor h = encoder_[0].forward(conv_in_->forward(x), emb);
    for (std::size_t l = 1; l < levels; ++l) {
      skips.push_back(h);
      h = encoder_[l].forward(downs_[l]->forward(h), emb);
    }
    h = h + attention(h);
    h = middle_.forward(h, emb);
    for (std::size_t l = levels - 1; l >= 1; --l) {
      h = ups_[l]->forward(F::interpolate(
          h, F::InterpolateFuncOptions().scale_factor(std::vector<double>{2.0, 2.0}).mode(torch::kNearest)));
      h = decoder_[l - 1].forward(h + skips[l - 1], emb);
    }
    return conv_out_->forward(F::silu(out_norm_->forward(h))).reshape(noisy.sizes());
  }

  inflab::NamedTensors base_parameters() override {
    inflab::NamedTensors out;
    for (const auto& item : net_->named_parameters()) {
      const std::string& name = item.key();
      const bool adapter = name.size() > 7 && (name.compare(name.size() - 7, 7, ".lora_A") == 0 ||
                                               name.compare(name.size() - 7, 7, ".lora_B") == 0);
      if (!adapter) out.emplace_back(name, item.value());
    }
    return out;
  }

  std::vector<inflab::LoraLayer*> lora_layers() override { return layers_; }
  void set_training(bool training) override { net_->train(training); }

 private:
  struct ResBlock {
    torch::nn::GroupNorm norm1{nullptr}, norm2{nullptr};
    std::shared_ptr<inflab::LoraConv2d> conv1, conv2;
    torch::nn::Linear embed{nullptr};
    torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb) {
      torch::Tensor h = conv1->forward(F::silu(norm1->forward(x)));
      h = h + embed->forward(F::silu(emb)).unsqueeze(-1).unsqueeze(-1);
      return x + conv2->forward(F::silu(norm2->forward(h)));
    }
  };

  // Sinusoidal embedding of integer timesteps (Ho et al. 2020, as in the Transformer).
  torch::Tensor timestep_embedding(const torch::Tensor& timesteps) const {
    const std::int64_t half = embedding_ / 2;
    torch::Tensor frequencies =
        torch::exp(-std::log(10000.0) * torch::arange(half, torch::kFloat) / static_cast<double>(half));
    torch::Tensor angles = timesteps.to(torch::kFloat).unsqueeze(1) * frequencies.unsqueeze(0);
    return torch::cat({torch::sin(angles), torch::cos(angles)}, 1);
  }

  // One-head self-attention over the half-resolution positions.
  torch::Tensor attention(const torch::Tensor& x) {
    const std::int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
    torch::Tensor tokens = attention_norm_->forward(x).reshape({n, c, hw}).transpose(1, 2);  // (n, hw, c)
    torch::Tensor weights = torch::softmax(
        q_->forward(tokens).matmul(k_->forward(tokens).transpose(1, 2)) / std::sqrt(double(c)), -1);
    return o_->forward(weights.matmul(v_->forward(tokens))).transpose(1, 2).reshape(x.sizes());
  }

  std::vector<std::int64_t> channels_{32, 64};
  std::int64_t embedding_ = 64, groups_ = 8, side_ = 0;
  std::shared_ptr<torch::nn::Module> net_;
  std::vector<inflab::LoraLayer*> layers_;
  torch::nn::Linear time1_{nullptr}, time2_{nullptr};
  torch::nn::Embedding condition_{nullptr};
  std::shared_ptr<inflab::LoraConv2d> conv_in_, conv_out_;
  std::vector<std::shared_ptr<inflab::LoraConv2d>> downs_, ups_;  // by level (index 0 unused)
  std::shared_ptr<inflab::LoraLinear> q_, k_, v_, o_;
  std::vector<ResBlock> encoder_, decoder_;  // by level
  ResBlock middle_;
  torch::nn::GroupNorm attention_norm_{nullptr}, out_norm_{nullptr};
};

std::vector<inflab::OptionSpec> options() {
  return {
      {"channels", inflab::OptionType::IntList, std::vector<std::int64_t>{32, 64},
       "channels at full resolution and at each halving (2 to 4 levels; attention at the last)", false,
       inflab::between(1, 65536)},
      {"embedding", inflab::OptionType::Int, std::int64_t{64},
       "width of the timestep and condition embedding", false, inflab::between(1, 65536)},
      {"groups", inflab::OptionType::Int, std::int64_t{8}, "GroupNorm groups (divides both channel counts)",
       false, inflab::between(1, 65536)},
  };
}

}  // namespace

INFLAB_PLUGIN(
    Model, "ddpm_lora", "0.1.0",
    "Conditional U-Net denoiser (DDPM epsilon prediction) with a pretrained frozen base and LoRA on "
    "its convolutions and attention projections",
    options, DdpmLora)
