// End to end on real Fashion-MNIST data: experiment -> results, caching, resume, CLI.
#include <fmt/format.h>
#include <torch/torch.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "helpers.hpp"
#include "inflab/config.hpp"
#include "inflab/error.hpp"
#include "inflab/io.hpp"
#include "inflab/lora.hpp"
#include "inflab/pipeline.hpp"
#include "inflab/registry.hpp"
#include "inflab/runtime.hpp"

using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

const char* kExperiment = R"([experiment]
name = "e2e"
seed = 1

[dataset]
plugin = "fashion_mnist"
n_train = 300
n_validation = 100
n_pretrain = 2000
classes = [0, 1, 7, 8]
label_noise = 0.2

[model]
plugin = "mlp_lora"
hidden = [32]

[model.lora]
rank = 2

[training]
epochs = 4
learning_rate = 3e-3
pretrain_epochs = 2

[[estimator]]
plugin = "datainf"

[[estimator]]
plugin = "exact"
)";

// AUC by counting every (flipped, clean) pair: an oracle independent of inflab::roc_auc.
double pair_count_auc(const std::vector<double>& scores, const std::vector<int>& flipped) {
  double wins = 0, pairs = 0;
  for (std::size_t i = 0; i < scores.size(); ++i)
    for (std::size_t j = 0; j < scores.size(); ++j)
      if (flipped[i] && !flipped[j])
        pairs += 1, wins += scores[i] > scores[j] ? 1 : scores[i] == scores[j] ? 0.5 : 0;
  return wins / pairs;
}

std::map<std::string, double> read_metric(const fs::path& file, const std::string& metric) {
  std::map<std::string, double> out;
  std::stringstream lines(inflab::read_file(file));
  std::string line;
  while (std::getline(lines, line)) {
    auto a = line.find(','), b = line.rfind(',');
    if (line.substr(a + 1, b - a - 1) == metric) out[line.substr(0, a)] = std::stod(line.substr(b + 1));
  }
  return out;
}

}  // namespace

TEST_CASE("an experiment runs end to end, caches its stages and resumes", "[pipeline]") {
  test::TempDir dir;
  auto file = dir.write("e2e.toml", kExperiment);
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  inflab::RunPaths paths{dir.path / "results", dir.path / "cache"};
  auto config = inflab::load_experiment(file, {}, registry).at(0);

  auto first = inflab::run_experiment(config, registry, paths);
  CHECK_FALSE(first.stage_cached["gradients"]);
  CHECK_FALSE(first.stage_cached["finetune"]);
  fs::path run = dir.path / "results" / "e2e" / "run";
  for (const char* f : {"config.toml", "manifest.json", "metrics.csv", "scores.csv", "scores_datainf.npy",
                        "scores_exact.npy"})
    CHECK(fs::exists(run / f));
  // The manifest names the commit the library was built from: a real commit of this repository
  // (HEAD may have moved on since the build, so it is not compared with HEAD).
  const std::string built = inflab::git_commit();
  CHECK_THAT(inflab::read_file(run / "manifest.json"), Contains("\"git_commit\": \"" + built + "\""));
  if (test::run_command(std::string("git -C ") + INFLAB_SOURCE_DIR + " rev-parse HEAD").exit_code == 0)
    CHECK(test::run_command(std::string("git -C ") + INFLAB_SOURCE_DIR + " cat-file -e " +
                            built.substr(0, 12) + "^{commit}")
              .exit_code == 0);

  // The reported AUC equals a pair count over the written scores and flip flags.
  at::Tensor scores = inflab::load_npy(run / "scores_datainf.npy");
  REQUIRE(scores.sizes() == at::IntArrayRef({300}));
  std::vector<double> s(scores.data_ptr<float>(), scores.data_ptr<float>() + 300);
  std::vector<int> flipped;
  std::stringstream csv(inflab::read_file(run / "scores.csv"));
  std::string line;
  std::getline(csv, line);
  CHECK(line == "example_id,label,observed_label,flipped,datainf,exact");
  while (std::getline(csv, line)) {
    std::stringstream fields(line);
    std::string id, label, observed, flip;
    std::getline(fields, id, ','), std::getline(fields, label, ','), std::getline(fields, observed, ',');
    std::getline(fields, flip, ',');
    flipped.push_back(std::stoi(flip));
    CHECK((flip == "1") == (label != observed));
  }
  REQUIRE(std::count(flipped.begin(), flipped.end(), 1) == 60);  // exactly 20% of 300
  auto auc = read_metric(run / "metrics.csv", "auc");
  CHECK(auc["datainf"] == Approx(pair_count_auc(s, flipped)).epsilon(1e-6));
  CHECK(auc["datainf"] > 0.6);  // real signal: mislabeled examples are found well above chance

  // Re-running (without resume) hits the cache and reproduces the scores exactly.
  auto second = inflab::run_experiment(config, registry, paths, /*resume=*/false);
  CHECK(second.stage_cached["gradients"]);
  CHECK(inflab::load_npy(run / "scores_datainf.npy").equal(scores));

  // A finished run is skipped; an interrupted one (no metrics.csv) is redone from the cache.
  CHECK(inflab::run_experiment(config, registry, paths).skipped);
  fs::remove(run / "metrics.csv");
  auto resumed = inflab::run_experiment(config, registry, paths);
  CHECK_FALSE(resumed.skipped);
  CHECK(resumed.stage_cached["gradients"]);

  SECTION("a damaged cache entry is detected by its checksum and recomputed; stale temporaries go") {
    // One flipped byte in the middle of a cached gradient file, and in the fine-tuned adapters.
    auto flip_byte = [](const fs::path& file) {
      std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(static_cast<std::streamoff>(fs::file_size(file) / 2));
      f.put('\x5a');
    };
    fs::path gradients;
    for (const auto& e : fs::directory_iterator(dir.path / "cache" / "gradients")) gradients = e.path();
    flip_byte(gradients / "train" / "fc1.lora_A.npy");
    // A killed run's temporary (no process has this pid: above the kernel's pid limit).
    fs::create_directories(dir.path / "cache" / "gradients" / "x.tmp-99999999");
    auto repaired = inflab::run_experiment(config, registry, paths, /*resume=*/false);
    CHECK_FALSE(repaired.stage_cached["gradients"]);
    CHECK(repaired.stage_cached["finetune"]);
    CHECK(inflab::load_npy(run / "scores_datainf.npy").equal(scores));
    CHECK_FALSE(fs::exists(dir.path / "cache" / "gradients" / "x.tmp-99999999"));
    CHECK(inflab::verify_directory_checksums(gradients).empty());

    fs::path finetune;
    for (const auto& e : fs::directory_iterator(dir.path / "cache" / "finetune"))
      if (e.path().extension() == ".pt") finetune = e.path();
    flip_byte(finetune);
    CHECK_THAT(inflab::verify_checksum_sidecar(finetune), Contains("checksum and size"));
    fs::remove_all(gradients);  // so the damaged adapters would be used
    auto refit = inflab::run_experiment(config, registry, paths, /*resume=*/false);
    CHECK_FALSE(refit.stage_cached["finetune"]);
    CHECK(inflab::load_npy(run / "scores_datainf.npy").equal(scores));
  }

  // Another estimator option reuses the gradients; another LoRA rank does not.
  auto other_damping = inflab::load_experiment(file, {"evaluation.mode=pairwise"}, registry).at(0);
  auto key = [&](const char* stage, const inflab::ExperimentConfig& c) {
    return inflab::stage_key(stage, c);
  };
  CHECK(key("gradients", other_damping) == key("gradients", config));
  auto other_rank = inflab::load_experiment(file, {"model.lora.rank=3"}, registry).at(0);
  CHECK(key("gradients", other_rank) != key("gradients", config));
  CHECK(key("base", other_rank) == key("base", config));
  // Another configuration into the same folder: refused, then replaced when asked.
  CHECK_THROWS_WITH(inflab::run_experiment(other_rank, registry, paths),
                    Contains("holds a finished run of another configuration") && Contains("rank = 3") &&
                        Contains("--replace"));
  CHECK(inflab::load_npy(run / "scores_datainf.npy").equal(scores));  // the finished run is untouched
  auto rerun = inflab::run_experiment(other_rank, registry, paths, /*resume=*/true, /*replace=*/true);
  CHECK(rerun.stage_cached["pretrain"]);
  CHECK_FALSE(rerun.stage_cached["finetune"]);
  // More repeats reuse the finished seeds: [experiment] repeats is not part of a run's identity.
  auto two_seeds = inflab::load_experiment(file, {"experiment.repeats=2"}, registry);
  REQUIRE(two_seeds.size() == 2);
  CHECK_FALSE(inflab::run_experiment(two_seeds.at(0), registry, paths).skipped);
  auto three_seeds = inflab::load_experiment(file, {"experiment.repeats=3"}, registry);
  REQUIRE(three_seeds.at(0).run_name == two_seeds.at(0).run_name);
  CHECK(inflab::run_experiment(three_seeds.at(0), registry, paths).skipped);
  // ... but any other key still is.
  auto three_other = inflab::load_experiment(file, {"experiment.repeats=3", "model.lora.rank=3"}, registry);
  CHECK_THROWS_WITH(inflab::run_experiment(three_other.at(0), registry, paths),
                    Contains("another configuration") && Contains("rank = 3"));
}

// Spearman correlation by sorting with mid-ranks for ties: an oracle independent of inflab::spearman.
double rank_correlation(const std::vector<double>& x, const std::vector<double>& y) {
  auto ranks = [](const std::vector<double>& v) {
    std::vector<double> r(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) {
      double below = 0, equal = 0;
      for (double w : v) below += w < v[i], equal += w == v[i];
      r[i] = below + (equal + 1) / 2;
    }
    return r;
  };
  auto rx = ranks(x), ry = ranks(y);
  const double n = static_cast<double>(x.size()), mean = (n + 1) / 2;
  double sxy = 0, sxx = 0, syy = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    sxy += (rx[i] - mean) * (ry[i] - mean), sxx += (rx[i] - mean) * (rx[i] - mean),
        syy += (ry[i] - mean) * (ry[i] - mean);
  return sxy / std::sqrt(sxx * syy);
}

TEST_CASE("ground truth retrains on subsets and resumes, LDS equals a hand-computed rank correlation",
          "[pipeline][lds]") {
  test::TempDir dir;
  const std::string text =
      std::string(kExperiment) +
      "\n[evaluation]\nmode = \"pairwise\"\nmetrics = [\"lds\"]\n\n[ground_truth]\nsubsets = 6\n";
  auto file = dir.write("lds.toml", test::replace(text, "n_validation = 100", "n_validation = 20"));
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  inflab::RunPaths paths{dir.path / "results", dir.path / "cache"};
  auto config = inflab::load_experiment(file, {}, registry).at(0);
  auto first = inflab::run_experiment(config, registry, paths);
  CHECK_FALSE(first.stage_cached["ground_truth"]);
  const fs::path run = dir.path / "results" / "e2e" / "run";
  const fs::path truth_dir = dir.path / "cache" / "ground_truth" / inflab::stage_key("ground_truth", config);

  // The subsets as the stage stored them: a mask of 150 of the 300 examples and 20 query losses each.
  std::vector<at::Tensor> masks, losses;
  for (int m = 0; m < 6; ++m) {
    std::vector<at::Tensor> entry;
    torch::load(entry, (truth_dir / fmt::format("subset_{:05d}.pt", m)).string());
    REQUIRE(entry.size() == 2);
    CHECK(entry[0].sum().item<std::int64_t>() == 150);
    masks.push_back(entry[0].to(torch::kDouble)), losses.push_back(entry[1]);
  }
  CHECK_FALSE(masks[0].equal(masks[1]));  // other subsets, other losses
  CHECK_FALSE(losses[0].equal(losses[1]));

  // LDS: per query, rank correlation over subsets of (sum of the subset's scores, query loss); mean.
  auto lds = read_metric(run / "metrics.csv", "lds");
  for (const char* estimator : {"datainf", "exact"}) {
    at::Tensor scores = inflab::load_npy(run / fmt::format("scores_{}.npy", estimator)).to(torch::kDouble);
    REQUIRE(scores.sizes() == at::IntArrayRef({300, 20}));
    double total = 0;
    for (std::int64_t q = 0; q < 20; ++q) {
      std::vector<double> predicted, measured;
      for (int m = 0; m < 6; ++m) {
        predicted.push_back((masks[m] * scores.select(1, q)).sum().item<double>());
        measured.push_back(losses[m][q].item<double>());
      }
      total += rank_correlation(predicted, measured);
    }
    INFO(estimator);
    CHECK(lds[estimator] == Approx(total / 20).margin(1e-9));
  }
  // The fine-tuned classifier's accuracies are recorded beside the estimators.
  const auto model = read_metric(run / "metrics.csv", "validation_accuracy");
  REQUIRE(model.count("model"));
  CHECK(model.at("model") > 0.5);  // 4 classes: well above chance

  // An interrupted stage resumes: the subsets still on disk are reused, the rest recomputed alike.
  fs::remove(truth_dir / "subset_00002.pt");
  fs::remove(truth_dir / "subset_00004.pt");
  auto resumed = inflab::run_experiment(config, registry, paths, /*resume=*/false);
  CHECK_FALSE(resumed.stage_cached["ground_truth"]);
  CHECK(read_metric(run / "metrics.csv", "lds") == lds);
  CHECK(inflab::run_experiment(config, registry, paths, /*resume=*/false).stage_cached["ground_truth"]);

  // With every example in every subset, each retraining is the fine-tuning itself: the query losses
  // equal the fine-tuned model's (its mean validation loss, measured by the gradients stage).
  auto whole =
      inflab::load_experiment(file, {"ground_truth.fraction=1.0", "ground_truth.subsets=5"}, registry).at(0);
  auto outcome = inflab::run_experiment(whole, registry, paths, /*resume=*/true, /*replace=*/true);
  const fs::path whole_dir = dir.path / "cache" / "ground_truth" / inflab::stage_key("ground_truth", whole);
  for (int m = 0; m < 5; ++m) {
    std::vector<at::Tensor> entry;
    torch::load(entry, (whole_dir / fmt::format("subset_{:05d}.pt", m)).string());
    INFO("subset " << m);
    CHECK(entry[1].mean().item<double>() ==
          Approx(read_metric(run / "metrics.csv", "validation_loss").at("model")).epsilon(1e-6));
  }
}

TEST_CASE("leave-one-out retrains without each estimator's extreme examples, loo recomputed by hand",
          "[pipeline][loo]") {
  test::TempDir dir;
  const std::string text = std::string(kExperiment) +
                           "\n[evaluation]\nmetrics = [\"auc\", \"loo\"]\n\n[leave_one_out]\nexamples = 3\n"
                           "repeats = 2\n";
  auto file = dir.write("loo.toml", text);
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  inflab::RunPaths paths{dir.path / "results", dir.path / "cache"};
  auto config = inflab::load_experiment(file, {}, registry).at(0);
  CHECK_FALSE(inflab::run_experiment(config, registry, paths).stage_cached["leave_one_out"]);
  const fs::path run = dir.path / "results" / "e2e" / "run";
  const fs::path loo_dir = dir.path / "cache" / "leave_one_out" / inflab::stage_key("leave_one_out", config);

  // The rows left out: each estimator's 3 lowest and 3 highest scores, recomputed from its file.
  std::map<std::string, at::Tensor> scores;
  std::set<std::int64_t> expected_rows;
  for (const char* estimator : {"datainf", "exact"}) {
    scores[estimator] = inflab::load_npy(run / fmt::format("scores_{}.npy", estimator)).to(torch::kDouble);
    auto order = std::get<1>(scores[estimator].sort(c10::optional<bool>(true), /*dim=*/0));
    for (std::int64_t k = 0; k < 3; ++k)
      expected_rows.insert(order[k].item<std::int64_t>()),
          expected_rows.insert(order[299 - k].item<std::int64_t>());
  }
  std::vector<std::int64_t> ids;  // example id of each training row, from examples.jsonl
  {
    std::stringstream lines(inflab::read_file(run / "examples.jsonl"));
    std::string line;
    while (std::getline(lines, line)) {
      auto j = nlohmann::json::parse(line);
      if (j["split"] == "train") ids.push_back(j["id"].get<std::int64_t>());
    }
  }
  REQUIRE(ids.size() == 300);
  std::vector<std::int64_t> rows;
  std::vector<double> measured;
  std::vector<std::array<double, 2>> per_seed;
  {
    std::stringstream lines(inflab::read_file(run / "leave_one_out.csv"));
    std::string line;
    std::getline(lines, line);
    CHECK(line == "row,measured_change,change_seed0,change_seed1,datainf,exact");
    while (std::getline(lines, line)) {
      std::stringstream fields(line);
      std::string row, change, seed0, seed1;
      std::getline(fields, row, ','), std::getline(fields, change, ',');
      std::getline(fields, seed0, ','), std::getline(fields, seed1, ',');
      rows.push_back(std::stoll(row)), measured.push_back(std::stod(change));
      per_seed.push_back({std::stod(seed0), std::stod(seed1)});
    }
  }
  CHECK(std::set<std::int64_t>(rows.begin(), rows.end()) == expected_rows);

  // Each measured change from the stored losses: mean over the 2 seeds of (mean query loss
  // without the row) - (mean query loss of that seed's full fine-tuning).
  auto mean_loss = [&](const std::string& name) {
    std::vector<at::Tensor> entry;
    torch::load(entry, (loo_dir / (name + ".pt")).string());
    REQUIRE(entry.size() == 1);
    REQUIRE(entry[0].size(0) == 100);
    return entry[0].mean().item<double>();
  };
  const double full0 = mean_loss("full_r0"), full1 = mean_loss("full_r1");
  CHECK(full0 != full1);  // the second seed redraws initialisation and batch order
  // Seed 0 is the fine-tuning itself: its loss is the fine-tuned model's validation loss.
  CHECK(full0 == Approx(read_metric(run / "metrics.csv", "validation_loss").at("model")).epsilon(1e-6));
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto id = ids[static_cast<std::size_t>(rows[i])];
    const double without0 = mean_loss(fmt::format("without_{}_r0", id));
    const double without1 = mean_loss(fmt::format("without_{}_r1", id));
    INFO("row " << rows[i]);
    CHECK(without0 != full0);  // the example was left out
    CHECK(measured[i] == Approx(((without0 - full0) + (without1 - full1)) / 2).margin(1e-7));
    CHECK(per_seed[i][0] == Approx(without0 - full0).margin(1e-7));
    CHECK(per_seed[i][1] == Approx(without1 - full1).margin(1e-7));
  }
  // loo: Pearson correlation over the rows of -score with the measured change; loo_sign: the
  // share of the estimator's own 6 picks whose change has the sign -score predicts.
  const auto loo = read_metric(run / "metrics.csv", "loo");
  const auto sign = read_metric(run / "metrics.csv", "loo_sign");
  for (const char* estimator : {"datainf", "exact"}) {
    std::vector<double> predicted;
    for (auto row : rows) predicted.push_back(-scores[estimator][row].item<double>());
    const double n = static_cast<double>(rows.size());
    double mp = 0, mm = 0;
    for (std::size_t i = 0; i < rows.size(); ++i) mp += predicted[i] / n, mm += measured[i] / n;
    double sxy = 0, sxx = 0, syy = 0;
    for (std::size_t i = 0; i < rows.size(); ++i)
      sxy += (predicted[i] - mp) * (measured[i] - mm), sxx += (predicted[i] - mp) * (predicted[i] - mp),
          syy += (measured[i] - mm) * (measured[i] - mm);
    INFO(estimator);
    CHECK(loo.at(estimator) == Approx(sxy / std::sqrt(sxx * syy)).margin(1e-6));
    auto order = std::get<1>(scores[estimator].sort(c10::optional<bool>(true), /*dim=*/0));
    double agree = 0;
    for (std::int64_t k : {0, 1, 2, 297, 298, 299}) {
      const auto row = order[k].item<std::int64_t>();
      const auto at = std::find(rows.begin(), rows.end(), row) - rows.begin();
      agree += (predicted[static_cast<std::size_t>(at)] > 0) == (measured[static_cast<std::size_t>(at)] > 0);
    }
    CHECK(sign.at(estimator) == Approx(agree / 6));
  }

  // Resumable: a removed result is recomputed alike, the others reused.
  fs::remove(loo_dir / fmt::format("without_{}_r1.pt", ids[static_cast<std::size_t>(rows[0])]));
  auto resumed = inflab::run_experiment(config, registry, paths, /*resume=*/false);
  CHECK_FALSE(resumed.stage_cached["leave_one_out"]);
  CHECK(read_metric(run / "metrics.csv", "loo") == loo);
  CHECK(inflab::run_experiment(config, registry, paths, /*resume=*/false).stage_cached["leave_one_out"]);

  // The section without the metric, or a count below one, is an error naming the key.
  auto orphan = dir.write("orphan.toml", std::string(kExperiment) + "\n[leave_one_out]\nexamples = 2\n");
  CHECK_THROWS_WITH(inflab::load_experiment(orphan, {}, registry),
                    Contains("orphan.toml:") && Contains("only used by metric \"loo\""));
  CHECK_THROWS_WITH(inflab::load_experiment(file, {"leave_one_out.repeats=0"}, registry),
                    Contains("leave_one_out.repeats") && Contains("an integer in [1,"));
}

TEST_CASE("a faulty estimator plugin ends the run with an error naming it, earlier outputs stay",
          "[pipeline][cli]") {
  test::TempDir dir;
  auto file = dir.write("e2e.toml", kExperiment);
  std::string bin =
      std::string(INFLAB_BINARY) + " --quiet --plugin-path " + INFLAB_BUILD_DIR + "/test_plugins/faulty ";
  std::string common =
      " --out " + (dir.path / "results").string() + " --cache " + (dir.path / "cache").string();
  fs::path run = dir.path / "results" / "e2e" / "run";
  struct Case {
    const char* fault;
    const char* message;
  };
  for (auto [fault, message] : {Case{"throw", "simulated failure in fit"},
                                Case{"wrong_shape", "the estimator returned a 2-d tensor of shape [1, 1]"},
                                Case{"nan", "inverse product has NaN or Inf values"}}) {
    INFO(fault);
    auto r = test::run_command(bin + "run " + file.string() + common +
                               " --set 'estimator=[{plugin=\"datainf\"}, "
                               "{plugin=\"exact\"}, {plugin=\"faulty_estimator\", fault=\"" +
                               fault + "\"}]'");
    CHECK(r.exit_code == 2);
    CHECK_THAT(r.output, Contains("estimator 'faulty_estimator' (estimator plugin 'faulty_estimator' "
                                  "(faulty_estimator.so)") &&
                             Contains(message));
    // The estimators before it wrote their scores; the run is not marked finished.
    CHECK(fs::exists(run / "scores_datainf.npy"));
    CHECK(fs::exists(run / "scores_exact.npy"));
    CHECK_FALSE(fs::exists(run / "metrics.csv"));
  }
  // Without the faulty plugin the same command finishes from the caches.
  auto ok = test::run_command(bin + "run " + file.string() + common +
                              " --set 'estimator=[{plugin=\"datainf\"}, {plugin=\"exact\"}]'");
  CHECK(ok.exit_code == 0);
  CHECK(fs::exists(run / "metrics.csv"));
}

TEST_CASE("`inflab gradients` then `inflab score` reproduce the run's scores", "[pipeline][cli]") {
  test::TempDir dir;
  auto file = dir.write("e2e.toml", kExperiment);
  std::string bin = std::string(INFLAB_BINARY) + " --quiet ";
  std::string cache = " --cache " + (dir.path / "cache").string();
  auto g = test::run_command(bin + "gradients " + file.string() + " --out " + (dir.path / "grads").string() +
                             cache + " --safetensors");
  REQUIRE(g.exit_code == 0);
  CHECK(fs::exists(dir.path / "grads" / "blocks.json"));
  CHECK(fs::exists(dir.path / "grads" / "train" / "fc1.lora_A.npy"));
  at::Tensor a = inflab::load_npy(dir.path / "grads" / "train" / "fc1.lora_A.npy");
  CHECK(a.sizes() == at::IntArrayRef({300, 2 * 784}));

  SECTION("the safetensors export holds the same values (parsed by hand, per the format)") {
    std::string bytes = inflab::read_file(dir.path / "grads" / "gradients.safetensors");
    REQUIRE(bytes.size() > 8);
    std::uint64_t length = 0;
    for (int b = 7; b >= 0; --b) length = (length << 8) | static_cast<unsigned char>(bytes[b]);
    CHECK(length % 8 == 0);
    auto header = nlohmann::json::parse(bytes.substr(8, length));
    CHECK(header["__metadata__"]["format"] == "inflab-gradient-store");
    auto entry = header["train/fc1.lora_A"];
    CHECK(entry["dtype"] == "F32");
    CHECK(entry["shape"] == nlohmann::json::array({300, 2 * 784}));
    std::size_t begin = entry["data_offsets"][0], end = entry["data_offsets"][1];
    REQUIRE(end - begin == static_cast<std::size_t>(a.nbytes()));
    CHECK(std::memcmp(bytes.data() + 8 + length + begin, a.data_ptr(), a.nbytes()) == 0);
    CHECK(header.contains("query/fc2.lora_B"));
    CHECK(header.contains("factors/fc1.lora_A.activation"));
    CHECK(header["train_flipped"]["shape"] == nlohmann::json::array({300}));
  }

  auto r =
      test::run_command(bin + "run " + file.string() + " --out " + (dir.path / "results").string() + cache);
  REQUIRE(r.exit_code == 0);
  CHECK_THAT(r.output, Contains("datainf") && Contains("AUC"));
  auto s = test::run_command(bin + "score --gradients " + (dir.path / "grads").string() +
                             " --estimator exact --out " + (dir.path / "s.npy").string());
  REQUIRE(s.exit_code == 0);
  at::Tensor from_cli = inflab::load_npy(dir.path / "s.npy");
  at::Tensor from_run = inflab::load_npy(dir.path / "results" / "e2e" / "run" / "scores_exact.npy");
  CHECK(torch::allclose(from_cli, from_run, 1e-5, 1e-7));

  // evaluation.blocks in a run selects the same blocks as `score --blocks`.
  auto rb =
      test::run_command(bin + "run " + file.string() + " --set 'evaluation.blocks=[\"*.lora_B\"]' --out " +
                        (dir.path / "results_b").string() + cache);
  REQUIRE(rb.exit_code == 0);
  auto sb =
      test::run_command(bin + "score --gradients " + (dir.path / "grads").string() +
                        " --estimator exact --blocks '*.lora_B' --out " + (dir.path / "sb.npy").string());
  REQUIRE(sb.exit_code == 0);
  at::Tensor b_cli = inflab::load_npy(dir.path / "sb.npy");
  CHECK(torch::allclose(b_cli, inflab::load_npy(dir.path / "results_b" / "e2e" / "run" / "scores_exact.npy"),
                        1e-5, 1e-7));
  CHECK_FALSE(torch::allclose(b_cli, from_cli, 1e-3, 1e-6));
}

TEST_CASE("`inflab score` works on a hand-written gradient directory and checks shapes", "[pipeline][cli]") {
  test::TempDir dir;
  fs::create_directories(dir.path / "g" / "train");
  fs::create_directories(dir.path / "g" / "query");
  // What a numpy user writes: float64 arrays are accepted too.
  auto train = torch::tensor({{1.0, 2.0}, {0.0, -1.0}, {3.0, 1.0}}, torch::kDouble);
  auto query = torch::tensor({{1.0, 1.0}, {2.0, 0.0}}, torch::kDouble);
  inflab::save_npy(dir.path / "g" / "train" / "w.npy", train);
  inflab::save_npy(dir.path / "g" / "query" / "w.npy", query);
  dir.write("g/blocks.json", R"({"blocks": [{"name": "w", "dim": 2}]})");
  std::string bin = std::string(INFLAB_BINARY) + " score --gradients " + (dir.path / "g").string() +
                    " --estimator hessian_free";
  auto pairwise = test::run_command(bin + " --mode pairwise --out " + (dir.path / "p.npy").string());
  REQUIRE(pairwise.exit_code == 0);
  // -g_k . v_q by hand: rows k, columns q.
  auto expected = torch::tensor({{-3.0, -2.0}, {1.0, 0.0}, {-4.0, -6.0}}, torch::kFloat);
  CHECK(inflab::load_npy(dir.path / "p.npy").equal(expected));
  auto aggregate = test::run_command(bin + " --out " + (dir.path / "a.npy").string());
  REQUIRE(aggregate.exit_code == 0);
  CHECK(torch::allclose(inflab::load_npy(dir.path / "a.npy"), expected.mean(1)));

  // --blocks: only matching blocks count. Oracle by hand with a second block "v" added.
  inflab::save_npy(dir.path / "g" / "train" / "v.npy",
                   torch::tensor({{10.0}, {20.0}, {30.0}}, torch::kDouble));
  inflab::save_npy(dir.path / "g" / "query" / "v.npy", torch::tensor({{1.0}, {-1.0}}, torch::kDouble));
  dir.write("g/blocks.json", R"({"blocks": [{"name": "w", "dim": 2}, {"name": "v", "dim": 1}]})");
  auto both = test::run_command(bin + " --mode pairwise --out " + (dir.path / "both.npy").string());
  REQUIRE(both.exit_code == 0);
  auto v_only = torch::tensor({{-10.0, 10.0}, {-20.0, 20.0}, {-30.0, 30.0}}, torch::kFloat);
  CHECK(inflab::load_npy(dir.path / "both.npy").equal(expected + v_only));
  auto only_w =
      test::run_command(bin + " --mode pairwise --blocks 'w*' --out " + (dir.path / "w.npy").string());
  REQUIRE(only_w.exit_code == 0);
  CHECK(inflab::load_npy(dir.path / "w.npy").equal(expected));
  auto typo = test::run_command(bin + " --blocks 'x*' --out " + (dir.path / "x.npy").string());
  CHECK(typo.exit_code == 2);
  CHECK_THAT(typo.output, Contains("'x*' matches none of the blocks: w, v"));

  dir.write("g/blocks.json", R"({"blocks": [{"name": "w", "dim": 3}]})");
  auto wrong = test::run_command(bin + " --out " + (dir.path / "x.npy").string());
  CHECK(wrong.exit_code == 2);
  CHECK_THAT(wrong.output, Contains("train/w.npy") && Contains("expected shape (n, 3)") && Contains("3 x 2"));
  auto bad_option = test::run_command(bin + " --set dampng=1 --out " + (dir.path / "x.npy").string());
  CHECK(bad_option.exit_code == 2);

  // NaN in a gradient file: refused by name and row, no scores written.
  dir.write("g/blocks.json", R"({"blocks": [{"name": "w", "dim": 2}]})");
  auto with_nan = train.clone();
  with_nan[1][0] = std::numeric_limits<double>::quiet_NaN();
  inflab::save_npy(dir.path / "g" / "train" / "w.npy", with_nan);
  auto nan_run = test::run_command(bin + " --out " + (dir.path / "nan.npy").string());
  CHECK(nan_run.exit_code == 2);
  CHECK_THAT(nan_run.output, Contains("train/w.npy") && Contains("NaN or Inf") && Contains("row 1"));
  CHECK_FALSE(fs::exists(dir.path / "nan.npy"));
}

namespace {
std::vector<at::Tensor> adapters_of(inflab::Model& model) {
  std::vector<at::Tensor> out;
  for (auto* layer : model.lora_layers())
    if (layer->has_adapter()) out.push_back(layer->lora_a().clone()), out.push_back(layer->lora_b().clone());
  return out;
}
bool same_tensors(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!a[i].allclose(b[i], 1e-6, 1e-7)) return false;
  return true;
}
}  // namespace

TEST_CASE("model.adapter_from scores another experiment's adapter, found by its fine-tuning's key",
          "[pipeline][adapter_from]") {
  test::TempDir dir;
  const std::string source_text = test::replace(test::replace(kExperiment, "n_train = 300", "n_train = 120"),
                                                "n_pretrain = 2000", "n_pretrain = 500");
  const auto source_file = dir.write("source.toml", source_text);
  // The borrower: the same data without label noise (so the same pretrained base), and no fine-tuning of its
  // own.
  const std::string own_text = test::replace(source_text, "label_noise = 0.2", "label_noise = 0.0");
  const std::string borrower_text =
      test::replace(own_text, "hidden = [32]", "hidden = [32]\nadapter_from = \"source.toml\"");
  const auto borrower_file = dir.write("borrower.toml", borrower_text);
  const auto own_file = dir.write("own.toml", own_text);
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  inflab::RunPaths paths{dir.path / "results", dir.path / "cache"};
  auto borrower = inflab::load_experiment(borrower_file, {}, registry).at(0);
  REQUIRE(borrower.adapter_source);

  // Nothing is cached: the borrower fine-tunes the source's adapter on the source's data first.
  std::vector<at::Tensor> borrowed, fresh, own;
  borrowed = adapters_of(*inflab::finetuned_model(borrower, registry, paths).model);
  auto source = inflab::load_experiment(source_file, {}, registry).at(0);
  CHECK(fs::exists(paths.cache_root / "finetune" / (inflab::stage_key("finetune", source) + ".pt")));
  // Oracle: the source fine-tuned on its own in an empty cache; and the borrower's data trains another
  // adapter.
  fresh = adapters_of(
      *inflab::finetuned_model(source, registry, {dir.path / "results", dir.path / "cache2"}).model);
  own = adapters_of(
      *inflab::finetuned_model(inflab::load_experiment(own_file, {}, registry).at(0), registry, paths).model);
  CHECK(same_tensors(borrowed, fresh));
  CHECK_FALSE(same_tensors(borrowed, own));

  // A run's config.toml (the resolved configuration, elsewhere) loads without the source's file, has
  // the same keys and gives the same adapter; with the cache emptied it says what to do.
  fs::create_directories(dir.path / "run");
  auto resolved =
      inflab::load_experiment(dir.write("run/config.toml", borrower.resolved_toml), {}, registry).at(0);
  CHECK_FALSE(resolved.adapter_source);
  CHECK(resolved.resolved_toml == borrower.resolved_toml);
  CHECK(same_tensors(adapters_of(*inflab::finetuned_model(resolved, registry, paths).model), borrowed));
  CHECK_THROWS_WITH(inflab::finetuned_model(resolved, registry, {dir.path / "results", dir.path / "cache3"}),
                    Contains("is not in the cache") && Contains("source.toml"));

  // The borrower's keys follow the source's fine-tuning: its seed picks the source's run, and a change
  // to the source's training changes every borrower stage after the data.
  auto seeded = inflab::load_experiment(borrower_file, {"experiment.seed=5"}, registry).at(0);
  auto source5 = inflab::load_experiment(source_file, {"experiment.seed=5"}, registry).at(0);
  CHECK_THAT(seeded.resolved_toml, Contains(inflab::stage_key("finetune", source5)));
  // The command's --set reaches the source too (both models must agree), its sweeps do not.
  auto shrunk =
      inflab::load_experiment(borrower_file, {"model.lora.rank=4", "sweep.experiment.seed=[0, 1]"}, registry);
  REQUIRE(shrunk.size() == 2);
  auto source_rank4 =
      inflab::load_experiment(source_file, {"model.lora.rank=4", "experiment.seed=1"}, registry).at(0);
  CHECK_THAT(shrunk[1].resolved_toml, Contains(inflab::stage_key("finetune", source_rank4)));
  // adapter_from given on the command line borrows the same way (and is not passed on to the source).
  auto by_set = inflab::load_experiment(own_file, {"model.adapter_from=\"source.toml\""}, registry).at(0);
  CHECK(by_set.adapter_source);
  CHECK(inflab::stage_key("gradients", by_set) == inflab::stage_key("gradients", borrower));
  const std::string finetune_key = inflab::stage_key("finetune", borrower),
                    gradients_key = inflab::stage_key("gradients", borrower);
  dir.write("source.toml", test::replace(source_text, "learning_rate = 3e-3", "learning_rate = 1e-3"));
  auto changed = inflab::load_experiment(borrower_file, {}, registry).at(0);
  CHECK(inflab::stage_key("finetune", changed) != finetune_key);
  CHECK(inflab::stage_key("gradients", changed) != gradients_key);
  CHECK(inflab::stage_key("base", changed) == inflab::stage_key("base", borrower));
  dir.write("source.toml", source_text);

  // Each misuse is an error naming the key and what is wrong.
  auto fails_with = [&](const std::string& name, const std::string& text, const std::string& message) {
    INFO(name);
    CHECK_THROWS_WITH(inflab::load_experiment(dir.write(name, text), {}, registry),
                      Contains("model.adapter_from") && Contains(message));
  };
  fails_with("rank.toml", test::replace(borrower_text, "rank = 2", "rank = 4"),
             "model.lora.rank is 4 here and 2 there");
  fails_with("missing.toml", test::replace(borrower_text, "\"source.toml\"", "\"nope.toml\""),
             "no such file");
  fails_with("self.toml", test::replace(borrower_text, "\"source.toml\"", "\"self.toml\""),
             "names this experiment itself");
  fails_with("chain.toml", test::replace(borrower_text, "\"source.toml\"", "\"borrower.toml\""),
             "takes its own adapter from another experiment");
  fails_with("key_alone.toml",
             test::replace(own_text, "hidden = [32]", "hidden = [32]\nadapter_key = \"abc\""),
             "found without model.adapter_from");
  fails_with("lds.toml", borrower_text + "\n[evaluation]\nmetrics = [\"auc\", \"lds\"]\n",
             "metric \"lds\" retrains the LoRA");
  dir.write("swept.toml", source_text + "\n[sweep]\ntraining.learning_rate = [1e-3, 3e-3]\n");
  fails_with("from_swept.toml", test::replace(borrower_text, "\"source.toml\"", "\"swept.toml\""),
             "fine-tune 2 different adapters");
  // A base pretrained on other data would not match the adapter: refused when the run starts.
  auto other_base = inflab::load_experiment(
      dir.write("other_base.toml", test::replace(borrower_text, "n_pretrain = 500", "n_pretrain = 400")), {},
      registry);
  CHECK_THROWS_WITH(inflab::finetuned_model(other_base.at(0), registry, paths),
                    Contains("pretrains its base"));
}

TEST_CASE("a store over its memory budget is memory-mapped and gives identical scores, float16 stays close",
          "[pipeline][gradients]") {
  test::TempDir dir;
  auto file = dir.write("e2e.toml", kExperiment);
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  inflab::RunPaths paths{dir.path / "results", dir.path / "cache"};
  auto in_memory = inflab::load_experiment(file, {}, registry).at(0);
  auto on_disk = inflab::load_experiment(file, {"evaluation.gradient_memory_mb=0.01"}, registry).at(0);
  auto half = inflab::load_experiment(file, {"evaluation.gradient_dtype=\"float16\""}, registry).at(0);
  // The budget does not change the gradients, so it shares their cache entry; the dtype does not.
  CHECK(inflab::stage_key("gradients", on_disk) == inflab::stage_key("gradients", in_memory));
  CHECK(inflab::stage_key("gradients", half) != inflab::stage_key("gradients", in_memory));

  auto reference = inflab::prepare_gradients(in_memory, registry, paths);
  inflab::RunPaths fresh{dir.path / "results", dir.path / "cache2"};
  auto mapped = inflab::prepare_gradients(on_disk, registry, fresh);
  REQUIRE(mapped.train.size() == reference.train.size());
  for (std::size_t b = 0; b < mapped.train.size(); ++b)
    CHECK(mapped.train[b].values.equal(reference.train[b].values));
  // What was written is a plain .npy with the documented shape.
  auto hash = inflab::stage_key("gradients", on_disk);
  at::Tensor file_a = inflab::load_npy(dir.path / "cache2" / "gradients" / hash / "train" / "fc1.lora_A.npy");
  CHECK(file_a.equal(reference.train[0].values));

  auto halves = inflab::prepare_gradients(half, registry, fresh);
  CHECK(halves.train[0].values.scalar_type() == c10::kFloat);  // arithmetic stays float32
  double error = (halves.train[0].values - reference.train[0].values).norm().item<double>() /
                 reference.train[0].values.norm().item<double>();
  CHECK(error < 1e-3);
  CHECK(error > 0);  // it really was stored in 16 bits
}

TEST_CASE("K-FAC/EK-FAC fits are cached by gradients and options and give identical scores",
          "[pipeline][kfac]") {
  test::TempDir dir;
  std::string text = kExperiment;
  text.replace(text.find("plugin = \"exact\""), 16, "plugin = \"ekfac\"");
  auto file = dir.write("fit.toml", text);
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  inflab::RunPaths paths{dir.path / "results", dir.path / "cache"};
  auto config = inflab::load_experiment(file, {}, registry).at(0);
  auto first = inflab::run_experiment(config, registry, paths);
  CHECK_FALSE(first.stage_cached["fit:ekfac"]);
  CHECK_FALSE(first.stage_cached["fit:datainf"]);  // DataInf has nothing worth caching
  at::Tensor scores = inflab::load_npy(first.directory / "scores_ekfac.npy");
  auto second = inflab::run_experiment(config, registry, paths, /*resume=*/false);
  CHECK(second.stage_cached["fit:ekfac"]);
  CHECK(inflab::load_npy(second.directory / "scores_ekfac.npy").equal(scores));
  // Other damping: another fit.
  auto damped = inflab::load_experiment(file, {}, registry).at(0);
  damped.estimators[1].options.set("damping_scale", 0.5);
  auto third = inflab::run_experiment(damped, registry, paths, /*resume=*/false, /*replace=*/true);
  CHECK_FALSE(third.stage_cached["fit:ekfac"]);
}

TEST_CASE("TracIn sums learning rate x gradient dot products over the fine-tuning's checkpoints",
          "[pipeline][tracin]") {
  test::TempDir dir;
  const std::string estimators =
      "[[estimator]]\nplugin = \"hessian_free\"\n\n[[estimator]]\nplugin = \"tracin\"\n";
  const std::string base = test::replace(
      kExperiment, "[[estimator]]\nplugin = \"datainf\"\n\n[[estimator]]\nplugin = \"exact\"\n", estimators);
  REQUIRE(base != kExperiment);
  auto file = dir.write("tracin.toml", base + "\n[checkpoints]\ncount = 2\n");
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  inflab::RunPaths paths{dir.path / "results", dir.path / "cache"};
  // Four epochs, checkpoints after epochs 2 and 4 (the final adapter).
  inflab::run_experiment(inflab::load_experiment(file, {}, registry).at(0), registry, paths);
  const fs::path run = dir.path / "results" / "e2e" / "run";
  const at::Tensor tracin = inflab::load_npy(run / "scores_tracin.npy").to(torch::kDouble);
  const at::Tensor final_dot = inflab::load_npy(run / "scores_hessian_free.npy").to(torch::kDouble);
  // The oracle for checkpoint 1: the same fine-tuning stopped after 2 epochs (same seed, same batch
  // order, a constant learning rate), scored by Hessian-free in a run of its own.
  const std::string hessian_free_only = test::replace(base, "\n[[estimator]]\nplugin = \"tracin\"\n", "\n");
  REQUIRE(hessian_free_only != base);
  auto two_epochs = dir.write("two.toml", test::replace(hessian_free_only, "[experiment]\nname = \"e2e\"",
                                                        "[experiment]\nname = \"two_epochs\""));
  inflab::run_experiment(inflab::load_experiment(two_epochs, {"training.epochs=2"}, registry).at(0), registry,
                         paths);
  const at::Tensor first_dot =
      inflab::load_npy(dir.path / "results" / "two_epochs" / "run" / "scores_hessian_free.npy")
          .to(torch::kDouble);
  REQUIRE(first_dot.sub(final_dot).abs().max().item<double>() > 0);  // the checkpoints differ
  const at::Tensor expected = (first_dot + final_dot) * 3e-3;
  CHECK((tracin - expected).norm().item<double>() <= 1e-5 * expected.norm().item<double>());
  const auto manifest = nlohmann::json::parse(inflab::read_file(run / "manifest.json"));
  CHECK(manifest["diagnostics"]["tracin"]["checkpoint1.epoch"] == 2.0);
  CHECK(manifest["diagnostics"]["tracin"]["checkpoint2.epoch"] == 4.0);
  CHECK(manifest["diagnostics"]["tracin"]["checkpoint1.learning_rate"].get<double>() == Approx(3e-3));
  // The fine-tuning keeps the checkpoints on its way (one training for both): a run with
  // [checkpoints] but without TracIn leaves them in the cache, for a TracIn run to find.
  {
    const inflab::RunPaths kept_paths{dir.path / "results_kept", dir.path / "cache_kept"};
    auto kept = dir.write("kept.toml", hessian_free_only + "\n[checkpoints]\ncount = 2\n");
    inflab::run_experiment(inflab::load_experiment(kept, {}, registry).at(0), registry, kept_paths);
    std::size_t checkpoint_files = 0;
    for (const auto& entry : fs::recursive_directory_iterator(kept_paths.cache_root / "checkpoints"))
      checkpoint_files += entry.path().extension() == ".pt" ? 1 : 0;
    CHECK(checkpoint_files == 2);
    const at::Tensor kept_dot =
        inflab::load_npy(kept_paths.results_root / "e2e" / "run" / "scores_hessian_free.npy")
            .to(torch::kDouble);
    CHECK(kept_dot.equal(final_dot));  // the same adapter as the plain fine-tuning
  }
  // One checkpoint: the final adapter alone, so TracIn is the learning rate x Hessian-free.
  auto single = dir.write(
      "single.toml", test::replace(base, "[experiment]\nname = \"e2e\"", "[experiment]\nname = \"single\"") +
                         "\n[checkpoints]\ncount = 1\n");
  inflab::run_experiment(inflab::load_experiment(single, {}, registry).at(0), registry, paths);
  const fs::path single_run = dir.path / "results" / "single" / "run";
  CHECK(inflab::load_npy(single_run / "scores_tracin.npy")
            .to(torch::kDouble)
            .sub(final_dot * 3e-3)
            .abs()
            .max()
            .item<double>() <= 1e-6 * final_dot.abs().max().item<double>() * 3e-3);
  // Without [checkpoints], or with more checkpoints than epochs: clear errors.
  auto none = dir.write("none.toml", base);
  CHECK_THROWS_WITH(
      inflab::run_experiment(inflab::load_experiment(none, {"experiment.name=none"}, registry).at(0),
                             registry, paths),
      Contains("tracin") && Contains("[checkpoints]"));
  CHECK_THROWS_WITH(inflab::load_experiment(file, {"checkpoints.count=5"}, registry),
                    Contains("checkpoints.count") && Contains("training.epochs = 4"));
}
