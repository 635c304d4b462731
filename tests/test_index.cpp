// `inflab index build` and `inflab explain` against a brute-force scoring of the same store.
#include <fmt/format.h>
#include <torch/torch.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "helpers.hpp"
#include "inflab/config.hpp"
#include "inflab/dataset.hpp"
#include "inflab/gradients.hpp"
#include "inflab/io.hpp"
#include "inflab/registry.hpp"

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
  const std::string bin;
  const std::string cache = " --cache " + (dir.path / "cache").string();
  const fs::path file, index = dir.path / "index";
  // `options`: global options of every command on it (the thread count is part of the stage keys).
  explicit BuiltIndex(const std::string& experiment, const std::string& options = "")
      : bin(std::string(INFLAB_BINARY) + " --quiet " + options + " "),
        file(dir.write("experiment.toml", experiment)) {
    auto built = test::run_command(bin + "index build " + file.string() + " --out " + index.string() + cache);
    INFO(built.output);
    REQUIRE(built.exit_code == 0);
  }
};
}  // namespace

namespace {
// What an index holds, read back without inflab's reader: a shard's or the queries' block.
torch::Tensor stored_block(const fs::path& index, const std::string& part, const std::string& block) {
  return inflab::load_npy(index / part / (block + ".npy"));
}

// score(k, q) = -sum over blocks of g_k . r_q in float64, and the explain JSON's top k of query q
// checked against it (rows exactly, scores to float32 accuracy).
void check_top_k(const nlohmann::json& explained, const torch::Tensor& scores, std::int64_t k) {
  const auto order = scores.argsort();
  const auto n = scores.size(0);
  for (std::int64_t i = 0; i < k; ++i) {
    const auto helpful = order[i].item<std::int64_t>(), harmful = order[n - 1 - i].item<std::int64_t>();
    CHECK(explained["helpful"][i]["row"] == helpful);
    CHECK(explained["harmful"][i]["row"] == harmful);
    CHECK(explained["helpful"][i]["score"].get<double>() ==
          Approx(scores[helpful].item<double>()).epsilon(1e-4));
    CHECK(explained["harmful"][i]["score"].get<double>() ==
          Approx(scores[harmful].item<double>()).epsilon(1e-4));
  }
}

// DataInf's r = (v - (1/n) sum_i g_i (g_i . v) / (lambda + |g_i|^2)) / lambda with the paper's
// damping lambda = 0.1 mean(g^2), in float64: the oracle of the fitted preconditioners.
torch::Tensor datainf_oracle(const torch::Tensor& train_in, const torch::Tensor& query_in) {
  const auto g = train_in.to(torch::kDouble), v = query_in.to(torch::kDouble);
  const double lambda = 0.1 * g.pow(2).mean().item<double>();
  const auto weights = (g.pow(2).sum(1) + lambda).reciprocal() / static_cast<double>(g.size(0));
  return (v - ((g.mv(v)) * weights).matmul(g)) / lambda;
}

// The first query of two explain runs' JSON, each run required to succeed.
std::pair<nlohmann::json, nlohmann::json> first_queries(const std::string& first, const std::string& second) {
  const auto a = test::run_command(first), b = test::run_command(second);
  INFO(a.output << "\n" << b.output);
  REQUIRE(a.exit_code == 0);
  REQUIRE(b.exit_code == 0);
  return {nlohmann::json::parse(a.output)[0], nlohmann::json::parse(b.output)[0]};
}

// The same k rows on both sides, best first, with scores equal within `epsilon` (relative).
void check_same_ranking(const nlohmann::json& a, const nlohmann::json& b, std::size_t k, double epsilon) {
  for (const char* side : {"helpful", "harmful"})
    for (std::size_t i = 0; i < k; ++i) {
      CHECK(a[side][i]["row"] == b[side][i]["row"]);
      CHECK(b[side][i]["score"].get<double>() == Approx(a[side][i]["score"].get<double>()).epsilon(epsilon));
    }
}
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
  const auto record = nlohmann::json::parse(inflab::read_file(index / "index.json"));
  CHECK(record["projection"] == "gaussian dim 128 seed 0");
  CHECK(record["shard_rows"] == std::vector<std::int64_t>{200});
  // Fashion-MNIST's class names (its documentation's order), kept for explain's lists.
  REQUIRE(record["class_names"].size() == 10);
  CHECK(record["class_names"][0] == "T-shirt/top");
  CHECK(record["class_names"][9] == "Ankle boot");
  REQUIRE(record["blocks"].size() == full.train.size());
  std::vector<torch::Tensor> rows, queries;  // as stored: float16 rows, float32 queries
  for (std::size_t b = 0; b < full.train.size(); ++b) {
    const std::string name = full.train[b].name;
    INFO(name);
    CHECK(record["blocks"][b]["name"] == name);
    CHECK(full.train[b].values.size(1) <= 128);  // projected (or narrower to begin with)
    rows.push_back(stored_block(index, "shards/00000", name));
    queries.push_back(stored_block(index, "queries", name));
    CHECK(rows[b].scalar_type() == torch::kHalf);
    CHECK(torch::equal(rows[b], full.train[b].values.to(torch::kHalf)));  // rounded once, to nearest
    CHECK(torch::equal(queries[b], full.query[b].values));                // queries stay float32
  }

  // hessian_free, scored a few rows at a time (the top k merged across 29 chunks), against
  // score(k, q) = -sum over blocks of g_k . v_q in float64.
  const std::vector<std::int64_t> picked{2, 7};
  auto result = test::run_command(bin + "explain " + index.string() +
                                  " --validation 2 --validation 7 --estimator hessian_free --top 4 --json "
                                  "--chunk-rows 7" +
                                  cache);
  INFO(result.output);
  REQUIRE(result.exit_code == 0);
  const auto explained = nlohmann::json::parse(result.output);
  REQUIRE(explained.size() == 2);
  for (std::size_t q = 0; q < picked.size(); ++q) {
    torch::Tensor scores = torch::zeros({200}, torch::kDouble);
    for (std::size_t b = 0; b < rows.size(); ++b)
      scores -= rows[b].to(torch::kDouble).mv(queries[b][picked[q]].to(torch::kDouble));
    CHECK(explained[q]["validation_row"] == picked[q]);
    check_top_k(explained[q], scores, 4);
    // The example's own record: its id and labels, as the run kept them.
    const auto helpful = static_cast<std::size_t>(explained[q]["helpful"][0]["row"].get<std::int64_t>());
    CHECK(explained[q]["helpful"][0]["id"] == full.train_meta.ids[helpful]);
    CHECK(explained[q]["helpful"][0]["flipped"] == (full.train_meta.flipped[helpful] != 0));
    CHECK(explained[q]["helpful"][0]["class"] == record["class_names"][full.train_meta.labels[helpful]]);
    CHECK(explained[q]["helpful"][0]["observed_class"] ==
          record["class_names"][full.train_meta.observed_labels[helpful]]);
    CHECK(explained[q]["class"] ==
          record["class_names"][full.query_meta.labels[static_cast<std::size_t>(picked[q])]]);
  }
  // --normalise unit: hessian_free becomes the cosine of the stored row and the query, in float64.
  auto unit = test::run_command(bin + "explain " + index.string() +
                                " --validation 7 --estimator hessian_free --top 4 --json --normalise unit "
                                "--chunk-rows 7" +
                                cache);
  INFO(unit.output);
  REQUIRE(unit.exit_code == 0);
  {
    const auto j = nlohmann::json::parse(unit.output)[0];
    CHECK(j["normalise"] == "unit");
    torch::Tensor dots = torch::zeros({200}, torch::kDouble), row_norms = torch::zeros({200}, torch::kDouble);
    double query_norm = 0;
    for (std::size_t b = 0; b < rows.size(); ++b) {
      const auto g = rows[b].to(torch::kDouble), v = queries[b][7].to(torch::kDouble);
      dots -= g.mv(v);
      row_norms += g.square().sum(1);
      query_norm += v.square().sum().item<double>();
    }
    check_top_k(j, dots / row_norms.sqrt() / std::sqrt(query_norm), 4);
  }
  // DataInf from the preconditioner fitted at build time (on the float32 gradients), and fitted at
  // query time (other options: on the stored float16 rows), each against the float64 formula.
  for (const std::string sets : {"", " --set damping_scale=0.1"}) {
    INFO(sets);
    auto datainf = test::run_command(bin + "explain " + index.string() + " --validation 7 --top 3 --json" +
                                     sets + cache);
    INFO(datainf.output);
    REQUIRE(datainf.exit_code == 0);
    const auto j = nlohmann::json::parse(datainf.output)[0];
    CHECK_THAT(j["preconditioner"].get<std::string>(),
               Contains(sets.empty() ? "fitted when the index was built" : "fitted now"));
    torch::Tensor scores = torch::zeros({200}, torch::kDouble);
    for (std::size_t b = 0; b < rows.size(); ++b) {
      const auto& fitted_on = sets.empty() ? full.train[b].values : rows[b];
      scores -= rows[b].to(torch::kDouble).mv(datainf_oracle(fitted_on, queries[b][7]));
    }
    check_top_k(j, scores, 3);
  }
  // --normalise relatif: each score divided by sqrt(g_k . M^-1 g_k) of the stored row, with the same M.
  {
    // hessian_free: M = I, so the divisor is the row's norm (the query is not normalised).
    auto hf = test::run_command(
        bin + "explain " + index.string() +
        " --validation 7 --estimator hessian_free --top 4 --json --normalise relatif" + cache);
    INFO(hf.output);
    REQUIRE(hf.exit_code == 0);
    torch::Tensor dots = torch::zeros({200}, torch::kDouble), squared = torch::zeros({200}, torch::kDouble);
    for (std::size_t b = 0; b < rows.size(); ++b) {
      const auto g = rows[b].to(torch::kDouble);
      dots -= g.mv(queries[b][7].to(torch::kDouble));
      squared += g.square().sum(1);
    }
    check_top_k(nlohmann::json::parse(hf.output)[0], dots / squared.sqrt(), 4);
    // DataInf from the kept fit (fitted on the float32 gradients; its self-influence computed now
    // from the kept matrices), fitted now on the stored rows (other options), and from an index
    // built with --self-influence (kept with the fit): each against the float64 formula.
    const fs::path kept = dir.path / "index_self_influence";
    auto r = test::run_command(bin + "index build " + file.string() + " --self-influence --out " +
                               kept.string() + cache);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    CHECK_THAT(r.output, Contains("datainf with self-influence"));
    for (const auto& [where, sets] :
         {std::pair{index, std::string()}, std::pair{index, std::string(" --set damping_scale=0.1")},
          std::pair{kept, std::string()}}) {
      INFO(where.string() << sets);
      auto e = test::run_command(bin + "explain " + where.string() +
                                 " --validation 7 --top 3 --json --normalise relatif" + sets + cache);
      INFO(e.output);
      REQUIRE(e.exit_code == 0);
      torch::Tensor scores = torch::zeros({200}, torch::kDouble), self = torch::zeros({200}, torch::kDouble);
      for (std::size_t b = 0; b < rows.size(); ++b) {
        const auto& fitted_on = sets.empty() ? full.train[b].values : rows[b];
        const auto g = rows[b].to(torch::kDouble);
        scores -= g.mv(datainf_oracle(fitted_on, queries[b][7]));
        for (std::int64_t k = 0; k < 200; ++k) self[k] += g[k].dot(datainf_oracle(fitted_on, rows[b][k]));
      }
      if (where == kept)  // the kept values themselves
        CHECK(
            torch::allclose(inflab::load_npy(kept / "fits" / "datainf" / "self_influence.npy"), self, 1e-4));
      check_top_k(nlohmann::json::parse(e.output)[0], scores / self.sqrt(), 3);
    }
    // --self-influence on the index built without it adds it in place: the values a build with it
    // keeps, listed in index.json and CHECKSUMS (explain opens it), and explain no longer computes them.
    const fs::path added = index / "fits" / "datainf" / "self_influence.npy";
    REQUIRE_FALSE(fs::exists(added));
    auto again = test::run_command(bin + "index build " + file.string() + " --self-influence --out " +
                                   index.string() + cache);
    INFO(again.output);
    REQUIRE(again.exit_code == 0);
    CHECK_THAT(again.output, Contains("fitted: datainf with self-influence"));
    REQUIRE(fs::exists(added));
    CHECK(torch::equal(inflab::load_npy(added),
                       inflab::load_npy(kept / "fits" / "datainf" / "self_influence.npy")));
    CHECK(nlohmann::json::parse(inflab::read_file(index / "index.json"))["fits"][0]["self_influence"] ==
          true);
    auto now = test::run_command(bin + "explain " + index.string() +
                                 " --validation 7 --top 3 --json --normalise relatif" + cache);
    INFO(now.output);
    REQUIRE(now.exit_code == 0);
    CHECK_THAT(now.output, !Contains("computing the self-influence"));
  }
  // The text view lists the same rows.
  auto text = test::run_command(bin + "explain " + index.string() +
                                " --validation 2 --estimator hessian_free --top 1" + cache);
  CHECK(text.exit_code == 0);
  CHECK_THAT(text.output,
             Contains(fmt::format("row {:>6}", explained[0]["helpful"][0]["row"].get<std::int64_t>())));

  SECTION("K-FAC from a kept fit equals K-FAC fitted at query time from the index's stored factors") {
    // The factorised projection keeps each block's Kronecker factors (projected); a dense one has none.
    const fs::path kept_fit = dir.path / "index_kfac", no_fit = dir.path / "index_factors";
    for (const auto& [out, fit] : {std::pair{kept_fit, "kfac"}, std::pair{no_fit, "none"}}) {
      auto r = test::run_command(bin + "index build " + file.string() +
                                 " --set projection.kind=factorised --fit " + fit + " --out " + out.string() +
                                 cache);
      INFO(r.output);
      REQUIRE(r.exit_code == 0);
    }
    CHECK(fs::exists(no_fit / "factors" / "fc1.lora_A.activation.npy"));
    const std::string request = " --validation 7 --estimator kfac --top 3 --json" + cache;
    const auto [a, c] = first_queries(bin + "explain " + kept_fit.string() + request,
                                      bin + "explain " + no_fit.string() + request);
    CHECK_THAT(a["preconditioner"].get<std::string>(), Contains("fitted when the index was built"));
    CHECK_THAT(c["preconditioner"].get<std::string>(), Contains("fitted now"));
    check_same_ranking(a, c, 3, 2e-3);
  }

  SECTION("bfloat16 rows are the gradients rounded to bfloat16, scored alike") {
    const fs::path other = dir.path / "index_bf16";
    auto r = test::run_command(bin + "index build " + file.string() + " --dtype bfloat16 --fit none --out " +
                               other.string() + cache);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    std::vector<torch::Tensor> bf16;
    for (std::size_t b = 0; b < full.train.size(); ++b) {
      const auto bits = stored_block(other, "shards/00000", full.train[b].name);
      REQUIRE(bits.scalar_type() == torch::kShort);  // NumPy has no bfloat16: the raw bits as int16
      bf16.push_back(bits.view(torch::kBFloat16));
      CHECK(torch::equal(bf16[b], full.train[b].values.to(torch::kBFloat16)));
    }
    auto e = test::run_command(bin + "explain " + other.string() +
                               " --validation 7 --estimator hessian_free --top 3 --json" + cache);
    REQUIRE(e.exit_code == 0);
    torch::Tensor scores = torch::zeros({200}, torch::kDouble);
    for (std::size_t b = 0; b < bf16.size(); ++b)
      scores -= bf16[b].to(torch::kDouble).mv(queries[b][7].to(torch::kDouble));
    check_top_k(nlohmann::json::parse(e.output)[0], scores, 3);
  }

  SECTION("an index built by two ranks holds a shard each and ranks as the one-process index") {
    // Both at one thread per process (the thread count is part of every stage's key).
    const std::string one_thread = std::string(INFLAB_BINARY) + " --quiet --threads 1 ";
    const fs::path ranked = dir.path / "index_ranks", single = dir.path / "index_one";
    auto r = test::run_command(one_thread + "launch -n 2 index build " + file.string() +
                               " --self-influence --out " + ranked.string() + cache);
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    REQUIRE(test::run_command(one_thread + "index build " + file.string() + " --self-influence --out " +
                              single.string() + cache)
                .exit_code == 0);
    const auto two = nlohmann::json::parse(inflab::read_file(ranked / "index.json"));
    CHECK(two["shard_rows"] == std::vector<std::int64_t>{100, 100});
    CHECK(two["fits"].size() == 1);
    CHECK(inflab::read_file(ranked / "examples.jsonl") == inflab::read_file(single / "examples.jsonl"));
    CHECK(inflab::read_file(ranked / "meta.json") == inflab::read_file(single / "meta.json"));
    for (std::size_t b = 0; b < rows.size(); ++b) {
      const std::string name = full.train[b].name;
      const auto joined =
          torch::cat({stored_block(ranked, "shards/00000", name), stored_block(ranked, "shards/00001", name)})
              .to(torch::kFloat);
      const auto whole = stored_block(single, "shards/00000", name).to(torch::kFloat);
      CHECK((joined - whole).abs().max().item<double>() <= 1e-3 * whole.abs().max().item<double>());
    }
    // Rank 0 computes every shard's self-influence (rows in index order) after both are written.
    const auto self_two = inflab::load_npy(ranked / "fits" / "datainf" / "self_influence.npy");
    const auto self_one = inflab::load_npy(single / "fits" / "datainf" / "self_influence.npy");
    REQUIRE(self_two.size(0) == 200);
    CHECK(torch::allclose(self_two, self_one, 1e-3));
    for (const std::string normalise : {"", " --normalise relatif"}) {
      const std::string request = " --validation 7 --top 3 --json" + normalise + cache;
      const auto [a, c] = first_queries(one_thread + "explain " + single.string() + request,
                                        one_thread + "explain " + ranked.string() + request);
      check_same_ranking(a, c, 3, 1e-3);
    }
  }

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
    fails("index build " + file.string() + " --dtype float8 --out " + (dir.path / "x").string() + cache,
          "expected float16, bfloat16 or float32");
    fails("index build " + file.string() + " --fit datainff --out " + (dir.path / "x").string() + cache,
          "datainff");
    // Computed with other kernels, the adapter would be another: the index no longer describes it.
    fails("--kernels native explain " + index.string() + " --validation 0" + cache, "rebuild it");
    // Another run's gradients into the same folder: refused, nothing overwritten.
    fails("index build " + file.string() + " --set projection.dim=64 --out " + index.string() + cache,
          "holds the index of other gradients");
    // A changed byte in a training block.
    const fs::path block = index / "shards" / "00000" / "fc1.lora_A.npy";
    std::string bytes = inflab::read_file(block);
    bytes[bytes.size() - 3] ^= 0x40;
    std::ofstream(block, std::ios::binary | std::ios::trunc) << bytes;
    fails("explain " + index.string() + " --validation 0" + cache, "fc1.lora_A.npy");
    // Shards over --hash-limit-mb are checked by their size only: the changed byte passes, a
    // shortened file does not.
    CHECK(test::run_command(bin + "explain " + index.string() + " --validation 0 --hash-limit-mb 0" + cache)
              .exit_code == 0);
    std::ofstream(block, std::ios::binary | std::ios::trunc) << bytes.substr(0, bytes.size() - 2);
    fails("explain " + index.string() + " --validation 0 --hash-limit-mb 0" + cache,
          fmt::format("fc1.lora_A.npy: {} bytes, expected {}", bytes.size() - 2, bytes.size()));
    fails("explain " + index.string() + " --validation 0 --hash-limit-mb -1" + cache, "--hash-limit-mb");
    std::ofstream(block, std::ios::binary | std::ios::trunc) << bytes;
    // Building the same index again checks every byte (explain checks large shards by size only).
    fails("index build " + file.string() + " --out " + index.string() + cache, "fc1.lora_A.npy");
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
  const auto [a, b] = first_queries(
      bin + "explain " + index.string() + " --validation 3" + common,
      bin + "explain " + index.string() + " --queries " + (dir.path / "queries.jsonl").string() + common);
  CHECK(b["answer"] == test_example["response"]);
  check_same_ranking(a, b, 5, 1e-3);

  SECTION("index append adds examples as a shard; fits made at query time stay on the run's rows") {
    // Training rows 0 and 1 again (their prompt and response): their appended rows must score as the
    // stored ones do, and DataInf fitted at query time must score the run's 20 rows as before.
    std::vector<nlohmann::json> again;
    std::ifstream train_lines(index / "examples.jsonl");
    for (std::string line; std::getline(train_lines, line);)
      if (auto j = nlohmann::json::parse(line); j["split"] == "train" && j["row"] < 2) again.push_back(j);
    REQUIRE(again.size() == 2);
    const fs::path more = dir.path / "more.jsonl";
    std::ofstream(more)
        << nlohmann::json{{"prompt", again[0]["text"]}, {"response", again[0]["response"]}}.dump() << "\n\n"
        << nlohmann::json{{"prompt", again[1]["text"]}, {"response", again[1]["response"]}}.dump() << "\n";
    auto scores_of = [&](const std::string& estimator) {
      auto r = test::run_command(bin + "explain " + index.string() +
                                 " --validation 3 --top 22 --json --estimator " + estimator + cache);
      INFO(r.output);
      REQUIRE(r.exit_code == 0);
      const auto query = nlohmann::json::parse(r.output)[0];  // a named object: the loop below reads into it
      std::map<std::int64_t, double> by_row;
      for (const auto& row : query["helpful"]) by_row[row["row"]] = row["score"];
      return std::pair{by_row, query};
    };
    const auto before = scores_of("datainf").first;
    REQUIRE(before.size() == 20);
    auto appended = test::run_command(bin + "index append " + index.string() + " " + more.string() + cache);
    INFO(appended.output);
    REQUIRE(appended.exit_code == 0);
    CHECK_THAT(appended.output, Contains("22 examples in 2 shard(s), 2 of them appended"));
    const auto record = nlohmann::json::parse(inflab::read_file(index / "index.json"));
    CHECK(record["shard_rows"] == std::vector<int>{20, 2});
    CHECK(record["appended"][0]["rows"] == 2);
    for (const std::string estimator : {"datainf", "hessian_free"}) {
      INFO(estimator);
      const auto [after, explained] = scores_of(estimator);
      REQUIRE(after.size() == 22);
      double largest = 0;
      for (const auto& [row, score] : after) largest = std::max(largest, std::abs(score));
      for (std::int64_t k : {0, 1})  // the same example appended: the same gradient (float16 both)
        CHECK(after.at(20 + k) == Approx(after.at(k)).margin(2e-3 * largest));
      if (estimator == "datainf")  // fitted on the run's 20 rows, as before the append
        for (const auto& [row, score] : before) CHECK(after.at(row) == Approx(score).epsilon(1e-6));
      for (const auto& row : explained["helpful"])
        if (row["row"] == 20) {
          CHECK(row["text"] == again[0]["text"]);
          CHECK(row["source"] == more.string() + ":1");
        } else if (row["row"] == 21) {
          CHECK(row["source"] == more.string() + ":3");
        }
    }
    // A line without a response is an error naming it, and the index is left as it was.
    const fs::path bad = dir.path / "bad.jsonl";
    std::ofstream(bad) << nlohmann::json{{"prompt", "What is 2 + 2?"}}.dump() << "\n";
    auto refused = test::run_command(bin + "index append " + index.string() + " " + bad.string() + cache);
    CHECK(refused.exit_code != 0);
    CHECK_THAT(refused.output, Contains(bad.string() + ":1") && Contains("response"));
    CHECK(nlohmann::json::parse(inflab::read_file(index / "index.json"))["shard_rows"] ==
          std::vector<int>{20, 2});
  }
}

TEST_CASE("explain a denoiser's image queries: a drawn image and the same image from a file score alike",
          "[index][cli][ddpm]") {
  BuiltIndex built(test::kTinyDenoiserExperiment + R"([projection]
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
        "one condition for all or one per row");
  fails("--image " + drawn, "--condition");
  fails("--condition sketch --prompt hello", "give one kind");
  // A denoiser's index takes images too: the drawn one under its condition, a row of its own.
  auto appended = test::run_command(bin + "index append " + index + " " + drawn + " --class sketch" + cache);
  INFO(appended.output);
  REQUIRE(appended.exit_code == 0);
  const auto record = nlohmann::json::parse(inflab::read_file(built.index / "index.json"));
  const auto& names = record["class_names"];
  const auto sketch = std::find(names.begin(), names.end(), "sketch") - names.begin();
  const auto meta = nlohmann::json::parse(inflab::read_file(built.index / "meta.json"))["train"];
  CHECK(meta["labels"].back() == sketch);
  CHECK(record["shard_rows"].back() == 1);
  auto listed = test::run_command(bin + "explain " + index + " --image " + drawn +
                                  " --condition sketch --top 100 --json" + cache);
  INFO(listed.output);
  REQUIRE(listed.exit_code == 0);
  const auto ranked = nlohmann::json::parse(listed.output);  // kept: the loop reads into it
  bool found = false;
  for (const auto& row : ranked[0]["helpful"])
    found |= row["row"] == meta["labels"].size() - 1 && row["class"] == "sketch";
  CHECK(found);  // ranked beside the run's rows, named by its condition
}

namespace {
// Copies of some of the run's own training inputs (the dataset's rows, in the index's order) in
// copies.npy, and the --class options giving each the label the fine-tuning saw (label noise
// included): their stored gradients are the oracle of what appending them stores.
std::string copy_training_rows(const BuiltIndex& built, const std::vector<std::int64_t>& picked,
                               const fs::path& copies) {
  auto config = inflab::load_experiment(built.file, {}, test::registry()).at(0);
  const auto splits =
      test::registry()
          .create_as<inflab::Dataset>(inflab::PluginKind::Dataset, "fashion_mnist", config.dataset.options)
          ->load();
  const auto meta = nlohmann::json::parse(inflab::read_file(built.index / "meta.json"))["train"];
  const auto record = nlohmann::json::parse(inflab::read_file(built.index / "index.json"));
  std::string classes;
  for (auto row : picked)
    classes += " --class '" +
               record["class_names"][meta["observed_labels"][row].get<std::size_t>()].get<std::string>() +
               "'";
  inflab::save_npy(copies, splits.train.inputs.index_select(0, torch::tensor(picked)).contiguous());
  return classes;
}

// The appended rows of shards first..last (in order) against the run's rows `picked` of shard 0.
void check_appended_copies(const fs::path& index, std::size_t first, std::size_t last,
                           const std::vector<std::int64_t>& picked) {
  const auto record = nlohmann::json::parse(inflab::read_file(index / "index.json"));
  for (const auto& block : record["blocks"]) {
    const std::string name = block["name"];
    INFO(name);
    const auto original = stored_block(index, "shards/00000", name).index_select(0, torch::tensor(picked));
    std::vector<torch::Tensor> shards;
    for (auto s = first; s <= last; ++s)
      shards.push_back(stored_block(index, fmt::format("shards/{:05d}", s), name));
    const auto added = torch::cat(shards);
    REQUIRE(added.sizes() == original.sizes());
    CHECK(added.to(torch::kFloat).allclose(original.to(torch::kFloat), 2e-3, 1e-4));  // both float16
  }
}
}  // namespace

TEST_CASE("index append: a classifier's inputs by class, a copy of a training row stores that row's gradient",
          "[index][cli]") {
  BuiltIndex built(kIndexedExperiment);
  const auto &bin = built.bin, &cache = built.cache;
  const auto& index = built.index;
  const auto meta = nlohmann::json::parse(inflab::read_file(index / "meta.json"))["train"];
  const std::vector<std::int64_t> picked{3, 17};
  const auto copies = built.dir.path / "copies.npy";
  const std::string classes = copy_training_rows(built, picked, copies);
  auto appended =
      test::run_command(bin + "index append " + index.string() + " " + copies.string() + classes + cache);
  INFO(appended.output);
  REQUIRE(appended.exit_code == 0);
  CHECK_THAT(appended.output, Contains("index of 202 examples in 2 shard(s), 2 of them appended"));
  const auto after = nlohmann::json::parse(inflab::read_file(index / "index.json"));
  CHECK(after["shard_rows"] == std::vector<std::int64_t>{200, 2});
  check_appended_copies(index, 1, 1, picked);
  // Their labels in meta.json and examples.jsonl, their file and row as the source.
  const auto meta_after = nlohmann::json::parse(inflab::read_file(index / "meta.json"))["train"];
  CHECK(meta_after["labels"][200] == meta["observed_labels"][3]);
  CHECK(meta_after["ids"][201] == 3'000'000'201LL);
  const std::string examples = inflab::read_file(index / "examples.jsonl");
  CHECK_THAT(examples, Contains(copies.string() + ":1"));
  // Bad input: named, and the index is left as it was.
  auto fails = [&](const std::string& arguments, const std::string& expected) {
    auto r = test::run_command(bin + "index append " + index.string() + " " + arguments + cache);
    INFO(arguments << "\n" << r.output);
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Contains(expected));
  };
  fails(copies.string(), "give the rows' class with --class NAME");
  fails(copies.string() + " --class nosuch", "not a class of the index's dataset");
  fails(copies.string() + " --class Bag --class Bag --class Bag", "has 2 rows and 3 --class");
  const auto wrong = built.dir.path / "wrong.npy";
  inflab::save_npy(wrong, torch::zeros({2, 10}));
  fails(wrong.string() + " --class Bag", "expected rows of 784 values");
  CHECK(nlohmann::json::parse(inflab::read_file(index / "index.json"))["shard_rows"] ==
        std::vector<std::int64_t>{200, 2});
}

TEST_CASE("index append by two ranks: a shard each, holding what one process appends", "[index][cli]") {
  // One thread per process, the build's and the ranks' (the thread count is part of the stage keys).
  BuiltIndex built(kIndexedExperiment, "--threads 1");
  const std::vector<std::int64_t> picked{3, 17, 42};
  const auto copies = built.dir.path / "copies.npy";
  const std::string classes = copy_training_rows(built, picked, copies);
  auto r = test::run_command(built.bin + "launch -n 2 index append " + built.index.string() + " " +
                             copies.string() + classes + built.cache);
  INFO(r.output);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Contains("index of 203 examples in 3 shard(s), 3 of them appended"));
  const auto after = nlohmann::json::parse(inflab::read_file(built.index / "index.json"));
  CHECK(after["shard_rows"] == std::vector<std::int64_t>{200, 1, 2});  // rank 0 the first row, rank 1 two
  CHECK(after["appended"].size() == 2);
  check_appended_copies(built.index, 1, 2, picked);
  const auto meta = nlohmann::json::parse(inflab::read_file(built.index / "meta.json"))["train"];
  CHECK(meta["ids"][202] == 3'000'000'202LL);
  // The index opens with every byte checked and ranks the appended rows.
  auto e = test::run_command(built.bin + "explain " + built.index.string() +
                             " --validation 0 --top 3 --json --hash-limit-mb 1000" + built.cache);
  INFO(e.output);
  CHECK(e.exit_code == 0);
}
