// MiniLM against golden files produced by the reference implementations
// (tests/golden/make_minilm_golden.py: tokenizers 0.13.3, sentence-transformers 2.2.2).
// Needs the weights cache that `./inflab setup` (run by `./inflab test`) prepares.
#include <fmt/format.h>
#include <torch/torch.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>

#include "adapter_check.hpp"
#include "helpers.hpp"
#include "inflab/config.hpp"
#include "inflab/dataset.hpp"
#include "inflab/error.hpp"
#include "inflab/gradients.hpp"
#include "inflab/lora.hpp"
#include "inflab/peft.hpp"
#include "inflab/pipeline.hpp"
#include "inflab/registry.hpp"
#include "inflab/safetensors.hpp"
#include "inflab/splits.hpp"
#include "inflab/wordpiece.hpp"

using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {
// MiniLM's optional capabilities (inflab/model.hpp); the test fails clearly if one is missing.
inflab::TextEncoder& text_encoder(inflab::Model& model) {
  return inflab::require_capability<inflab::TextEncoder>(model, "this test");
}
inflab::SentenceEmbedder& embedder(inflab::Model& model) {
  return inflab::require_capability<inflab::SentenceEmbedder>(model, "this test");
}
nlohmann::json golden(const std::string& name) {
  std::ifstream in(std::string(INFLAB_SOURCE_DIR) + "/tests/golden/" + name);
  REQUIRE(in);
  return nlohmann::json::parse(in);
}
fs::path minilm_dir() { return fs::path(inflab::data_cache_root()) / "minilm"; }
}  // namespace

TEST_CASE("WordPiece ids equal the reference tokenizer on every golden case", "[minilm][tokenizer]") {
  inflab::WordPieceTokenizer tokenizer(minilm_dir() / "vocab.txt");
  auto cases = golden("wordpiece.json")["cases"];
  REQUIRE(cases.size() >= 30);
  for (const auto& c : cases) {
    std::string text = c["text"];
    std::string pair = c.value("pair", "");
    inflab::Encoding e = tokenizer.encode(text, c.contains("pair") ? &pair : nullptr, 128, false);
    INFO("text: " << text);
    CHECK(e.input_ids == c["ids"].get<std::vector<std::int64_t>>());
    CHECK(e.token_type_ids == c["type_ids"].get<std::vector<std::int64_t>>());
  }
}

TEST_CASE("padding and masks follow the template", "[minilm][tokenizer]") {
  inflab::WordPieceTokenizer tokenizer(minilm_dir() / "vocab.txt");
  auto e = tokenizer.encode("hello world", nullptr, 8, true);
  CHECK(e.input_ids.size() == 8);
  CHECK(e.attention_mask == std::vector<std::int64_t>{1, 1, 1, 1, 0, 0, 0, 0});
  CHECK(e.input_ids[0] == tokenizer.id("[CLS]"));
  CHECK(e.input_ids[3] == tokenizer.id("[SEP]"));
  CHECK(e.input_ids[4] == tokenizer.id("[PAD]"));
  REQUIRE_THROWS_WITH(inflab::WordPieceTokenizer("/nonexistent/vocab.txt"),
                      Contains("/nonexistent/vocab.txt"));
}

TEST_CASE("MiniLM sentence embeddings equal sentence-transformers within 1e-4", "[minilm]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  auto options = inflab::default_options(
      "minilm_lora", registry.find(inflab::PluginKind::Model, "minilm_lora").info->options());
  auto model = registry.create_as<inflab::Model>(inflab::PluginKind::Model, "minilm_lora", options);
  auto g = golden("minilm_embeddings.json");
  auto texts = g["texts"].get<std::vector<std::string>>();
  REQUIRE(texts.size() >= 5);
  torch::Tensor ours = embedder(*model).embed(texts);
  auto reference = g["embeddings"].get<std::vector<std::vector<float>>>();
  for (std::size_t i = 0; i < texts.size(); ++i) {
    torch::Tensor expected = torch::tensor(reference[i]);
    INFO(texts[i]);
    CHECK((ours[i] - expected).abs().max().item<float>() < 1e-4);
  }
}

TEST_CASE("engine gradients equal a per-example loop on minilm_lora (real weights, padding)",
          "[minilm][gradients]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  auto options = inflab::default_options(
      "minilm_lora", registry.find(inflab::PluginKind::Model, "minilm_lora").info->options());
  options.set("max_length", std::int64_t{24});
  auto model = registry.create_as<inflab::Model>(inflab::PluginKind::Model, "minilm_lora", options);
  std::vector<std::string> texts{"A short one.",
                                 "This review is considerably longer than the first one, padding matters.",
                                 "Great!", "Terrible taste, never again."};
  auto inputs = text_encoder(*model).encode_texts(texts);
  for (std::int64_t rank : {1, 4}) {
    model->build({{3, 24}, 2},
                 inflab::LoraConfig{rank, 8.0, 0.0, {"*attention.self.query", "*attention.self.value"}}, 1);
    {
      torch::NoGradGuard g;
      for (auto* l : model->lora_layers())
        if (l->has_adapter()) l->lora_b().normal_(0, 0.05);
    }
    auto labels = torch::tensor(std::vector<std::int64_t>{0, 1, 1, 0}, torch::kLong);
    auto engine = inflab::per_example_gradients(*model, inputs, labels, 3);
    REQUIRE(engine.size() == 24);  // 6 layers x (query, value) x (A, B)
    std::vector<torch::Tensor> params;
    for (auto* l : model->lora_layers())
      if (l->has_adapter()) params.push_back(l->lora_a()), params.push_back(l->lora_b());
    model->set_training(false);
    for (std::int64_t i = 0; i < 4; ++i) {
      // Oracle 1, the engine's arithmetic: one backward per example through the same padded
      // batch the engine saw (batches of 3: {0, 1, 2}, {3}).
      const std::int64_t start = i < 3 ? 0 : 3, count = i < 3 ? 3 : 1;
      auto logits = model->forward(inputs.narrow(0, start, count));
      auto loss =
          torch::nn::functional::cross_entropy(logits.narrow(0, i - start, 1), labels.narrow(0, i, 1));
      auto grads = torch::autograd::grad({loss}, params);
      // Oracle 2, padding changes nothing: the example alone (no padding; other matmul shapes,
      // so float32 rounding differs by more than 1e-5 through six layers).
      auto alone = torch::nn::functional::cross_entropy(model->forward(inputs.narrow(0, i, 1)),
                                                        labels.narrow(0, i, 1));
      auto alone_grads = torch::autograd::grad({alone}, params);
      for (std::size_t b = 0; b < grads.size(); ++b) {
        auto expected = grads[b].reshape({-1});
        INFO("rank " << rank << " example " << i << " block " << engine[b].name);
        CHECK((engine[b].values[i] - expected).norm().item<double>() <=
              1e-5 * expected.norm().item<double>() + 1e-9);
        CHECK((engine[b].values[i] - alone_grads[b].reshape({-1})).norm().item<double>() <=
              1e-4 * expected.norm().item<double>() + 1e-9);
      }
    }
  }
}

TEST_CASE(
    "K-FAC statistics of a padded batch count real tokens only (oracle: one unpadded example at a time)",
    "[minilm][gradients][kfac]") {
  auto options = inflab::default_options(
      "minilm_lora", test::registry().find(inflab::PluginKind::Model, "minilm_lora").info->options());
  options.set("max_length", std::int64_t{24});
  auto model = test::registry().create_as<inflab::Model>(inflab::PluginKind::Model, "minilm_lora", options);
  std::vector<std::string> texts{
      "Fine.", "A much longer review than the others, so that padding is most of the batch.",
      "Not bad at all", "Awful."};
  auto inputs = text_encoder(*model).encode_texts(texts);
  model->build({{3, 24}, 2}, inflab::LoraConfig{2, 4.0, 0.0, {"encoder.layer.5.attention.self.value"}}, 1);
  {
    torch::NoGradGuard g;
    for (auto* l : model->lora_layers())
      if (l->has_adapter()) l->lora_b().normal_(0, 0.05);
  }
  auto labels = torch::tensor(std::vector<std::int64_t>{0, 1, 1, 0}, torch::kLong);
  auto blocks = inflab::per_example_gradients(*model, inputs, labels, 4, "", /*factors=*/true);
  REQUIRE(blocks.size() == 2);
  REQUIRE(text_encoder(*model).token_mask(inputs).sum(1).min().item<std::int64_t>() <
          text_encoder(*model).token_mask(inputs).size(1));  // the batch is padded

  inflab::LoraLayer* layer = nullptr;
  for (auto* l : model->lora_layers())
    if (l->has_adapter()) layer = l;
  // Oracle: each example alone has no padding; sum a a^T over its tokens and delta delta^T of its own loss.
  auto activation = torch::zeros({384, 384}, torch::kDouble);
  auto gradient = torch::zeros({2, 2}, torch::kDouble);
  std::int64_t tokens = 0;
  model->set_training(false);
  layer->capture = true;
  for (std::int64_t i = 0; i < 4; ++i) {
    auto loss = torch::nn::functional::cross_entropy(
        model->forward(inputs.narrow(0, i, 1)), labels.narrow(0, i, 1),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    auto x = layer->captured_input.detach().reshape({-1, 384}).to(torch::kDouble);
    auto delta =
        torch::autograd::grad({loss}, {layer->captured_hidden})[0].reshape({-1, 2}).to(torch::kDouble);
    tokens += x.size(0);
    activation += x.t().mm(x);
    gradient += delta.t().mm(delta);
  }
  layer->capture = false;
  activation /= static_cast<double>(tokens);
  gradient /= 4.0;
  auto relative = [](const torch::Tensor& a, const torch::Tensor& b) {
    return ((a.to(torch::kDouble) - b).norm() / b.norm()).item<double>();
  };
  CHECK(tokens < 4 * text_encoder(*model).token_mask(inputs).size(1));
  CHECK(relative(blocks[0].activation_covariance, activation) < 1e-5);
  CHECK(relative(blocks[0].gradient_covariance, gradient) < 1e-4);
}

TEST_CASE("safetensors: tensors are read by name, damaged files are refused with the reason",
          "[safetensors]") {
  test::TempDir dir;
  auto write = [&](const std::string& name, const std::string& header, const std::string& data) {
    std::string bytes(8, '\0');
    std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    return dir.write(name, bytes + header + data);
  };
  std::string data(24, '\0');
  float values[6] = {1, 2, 3, 4, 5, 6};
  std::memcpy(data.data(), values, 24);
  auto good = write(
      "good.safetensors",
      R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, "__metadata__": {"format": "pt"}})",
      data);
  auto tensors = inflab::load_safetensors(good);
  REQUIRE(tensors.count("w"));
  CHECK(tensors["w"][1][2].item<float>() == 6.f);
  auto truncated =
      write("truncated.safetensors", R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}})",
            data.substr(0, 20));
  REQUIRE_THROWS_WITH(inflab::load_safetensors(truncated),
                      Contains("truncated.safetensors") && Contains("'w'") && Contains("truncated"));
  auto shape = write("shape.safetensors",
                     R"({"w": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 24]}})", data);
  REQUIRE_THROWS_WITH(inflab::load_safetensors(shape), Contains("needs 32 bytes, its range has 24"));
  auto dtype = write("dtype.safetensors",
                     R"({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}})", data);
  REQUIRE_THROWS_WITH(inflab::load_safetensors(dtype), Contains("unsupported dtype 'F8_E4M3'"));
  auto length = dir.write("length.safetensors", std::string("\xff\xff\xff\x00\x00\x00\x00\x00{}", 10));
  REQUIRE_THROWS_WITH(inflab::load_safetensors(length), Contains("exceeds the file"));
}

namespace {
std::unique_ptr<inflab::Dataset> text_dataset(inflab::Registry& registry, const std::string& name,
                                              std::map<std::string, inflab::Value> set) {
  auto options =
      inflab::default_options(name, registry.find(inflab::PluginKind::Dataset, name).info->options());
  for (auto& [k, v] : set) options.set(k, v);
  return registry.create_as<inflab::Dataset>(inflab::PluginKind::Dataset, name, options);
}
}  // namespace

TEST_CASE("the text datasets read the prepared files completely", "[minilm][datasets]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  // Counts read independently from the files: 2,600 of 4,000 training reviews are "great";
  // 103 of 1,554 Reuters training stories are about grain; the test files have 1,000 and 604 rows.
  auto foods = text_dataset(registry, "fine_foods",
                            {{"n_train", std::int64_t{4000}},
                             {"n_pretrain", std::int64_t{0}},
                             {"n_validation", std::int64_t{1000}}})
                   ->load();
  CHECK(foods.train.texts.size() == 4000);
  CHECK(foods.train.labels.sum().item<std::int64_t>() == 2600);
  CHECK(foods.validation.texts.size() == 1000);
  CHECK(foods.class_names == std::vector<std::string>{"other", "great"});
  auto grain = text_dataset(registry, "reuters",
                            {{"n_train", std::int64_t{1554}},
                             {"n_pretrain", std::int64_t{0}},
                             {"n_validation", std::int64_t{604}}})
                   ->load();
  CHECK(grain.train.labels.sum().item<std::int64_t>() == 103);
  CHECK(grain.train.texts[0].find('\n') != std::string::npos);  // ARFF escapes decoded
  REQUIRE_THROWS_WITH(text_dataset(registry, "reuters", {{"n_train", std::int64_t{1555}}})->load(),
                      Contains("must fit in the 1554"));
  // R on the package's data: 4,652 Android and 3,962 iPhone tweets (no retweets among them).
  auto tweets = text_dataset(registry, "tweets",
                             {{"n_train", std::int64_t{8000}},
                              {"n_pretrain", std::int64_t{0}},
                              {"n_validation", std::int64_t{614}}})
                    ->load();
  CHECK(tweets.train.labels.sum().item<std::int64_t>() +
            tweets.validation.labels.sum().item<std::int64_t>() ==
        4652);
  std::set<std::int64_t> ids(tweets.train.ids.begin(), tweets.train.ids.end());
  ids.insert(tweets.validation.ids.begin(), tweets.validation.ids.end());
  CHECK(ids.size() == 8614);  // disjoint splits covering every tweet
  REQUIRE_THROWS_WITH(text_dataset(registry, "reuters", {{"topic", std::string("wheat")}}),
                      Contains("grain"));
  REQUIRE_THROWS_WITH(
      text_dataset(registry, "fine_foods", {{"data_dir", std::string("/nonexistent")}})->load(),
      Contains("./inflab setup"));
}

TEST_CASE("a tiny text experiment runs end to end (smoke of text_quickstart)", "[minilm][pipeline]") {
  test::TempDir dir;
  auto file = dir.write("text.toml", R"([experiment]
name = "text_smoke"
[dataset]
plugin = "reuters"
n_train = 24
n_validation = 6
n_pretrain = 12
label_noise = 0.25
[model]
plugin = "minilm_lora"
max_length = 24
[model.lora]
rank = 2
targets = ["*attention.self.value", "classifier"]
[training]
epochs = 1
pretrain_epochs = 1
batch_size = 8
[[estimator]]
plugin = "datainf"
[[estimator]]
plugin = "kfac"
)");
  auto result =
      test::run_command(std::string(INFLAB_BINARY) + " --quiet run " + file.string() + " --out " +
                        (dir.path / "results").string() + " --cache " + (dir.path / "cache").string());
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  CHECK_THAT(result.output, Contains("datainf") && Contains("kfac"));
  CHECK(fs::exists(dir.path / "results" / "text_smoke" / "run" / "scores_datainf.npy"));
}

TEST_CASE("minilm's probe path equals its forward pass while the adapters are zero", "[minilm]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  auto options = inflab::default_options(
      "minilm_lora", registry.find(inflab::PluginKind::Model, "minilm_lora").info->options());
  options.set("max_length", std::int64_t{16});
  auto model = registry.create_as<inflab::Model>(inflab::PluginKind::Model, "minilm_lora", options);
  auto inputs = text_encoder(*model).encode_texts({"first text", "a second, longer text with more words"});
  model->build({{3, 16}, 2}, inflab::LoraConfig{2, 2.0, 0.0, {"*attention.self.value", "classifier"}}, 3);
  auto* probe = inflab::capability<inflab::LinearProbe>(*model);
  REQUIRE(probe);
  torch::NoGradGuard no_grad;
  CHECK(
      torch::allclose(model->forward(inputs), probe->probe_head(probe->probe_features(inputs)), 1e-5, 1e-6));
}

TEST_CASE("minilm's default max_length is the package's own (sentence_bert_config.json)", "[minilm]") {
  std::ifstream in(minilm_dir() / "sentence_bert_config.json");
  REQUIRE(in);
  const auto packaged = nlohmann::json::parse(in).at("max_seq_length").get<std::int64_t>();
  CHECK(packaged == 256);
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  auto specs = registry.find(inflab::PluginKind::Model, "minilm_lora").info->options();
  auto model = registry.create_as<inflab::Model>(inflab::PluginKind::Model, "minilm_lora",
                                                 inflab::default_options("minilm_lora", specs));
  // A text of 300 words: truncated at the package's length, not at an inflab constant.
  std::string text;
  for (int i = 0; i < 300; ++i) text += "word ";
  auto inputs = text_encoder(*model).encode_texts({text});
  CHECK(inputs.size(2) == packaged);
  CHECK(inputs[0][2].sum().item<std::int64_t>() == packaged);  // the mask: every position is a token
}

namespace {
// The configuration tests/golden/peft_minilm was exported from (make_peft_golden.py's header).
std::string tiny_minilm_toml(const std::string& adapter) {
  return fmt::format(R"([experiment]
name = "tiny_minilm"
[dataset]
plugin = "fine_foods"
n_train = 40
n_validation = 10
n_pretrain = 30
label_noise = 0.2
[model]
plugin = "minilm_lora"
max_length = 32
{}
[model.lora]
rank = 2
targets = ["*attention.self.query", "*attention.self.value", "classifier"]
[training]
epochs = 3
learning_rate = 1e-2
pretrain_epochs = 2
[[estimator]]
plugin = "datainf"
[evaluation]
metrics = ["auc"]
)",
                     adapter.empty() ? "" : fmt::format("adapter = \"{}\"", adapter));
}
}  // namespace

TEST_CASE(
    "PEFT adapters: inflab's import gives the embeddings real PEFT gives, export writes what PEFT loaded",
    "[minilm][peft]") {
  auto& registry = test::registry();
  test::TempDir dir;
  const fs::path golden_adapter = fs::path(INFLAB_SOURCE_DIR) / "tests" / "golden" / "peft_minilm";
  const auto recorded = golden("peft_minilm.json");  // transformers 4.30.2 + peft 0.4.0 on this adapter
  auto config_with = [&](const fs::path& adapter) {
    const auto file = dir.write("e.toml", tiny_minilm_toml(adapter.string()));
    return inflab::load_experiment(file, {}, registry).at(0);
  };
  const inflab::RunPaths paths{dir.path / "results", dir.path / "cache"};
  const auto sentences = recorded["sentences"].get<std::vector<std::string>>();
  auto expected = [&](const char* key) {
    std::vector<float> flat;
    for (const auto& row : recorded[key])
      for (double v : row) flat.push_back(static_cast<float>(v));
    return torch::tensor(flat).reshape({static_cast<std::int64_t>(sentences.size()), -1});
  };
  {
    auto imported = inflab::finetuned_model(config_with(golden_adapter), registry, paths);
    const auto embeddings = embedder(*imported.model).embed(sentences);
    CHECK((embeddings - expected("embeddings")).abs().max().item<float>() < 1e-4);
    // The adapter matters: without it the embeddings are PEFT's base ones, not the adapted ones.
    CHECK((embeddings - expected("base_embeddings")).abs().max().item<float>() > 1e-2);

    // Export the imported adapters: the same tensors, names and configuration PEFT loaded.
    inflab::export_peft_adapter(*imported.model, "minilm_lora", dir.path / "exported");
    test::check_same_adapter(golden_adapter, dir.path / "exported",
                             {"adapter_model.safetensors", "inflab_head.safetensors"});
    CHECK(recorded["tensors_loaded"].get<int>() == 24);  // PEFT took every tensor (checked when recorded)
  }

  // Mismatches name the file and the tensor or key; nothing is trained instead.
  auto broken = [&](const std::string& name, const std::function<void(const fs::path&)>& damage) {
    const fs::path copy = dir.path / name;
    fs::copy(golden_adapter, copy, fs::copy_options::recursive);
    damage(copy);
    return copy;
  };
  auto load = [&](const fs::path& adapter) {
    inflab::finetuned_model(config_with(adapter), registry, paths);
  };
  auto edit_config = [](const fs::path& adapter, const std::string& key, const nlohmann::json& value) {
    std::ifstream in(adapter / "adapter_config.json");
    auto json = nlohmann::json::parse(in);
    json[key] = value;
    std::ofstream(adapter / "adapter_config.json") << json.dump();
  };
  auto rewrite_tensors = [](const fs::path& adapter,
                            const std::function<void(std::map<std::string, at::Tensor>&)>& f) {
    auto tensors = inflab::load_safetensors(adapter / "adapter_model.safetensors");
    std::map<std::string, at::Tensor> copy;
    for (auto& [k, v] : tensors) copy[k] = v.clone();
    f(copy);
    std::vector<std::pair<std::string, at::Tensor>> ordered(copy.begin(), copy.end());
    inflab::save_safetensors(adapter / "adapter_model.safetensors", ordered);
  };
  CHECK_THROWS_WITH(
      load(broken("rank", [&](const fs::path& p) { edit_config(p, "r", 4); })),
      Contains("adapter_config.json: r = 4 but [model.lora] rank = 2: set model.lora.rank = 4"));
  CHECK_THROWS_WITH(load(broken("alpha", [&](const fs::path& p) { edit_config(p, "lora_alpha", 16); })),
                    Contains("lora_alpha = 16 (scale 8) but [model.lora] alpha gives scale 1"));
  CHECK_THROWS_WITH(load(broken("base",
                                [&](const fs::path& p) {
                                  edit_config(p, "base_model_name_or_path", "bert-base-uncased");
                                })),
                    Contains("base_model_name_or_path is 'bert-base-uncased', but model 'minilm_lora' is "
                             "sentence-transformers/all-MiniLM-L6-v2"));
  const std::string value_a = "base_model.model.encoder.layer.3.attention.self.value.lora_A.weight";
  CHECK_THROWS_WITH(
      load(broken("missing",
                  [&](const fs::path& p) { rewrite_tensors(p, [&](auto& t) { t.erase(value_a); }); })),
      Contains("adapter_model.safetensors: no tensor '" + value_a +
               "' for the LoRA on layer "
               "'encoder.layer.3.attention.self.value'"));
  const std::string key_a = "base_model.model.encoder.layer.0.attention.self.key.lora_A.weight";
  CHECK_THROWS_WITH(load(broken("extra",
                                [&](const fs::path& p) {
                                  rewrite_tensors(p, [&](auto& t) { t[key_a] = torch::zeros({2, 384}); });
                                })),
                    Contains("tensor '" + key_a + "' has no LoRA layer to go to in model 'minilm_lora'"));
  CHECK_THROWS_WITH(load(broken("shape",
                                [&](const fs::path& p) {
                                  rewrite_tensors(p, [&](auto& t) { t[value_a] = torch::zeros({2, 100}); });
                                })),
                    Contains("tensor '" + value_a + "' has shape [2, 100], expected [2, 384]"));
  CHECK_THROWS_WITH(load(broken("pickle",
                                [](const fs::path& p) {
                                  fs::rename(p / "adapter_model.safetensors", p / "adapter_model.bin");
                                })),
                    Contains("only adapter_model.safetensors is read, not the pickled adapter_model.bin"));
  CHECK_THROWS_WITH(
      config_with(dir.path / "nowhere"),
      Contains("key 'model.adapter': expected a PEFT adapter directory holding adapter_config.json"));
  const auto lds =
      dir.write("lds.toml", test::replace(tiny_minilm_toml(golden_adapter.string()), "metrics = [\"auc\"]",
                                          "metrics = [\"auc\", \"lds\"]"));
  CHECK_THROWS_WITH(inflab::load_experiment(lds, {}, registry),
                    Contains("key 'model.adapter': metric \"lds\" retrains the LoRA"));
}
