// smollm2_lora on the real SmolLM2-135M-Instruct weights against references produced once by
// tests/golden/make_smollm2_golden.py: llama.cpp's tokenizer, a NumPy float32 forward on weights
// dequantized by PyPI gguf, and its greedy continuations. Then the causal-LM task's per-example
// gradients on this model against a per-example autograd loop.
#include <torch/torch.h>

// clang-format off
#include <catch2/catch.hpp>
// clang-format on
#include <fstream>
#include <nlohmann/json.hpp>

#include "adapter_check.hpp"
#include "helpers.hpp"
#include "inflab/causal_lm.hpp"
#include "inflab/gradients.hpp"
#include "inflab/language_model.hpp"
#include "inflab/lora.hpp"
#include "inflab/peft.hpp"
#include "inflab/registry.hpp"
#include "inflab/safetensors.hpp"
#include "inflab/task.hpp"

namespace {

nlohmann::json golden() {
  std::ifstream in(std::string(INFLAB_SOURCE_DIR) + "/tests/golden/smollm2.json");
  REQUIRE(in);
  return nlohmann::json::parse(in);
}

struct Loaded {
  inflab::Registry registry;
  std::unique_ptr<inflab::Model> model;
  inflab::LanguageModel* lm = nullptr;
};

std::unique_ptr<Loaded> load(const inflab::LoraConfig& lora) {
  auto out = std::make_unique<Loaded>();
  out->registry.load_directory(test::plugin_dir());
  auto specs = out->registry.find(inflab::PluginKind::Model, "smollm2_lora").info->options();
  out->model = out->registry.create_as<inflab::Model>(inflab::PluginKind::Model, "smollm2_lora",
                                                      inflab::default_options("smollm2_lora", specs));
  out->model->build({}, lora, 7);
  out->lm = inflab::capability<inflab::LanguageModel>(*out->model);
  REQUIRE(out->lm);
  return out;
}

// Example i's gradient from the engine against the oracle's, block by block (relative 1e-4).
void check_example_gradient(const inflab::GradientBlocks& engine, std::int64_t i,
                            const std::vector<torch::Tensor>& oracle) {
  REQUIRE(engine.size() == oracle.size());
  for (std::size_t b = 0; b < oracle.size(); ++b) {
    INFO("example " << i << ", block " << engine[b].name);
    const double scale = oracle[b].norm().item<double>();
    REQUIRE(scale > 0);
    CHECK((engine[b].values[i] - oracle[b].reshape({-1})).norm().item<double>() / scale < 1e-4);
  }
}

}  // namespace

TEST_CASE("smollm2 token ids equal llama.cpp's on every golden text", "[llm][tokenizer]") {
  auto m = load({1, 1.0, 0.0, {}});
  const auto g = golden();
  REQUIRE(g["tokens"].size() >= 30);
  for (const auto& c : g["tokens"]) {
    INFO(c["text"].get<std::string>() << (c["special"].get<bool>() ? " (special)" : ""));
    const auto ids = m->lm->tokenize(c["text"], c["special"]);
    CHECK(ids == c["ids"].get<std::vector<std::int64_t>>());
    if (!c["special"].get<bool>()) CHECK(m->lm->detokenize(ids) == c["text"].get<std::string>());
  }
}

TEST_CASE("smollm2 last-position logits equal a float32 reference within 1e-3, greedy continuations agree",
          "[llm]") {
  auto m = load({1, 1.0, 0.0, {}});
  const auto g = golden();
  for (const auto& p : g["prompts"]) {
    INFO(p["text"].get<std::string>());
    const auto ids = p["ids"].get<std::vector<std::int64_t>>();
    at::Tensor logits = m->lm->last_logits(ids);
    const auto indices = p["logit_indices"].get<std::vector<std::int64_t>>();
    const auto expected = p["logits"].get<std::vector<double>>();
    double worst = 0;
    for (std::size_t i = 0; i < indices.size(); ++i)
      worst = std::max(worst, std::abs(logits[indices[i]].item<double>() - expected[i]));
    CHECK(worst < 1e-3);
    // The KV-cache path against the reference's whole-sequence recomputation.
    const auto greedy = p["greedy"].get<std::vector<std::int64_t>>();
    inflab::GenerationOptions options;
    options.max_tokens = static_cast<std::int64_t>(greedy.size());
    CHECK(m->lm->generate(ids, options) == greedy);
  }
}

TEST_CASE("causal_lm gradients of LoRA on SmolLM2 (q and v) equal a per-example loop", "[llm][gradients]") {
  auto m = load({2, 8.0, 0.0, {"blk.0.attn_q", "blk.0.attn_v", "blk.29.attn_v"}});
  inflab::Model& model = *m->model;
  {
    torch::NoGradGuard no_grad;  // B = 0 after init: make both factors count
    for (auto* layer : model.lora_layers())
      if (layer->has_adapter()) layer->lora_b().normal_(0, 0.02);
  }
  // Three prompts with answers of different lengths, right-padded with -1; loss on the answers.
  const std::vector<std::pair<std::string, std::string>> examples{
      {"Reverse: a b c", " c b a"}, {"Upper: hello", " HELLO there"}, {"2+2=", " 4"}};
  const std::int64_t n = 3, length = 12;
  torch::Tensor ids = torch::full({n, length}, -1, torch::kLong),
                targets = torch::full({n, length}, -100, torch::kLong);
  for (std::int64_t i = 0; i < n; ++i) {
    auto prompt = m->lm->tokenize(examples[i].first, false),
         answer = m->lm->tokenize(examples[i].second, false);
    std::vector<std::int64_t> all(prompt);
    all.insert(all.end(), answer.begin(), answer.end());
    REQUIRE(static_cast<std::int64_t>(all.size()) <= length);
    for (std::size_t t = 0; t < all.size(); ++t) ids[i][static_cast<std::int64_t>(t)] = all[t];
    for (std::size_t t = prompt.size() - 1; t + 1 < all.size(); ++t)
      targets[i][static_cast<std::int64_t>(t)] = all[t + 1];
  }
  auto task = inflab::make_task("causal_lm", inflab::default_options("[task]", inflab::task_option_specs()));
  inflab::Batch batch{ids, targets, torch::arange(n)};
  auto engine = inflab::per_example_gradients(model, *task, batch, {2, "", true, false, {}});

  // Oracle: each example alone (no padding), loss by hand over its answer tokens.
  std::vector<torch::Tensor> params;
  for (auto* layer : model.lora_layers())
    if (layer->has_adapter()) params.push_back(layer->lora_a()), params.push_back(layer->lora_b());
  REQUIRE(engine.size() == params.size());
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t real = ids[i].ge(0).sum().item<std::int64_t>();
    torch::Tensor logits = model.forward(ids[i].narrow(0, 0, real).unsqueeze(0))[0];
    torch::Tensor loss = torch::zeros({});
    for (std::int64_t t = 0; t < real; ++t) {
      const auto target = targets[i][t].item<std::int64_t>();
      if (target >= 0) loss = loss - torch::log_softmax(logits[t], 0)[target];
    }
    check_example_gradient(engine, i, torch::autograd::grad({loss}, params));
  }
  // Padding leaves K-FAC statistics alone: the activation statistics count real tokens only.
  CHECK(engine[0].factor_tokens == ids.ge(0).sum().item<std::int64_t>());
}

TEST_CASE("a SmolLM2 PEFT adapter gives in inflab the logits real PEFT gives, and exports back unchanged",
          "[llm][peft]") {
  // tests/golden/make_peft_smollm2_golden.py: transformers 4.33.3 LlamaForCausalLM on the same
  // dequantized weights + peft 0.4.0 with this adapter (exported by inflab from a tiny math run).
  const std::filesystem::path adapter =
      std::filesystem::path(INFLAB_SOURCE_DIR) / "tests" / "golden" / "peft_smollm2";
  std::ifstream in(std::string(INFLAB_SOURCE_DIR) + "/tests/golden/peft_smollm2.json");
  REQUIRE(in);
  const auto recorded = nlohmann::json::parse(in);
  auto m = load({2, 4.0, 0.0, {"blk.?.attn_q", "blk.?.attn_k", "blk.?.attn_v", "blk.?.ffn_up"}});
  inflab::import_peft_adapter(*m->model, "smollm2_lora", adapter);
  for (const auto& p : recorded["prompts"]) {
    const auto ids = p["ids"].get<std::vector<std::int64_t>>();
    at::Tensor logits = m->lm->last_logits(ids);
    const auto indices = p["logit_indices"].get<std::vector<std::int64_t>>();
    const auto expected = p["logits"].get<std::vector<double>>(),
               base = p["base_logits"].get<std::vector<double>>();
    double worst = 0, moved = 0;
    for (std::size_t i = 0; i < indices.size(); ++i) {
      worst = std::max(worst, std::abs(logits[indices[i]].item<double>() - expected[i]));
      moved = std::max(moved, std::abs(expected[i] - base[i]));
    }
    CHECK(worst < 2e-3);  // query/key rows permuted the wrong way would be off by the adapter's effect
    CHECK(moved > 0.1);
  }
  // Export: llama.cpp's row order undone again, the same tensors and configuration PEFT loaded.
  test::TempDir dir;
  inflab::export_peft_adapter(*m->model, "smollm2_lora", dir.path / "out");
  CHECK(recorded["tensors_loaded"].get<std::size_t>() ==
        inflab::load_safetensors(adapter / "adapter_model.safetensors").size());
  test::check_same_adapter(adapter, dir.path / "out");
}

namespace {
// What the [task] options say an example is, restated token by token from the tokenizer
// (inflab/causal_lm.hpp): the ids and, per position, the next token it is scored on (-100: none).
std::pair<std::vector<std::int64_t>, std::vector<std::int64_t>> expected_encoding(inflab::LanguageModel& lm,
                                                                                  const std::string& prompt,
                                                                                  const std::string& response,
                                                                                  bool chat,
                                                                                  const std::string& scored) {
  std::vector<std::int64_t> ids =
      chat ? lm.tokenize(lm.chat_prompt(prompt), true) : lm.tokenize(prompt, false);
  std::size_t first = 0;
  if (scored == "all" && !chat) {
    ids = lm.tokenize(prompt + response, false);
  } else if (scored != "prompt") {
    if (scored == "response") first = ids.size() - 1;
    for (auto t : lm.tokenize(response, false)) ids.push_back(t);
  }
  if (scored != "prompt") ids.push_back(lm.end_token(chat));
  std::vector<std::int64_t> targets(ids.size(), -100);
  for (std::size_t t = first; t + 1 < ids.size(); ++t) targets[t] = ids[t + 1];
  return {ids, targets};
}
}  // namespace

TEST_CASE("causal_lm options: every encoding and reduction, per-example gradients equal a loop",
          "[llm][gradients][causal_lm]") {
  auto m = load({2, 8.0, 0.0, {"blk.0.attn_q", "blk.29.attn_v"}});
  inflab::Model& model = *m->model;
  {
    torch::NoGradGuard no_grad;
    for (auto* layer : model.lora_layers())
      if (layer->has_adapter()) layer->lora_b().normal_(0, 0.02);
  }
  std::vector<torch::Tensor> params;
  for (auto* layer : model.lora_layers())
    if (layer->has_adapter()) params.push_back(layer->lora_a()), params.push_back(layer->lora_b());
  const std::vector<std::string> prompts{"Solve: 2 + 2 -> ", "Reverse the words: a b c -> ", "Count: x y"},
      responses{"Answer: 4", "c b a", " 2"};
  const std::int64_t eos = m->lm->end_token(false);
  // SmolLM2-Instruct's end-of-sequence token (its GGUF's tokenizer.ggml.eos_token_id) is <|im_end|>.
  for (const std::string templ : {"chat", "raw"})
    for (const std::string scored : {"response", "prompt", "all"})
      for (const std::string reduction : {"sum", "mean"})
        for (const std::string padding : {"none", "longest"}) {
          INFO(templ << " " << scored << " " << reduction << " " << padding);
          auto options = inflab::default_options("[task]", inflab::task_option_specs());
          options.set("name", std::string("causal_lm"));
          options.set("template", templ), options.set("scored", scored);
          options.set("reduction", reduction), options.set("padding", padding);
          auto [ids, targets] =
              inflab::encode_causal_lm(*m->lm, prompts, responses, inflab::influence_encoding(options));
          // The encoding, position by position.
          std::int64_t longest = 0;
          for (std::size_t i = 0; i < prompts.size(); ++i)
            longest = std::max<std::int64_t>(
                longest, static_cast<std::int64_t>(
                             expected_encoding(*m->lm, prompts[i], responses[i], templ == "chat", scored)
                                 .first.size()));
          REQUIRE(ids.size(1) == longest);
          for (std::size_t i = 0; i < prompts.size(); ++i) {
            auto [want_ids, want_targets] =
                expected_encoding(*m->lm, prompts[i], responses[i], templ == "chat", scored);
            const auto row = static_cast<std::int64_t>(i), real = static_cast<std::int64_t>(want_ids.size());
            for (std::int64_t t = 0; t < longest; ++t) {
              const bool pad = t >= real;
              const std::int64_t id = pad ? (padding == "longest" ? -2 - eos : -1) : want_ids[t];
              std::int64_t target = t < real ? want_targets[t] : -100;
              if (padding == "longest" && t + 1 >= real && t + 1 < longest) target = eos;  // padding scored
              CHECK(ids[row][t].item<std::int64_t>() == id);
              CHECK(targets[row][t].item<std::int64_t>() == target);
            }
          }
          auto task = inflab::make_task("causal_lm", options);
          const auto n = static_cast<std::int64_t>(prompts.size());
          auto engine = inflab::per_example_gradients(model, *task, {ids, targets, torch::arange(n)},
                                                      {2, "", true, false, {}});
          for (std::int64_t i = 0; i < n; ++i) {
            // Oracle: the example alone, its loss by hand from the logits of its own row.
            const std::int64_t width = ids[i].ne(-1).sum().item<std::int64_t>();
            torch::Tensor logits = model.forward(ids[i].narrow(0, 0, width).unsqueeze(0))[0];
            torch::Tensor loss = torch::zeros({});
            std::int64_t count = 0;
            for (std::int64_t t = 0; t < width; ++t)
              if (const auto target = targets[i][t].item<std::int64_t>(); target >= 0)
                loss = loss - torch::log_softmax(logits[t], 0)[target], ++count;
            if (reduction == "mean") loss = loss / static_cast<double>(count);
            CHECK(
                task->example_losses(model, {ids.narrow(0, i, 1), targets.narrow(0, i, 1), torch::arange(1)})
                    .item<double>() == Approx(loss.item<double>()).epsilon(1e-4));
            check_example_gradient(engine, i, torch::autograd::grad({loss}, params));
          }
        }
}

TEST_CASE("scored padding is invisible to attention, as Hugging Face's attention mask makes it",
          "[llm][causal_lm]") {
  auto m = load({1, 1.0, 0.0, {}});
  const std::int64_t eos = m->lm->end_token(false);
  auto prompt = m->lm->tokenize("Solve the following math problem. 2 + 2 -> ", false);
  const std::int64_t real = static_cast<std::int64_t>(prompt.size()), pads = 4;
  torch::Tensor ids = torch::full({1, real + pads}, -2 - eos, torch::kLong);
  for (std::int64_t t = 0; t < real; ++t) ids[0][t] = prompt[static_cast<std::size_t>(t)];
  torch::NoGradGuard no_grad;
  torch::Tensor padded = m->model->forward(ids)[0];
  // Real positions see only what is before them.
  torch::Tensor alone = m->model->forward(ids.narrow(1, 0, real))[0];
  CHECK((padded.narrow(0, 0, real) - alone).abs().max().item<double>() < 1e-4);
  // The last padding position sees the prompt and not the padding before it: other tokens there
  // change nothing...
  torch::Tensor other = ids.clone();
  for (std::int64_t t = real; t < real + pads - 1; ++t) other[0][t] = -2 - 42;
  CHECK((m->model->forward(other)[0][real + pads - 1] - padded[real + pads - 1]).abs().max().item<double>() <
        1e-4);
  // ...while the same end-of-sequence tokens as ordinary (visible) tokens do.
  torch::Tensor visible = ids.clone();
  visible.narrow(1, real, pads).fill_(eos);
  CHECK(
      (m->model->forward(visible)[0][real + pads - 1] - padded[real + pads - 1]).abs().max().item<double>() >
      1e-2);
}
