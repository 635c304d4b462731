// `inflab index build` and `inflab explain` against a brute-force scoring of the same store.
#include <fmt/format.h>
#include <torch/torch.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>

#include "helpers.hpp"
#include "inflab/gradients.hpp"
#include "inflab/io.hpp"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {
const char* kIndexedExperiment = R"([experiment]
name = "indexed"
[dataset]
plugin = "fashion_mnist"
n_train = 200
n_validation = 20
n_pretrain = 1000
label_noise = 0.2
[model]
plugin = "mlp_lora"
hidden = [16]
[model.lora]
rank = 2
targets = ["fc*"]
[training]
epochs = 1
[projection]
kind = "gaussian"
dim = 128
[[estimator]]
plugin = "datainf"
)";
// An index built by the CLI from `experiment` in a fresh folder and stage cache.
struct BuiltIndex {
  test::TempDir dir;
  const std::string bin = std::string(INFLAB_BINARY) + " --quiet ";
  const std::string cache = " --cache " + (dir.path / "cache").string();
  const fs::path file, index = dir.path / "index";
  explicit BuiltIndex(const std::string& experiment) : file(dir.write("experiment.toml", experiment)) {
    auto built = test::run_command(bin + "index build " + file.string() + " --out " + index.string() + cache);
    INFO(built.output);
    REQUIRE(built.exit_code == 0);
  }
};
}  // namespace

TEST_CASE(
    "index build keeps the run's gradients, explain's top k equals a brute-force scoring, damage is refused",
    "[index][cli]") {
  BuiltIndex built(kIndexedExperiment);
  const auto& dir = built.dir;
  const auto &bin = built.bin, &cache = built.cache;
  const auto &file = built.file, &index = built.index;
  // The same run's gradients written by `inflab gradients` (float32): the index holds them in float16.
  REQUIRE(test::run_command(bin + "gradients " + file.string() + " --out " + (dir.path / "grads").string() +
                            cache)
              .exit_code == 0);
  const auto full = inflab::load_gradient_store(dir.path / "grads");
  const auto indexed = inflab::load_gradient_store(index / "gradients");
  CHECK(indexed.projection == "gaussian dim 128 seed 0");
  REQUIRE(indexed.train.size() == full.train.size());
  for (std::size_t b = 0; b < full.train.size(); ++b) {
    INFO(full.train[b].name);
    CHECK(full.train[b].values.size(1) <= 128);  // projected (or narrower to begin with)
    const auto error = (indexed.train[b].values - full.train[b].values).abs().max().item<double>();
    CHECK(error <= 1e-3 * full.train[b].values.abs().max().item<double>());  // float16 rounding
    CHECK(torch::equal(indexed.query[b].values, full.query[b].values));      // queries stay float32
  }

  // Brute force for hessian_free: score(k, q) = -sum over blocks of g_k . v_q, in float64.
  const std::vector<std::int64_t> rows{2, 7};
  auto result =
      test::run_command(bin + "explain " + index.string() +
                        " --validation 2 --validation 7 --estimator hessian_free --top 4 --json" + cache);
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  const auto explained = nlohmann::json::parse(result.output);
  REQUIRE(explained.size() == 2);
  for (std::size_t q = 0; q < rows.size(); ++q) {
    torch::Tensor scores = torch::zeros({200}, torch::kDouble);
    for (std::size_t b = 0; b < indexed.train.size(); ++b)
      scores -=
          indexed.train[b].values.to(torch::kDouble).mv(indexed.query[b].values[rows[q]].to(torch::kDouble));
    auto order = scores.argsort();
    CHECK(explained[q]["validation_row"] == rows[q]);
    for (std::int64_t i = 0; i < 4; ++i) {
      const auto helpful = order[i].item<std::int64_t>(), harmful = order[199 - i].item<std::int64_t>();
      CHECK(explained[q]["helpful"][i]["row"] == helpful);
      CHECK(explained[q]["harmful"][i]["row"] == harmful);
      CHECK(explained[q]["helpful"][i]["score"].get<double>() ==
            Approx(scores[helpful].item<double>()).epsilon(1e-4));
      CHECK(explained[q]["harmful"][i]["score"].get<double>() ==
            Approx(scores[harmful].item<double>()).epsilon(1e-4));
      // The example's own record: its id and labels, as the run kept them.
      CHECK(explained[q]["helpful"][i]["id"] == indexed.train_meta.ids[static_cast<std::size_t>(helpful)]);
      CHECK(explained[q]["helpful"][i]["flipped"] ==
            (indexed.train_meta.flipped[static_cast<std::size_t>(helpful)] != 0));
    }
  }
  // The text view lists the same rows.
  auto text = test::run_command(bin + "explain " + index.string() +
                                " --validation 2 --estimator hessian_free --top 1" + cache);
  CHECK(text.exit_code == 0);
  CHECK_THAT(text.output,
             Contains(fmt::format("row {:>6}", explained[0]["helpful"][0]["row"].get<std::int64_t>())));

  SECTION("bad requests and damaged or mismatched indexes are clear errors") {
    auto fails = [&](const std::string& arguments, const std::string& expected) {
      auto r = test::run_command(bin + arguments);
      INFO(arguments << "\n" << r.output);
      CHECK(r.exit_code == 2);
      CHECK_THAT(r.output, Contains(expected));
    };
    fails("explain " + index.string() + " --validation 20" + cache, "validation rows 0 to 19");
    fails("explain " + index.string() + cache, "give queries");
    fails("explain " + index.string() + " --prompt hello" + cache, "need a language model");
    fails("explain " + index.string() + " --validation 0 --estimator datainff" + cache, "datainf");
    // Computed with other kernels, the adapter would be another: the index no longer describes it.
    fails("--kernels native explain " + index.string() + " --validation 0" + cache, "rebuild it");
    // Another run's gradients into the same folder: refused, nothing overwritten.
    fails("index build " + file.string() + " --set projection.dim=64 --out " + index.string() + cache,
          "holds the index of other gradients");
    // A changed byte in a training block.
    const fs::path block = index / "gradients" / "train" / "fc1.lora_A.npy";
    std::string bytes = inflab::read_file(block);
    bytes[bytes.size() - 3] ^= 0x40;
    std::ofstream(block, std::ios::binary | std::ios::trunc) << bytes;
    fails("explain " + index.string() + " --validation 0" + cache, "fc1.lora_A.npy");
    fs::remove(index / "index.json");
    fails("explain " + index.string() + " --validation 0" + cache, "index.json: not found");
  }
}

TEST_CASE(
    "explain --prompt with a given response scores the same gradient the run took for that test example",
    "[index][cli][llm]") {
  // A small real SmolLM2 run: the paper's math task, 2 training and 1 test prompt per class, LoRA on
  // two layers' queries, one epoch, the factorised projection.
  BuiltIndex built(R"([experiment]
name = "explained_llm"
[dataset]
plugin = "paper_generation_tasks"
task = "math_without_reason"
train_per_class = 2
test_per_class = 1
[model]
plugin = "smollm2_lora"
max_length = 128
[model.lora]
rank = 4
targets = ["blk.0.attn_q", "blk.1.attn_q"]
[task]
name = "causal_lm"
[training]
epochs = 1
batch_size = 4
[projection]
kind = "factorised"
dim = 256
[[estimator]]
plugin = "hessian_free"
)");
  const auto& dir = built.dir;
  const auto &bin = built.bin, &cache = built.cache;
  const auto& index = built.index;
  // Test example 3 as a prompt with its own response, beside the stored gradient of that row.
  nlohmann::json test_example;
  std::ifstream lines(index / "examples.jsonl");
  for (std::string line; std::getline(lines, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["split"] == "query" && j["row"] == 3) test_example = j;
  }
  REQUIRE(test_example.contains("text"));
  REQUIRE(test_example.contains("response"));
  std::ofstream(dir.path / "queries.jsonl")
      << nlohmann::json{{"prompt", test_example["text"]}, {"response", test_example["response"]}}.dump()
      << "\n";
  const std::string common = " --estimator hessian_free --top 5 --json" + cache;
  auto stored = test::run_command(bin + "explain " + index.string() + " --validation 3" + common);
  auto prompted = test::run_command(bin + "explain " + index.string() + " --queries " +
                                    (dir.path / "queries.jsonl").string() + common);
  INFO(stored.output << "\n" << prompted.output);
  REQUIRE(stored.exit_code == 0);
  REQUIRE(prompted.exit_code == 0);
  const auto a = nlohmann::json::parse(stored.output)[0], b = nlohmann::json::parse(prompted.output)[0];
  CHECK(b["answer"] == test_example["response"]);
  for (const char* side : {"helpful", "harmful"})
    for (std::size_t i = 0; i < 5; ++i) {
      CHECK(a[side][i]["row"] == b[side][i]["row"]);
      CHECK(b[side][i]["score"].get<double>() == Approx(a[side][i]["score"].get<double>()).epsilon(1e-3));
    }
}

TEST_CASE("explain a denoiser's image queries: a drawn image and the same image from a file score alike",
          "[index][cli][ddpm]") {
  BuiltIndex built(R"([experiment]
name = "styles"
[dataset]
plugin = "styled_digits"
train_per_class = 6
test_per_class = 2
n_pretrain = 60
[model]
plugin = "ddpm_lora"
channels = [8, 8]
embedding = 8
groups = 4
[task]
name = "denoising"
timesteps = [25, 525]
[training]
epochs = 1
pretrain_epochs = 1
[projection]
kind = "factorised"
dim = 16
[[estimator]]
plugin = "hessian_free"
)");
  const auto &bin = built.bin, &cache = built.cache;
  const std::string index = built.index.string(), drawn = (built.dir.path / "drawn.npy").string();
  auto a = test::run_command(bin + "explain " + index +
                             " --condition sketch --steps 4 --seed 5 --top 4 --json --save-images " + drawn +
                             cache);
  auto b = test::run_command(bin + "explain " + index + " --image " + drawn +
                             " --condition sketch --top 4 --json" + cache);
  INFO(a.output << "\n" << b.output);
  REQUIRE(a.exit_code == 0);
  REQUIRE(b.exit_code == 0);
  const auto first = nlohmann::json::parse(a.output)[0], second = nlohmann::json::parse(b.output)[0];
  CHECK(first["condition"] == "sketch");
  CHECK(inflab::load_npy(drawn).sizes() == at::IntArrayRef({1, 64}));  // one 8 x 8 image
  for (const char* side : {"helpful", "harmful"})
    for (std::size_t i = 0; i < 4; ++i) {
      CHECK(first[side][i]["row"] == second[side][i]["row"]);
      CHECK(first[side][i]["score"].get<double>() ==
            Approx(second[side][i]["score"].get<double>()).epsilon(1e-6));
    }
  auto fails = [&](const std::string& arguments, const std::string& expected) {
    auto r = test::run_command(bin + "explain " + index + " " + arguments + cache);
    INFO(arguments << "\n" << r.output);
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Contains(expected));
  };
  fails("--condition nosuch", "conditions: 0, 1");
  const std::string wrong = (built.dir.path / "wrong.npy").string();
  inflab::save_npy(wrong, torch::zeros({2, 10}));
  fails("--image " + wrong + " --condition sketch", "expected rows of 64 values");
  fails("--image " + drawn + " --condition sketch --condition negative",
        "one condition for all or one per image");
  fails("--image " + drawn, "--condition");
  fails("--condition sketch --prompt hello", "give one kind");
}
