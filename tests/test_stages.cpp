// Cache keys of the stages: every declared input (and every input of an earlier stage) changes a
// stage's key; nothing else does; an undeclared read is an error.
// LibTorch's headers (through pipeline.hpp) define their own CHECK: they come before Catch's.
#include "inflab/pipeline.hpp"
// clang-format off
#include <catch2/catch.hpp>
// clang-format on
#include <toml++/toml.h>

#include <set>
#include <sstream>

#include "helpers.hpp"
#include "inflab/config.hpp"
#include "inflab/error.hpp"
#include "inflab/registry.hpp"
#include "stage_keys.hpp"

using Catch::Matchers::Contains;

namespace {

const char* kExperiment = R"([experiment]
name = "keys"
description = "free text"
seed = 3

[dataset]
plugin = "fashion_mnist"
n_train = 100
label_noise = 0.2

[model]
plugin = "mlp_lora"
hidden = [32]

[model.lora]
rank = 2

[training]
epochs = 2

[[estimator]]
plugin = "datainf"

[evaluation]
metrics = ["auc", "pearson", "lds"]
reference = "datainf"
)";

// Every leaf of the resolved configuration outside [[estimator]] (estimators are the fit stage's
// own inputs, added explicitly).
void leaves(const toml::table& table, const std::string& prefix, std::vector<std::string>& out) {
  for (auto&& [key, node] : table) {
    std::string path = prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
    if (node.is_table())
      leaves(*node.as_table(), path, out);
    else if (!node.is_array_of_tables())
      out.push_back(path);
  }
}

// The same configuration with the value at `path` changed (same type, another value).
std::string changed(const std::string& resolved, const std::string& path) {
  toml::table root = toml::parse(resolved);
  toml::node* node = root.at_path(path).node();
  REQUIRE(node);
  if (auto* v = node->as_integer())
    *v = v->get() + 1;
  else if (auto* d = node->as_floating_point())
    *d = d->get() * 2 + 1;
  else if (auto* b = node->as_boolean())
    *b = !b->get();
  else if (auto* s = node->as_string())
    *s = s->get() + "_changed";
  else if (auto* a = node->as_array()) {
    if (!a->empty() && a->get(0)->is_integer())
      a->push_back(std::int64_t{7});
    else if (!a->empty() && a->get(0)->is_floating_point())
      a->push_back(0.5);
    else
      a->push_back("changed");
  } else
    FAIL("unexpected node type at " << path);
  std::ostringstream out;
  out << root;
  return out.str();
}

// Paths a stage's key must cover: its own reads (minus its exceptions) and those of every stage before it.
bool covered(const inflab::StageDeclaration& stage, const std::string& path) {
  auto under = [](const std::string& p, const std::string& prefix) {
    return p == prefix ||
           (p.size() > prefix.size() && p.compare(0, prefix.size(), prefix) == 0 && p[prefix.size()] == '.');
  };
  bool declared = false;
  for (const auto& r : stage.reads) declared |= under(path, r);
  for (const auto& e : stage.except) declared &= !under(path, e);
  if (declared) return true;
  for (const auto& upstream : stage.after)
    if (covered(inflab::stage_declaration(upstream), path)) return true;
  return false;
}

}  // namespace

TEST_CASE("a stage's key changes with each input it declares and with nothing else", "[stages]") {
  test::TempDir dir;
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  auto config = inflab::load_experiment(dir.write("keys.toml", kExperiment), {}, registry).at(0);
  const std::map<std::string, std::string> versions{{"dataset", "fashion_mnist 1"}, {"model", "mlp_lora 1"}};
  auto key = [&](const std::string& stage, const std::string& resolved, const auto& v) {
    return inflab::stage_inputs(stage, resolved, v).key();
  };

  std::vector<std::string> paths;
  leaves(toml::parse(config.resolved_toml), "", paths);
  REQUIRE(paths.size() > 20);
  std::map<std::string, std::set<std::string>> changes;  // stage -> paths that changed its key
  for (const auto& path : paths) {
    const std::string other = changed(config.resolved_toml, path);
    for (const auto& stage : inflab::cached_stages()) {
      const bool differs =
          key(stage.name, other, versions) != key(stage.name, config.resolved_toml, versions);
      INFO("stage " << stage.name << ", changed " << path);
      CHECK(differs == covered(stage, path));
      if (differs) changes[stage.name].insert(path);
    }
  }
  // The declarations say what the pipeline needs: spot checks of the ones that matter.
  CHECK(changes["base"].count("training.batch_size"));  // pretraining reads it (was missing once)
  CHECK(changes["base"].count("training.pretrain_epochs"));
  CHECK_FALSE(changes["base"].count("model.lora.rank"));  // the base does not depend on the adapters
  CHECK_FALSE(changes["base"].count("dataset.label_noise"));
  CHECK_FALSE(changes["base"].count("experiment.seed"));
  CHECK(changes["finetune"].count("model.lora.rank"));
  CHECK(changes["finetune"].count("dataset.label_noise"));
  CHECK(changes["finetune"].count("experiment.seed"));
  CHECK(changes["gradients"].count("evaluation.gradient_dtype"));
  CHECK(changes["gradients"].count("task.timesteps"));
  CHECK(changes["ground_truth"].count("ground_truth.subsets"));
  CHECK(changes["ground_truth"].count("ground_truth.seed"));
  CHECK(changes["ground_truth"].count("experiment.seed"));  // the fine-tuning it repeats
  CHECK(changes["ground_truth"].count("training.learning_rate"));
  CHECK_FALSE(changes["ground_truth"].count("evaluation.gradient_batch_size"));
  // Options added after caches existed enter the key only away from the value that does what the
  // code did before them, so the caches of every existing experiment stay valid.
  CHECK(changes["base"].count("training.pretrain_ema"));
  CHECK(changes["base"].count("training.pretrain_condition_dropout"));
  const std::string base_text = inflab::stage_inputs("base", config.resolved_toml, versions).key_text();
  CHECK(base_text.find("training.pretrain_epochs") != std::string::npos);
  CHECK(base_text.find("pretrain_ema") == std::string::npos);
  CHECK(base_text.find("pretrain_condition_dropout") == std::string::npos);
  for (const char* stage : {"base", "finetune", "gradients"}) {
    INFO("stage " << stage);
    CHECK_FALSE(changes[stage].count("ground_truth.fraction"));
  }
  for (const char* unrelated :
       {"experiment.description", "experiment.name", "evaluation.metrics", "evaluation.mode",
        "evaluation.gradient_batch_size", "evaluation.gradient_memory_mb", "experiment.repeats"})
    for (const auto& stage : inflab::cached_stages()) {
      INFO("stage " << stage.name << ", changed " << unrelated);
      CHECK_FALSE(changes[stage.name].count(unrelated));
    }

  // A new version of a plugin changes every key after the stage that first runs it.
  auto newer = versions;
  newer["model"] = "mlp_lora 2";
  for (const auto& stage : inflab::cached_stages())
    CHECK(key(stage.name, config.resolved_toml, newer) != key(stage.name, config.resolved_toml, versions));
}

TEST_CASE("a stage cannot read what it does not declare", "[stages]") {
  test::TempDir dir;
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  auto config = inflab::load_experiment(dir.write("keys.toml", kExperiment), {}, registry).at(0);
  auto base = inflab::stage_inputs("base", config);
  CHECK(base.get_int("training.batch_size") == 32);
  CHECK_THROWS_WITH(base.get_int("training.epochs"), Contains("does not declare"));
  CHECK_THROWS_WITH(base.get_int("model.lora.rank"), Contains("does not declare"));
  auto gradients = inflab::stage_inputs("gradients", config);
  // A setting is readable but not in the key (checked above); an unrelated key is neither.
  CHECK(gradients.get_int("evaluation.gradient_batch_size") == 64);
  CHECK_THROWS_WITH(gradients.get_string("evaluation.mode"), Contains("does not declare"));
  // The public key is the same computation.
  CHECK(inflab::stage_key("finetune", config) == inflab::stage_inputs("finetune", config).key());
}

TEST_CASE(
    "[projection]: absent or none keeps the gradients' key, each of its keys changes it, bad values are "
    "errors",
    "[stages][projection]") {
  test::TempDir dir;
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  auto load = [&](const std::string& projection) {
    return inflab::load_experiment(dir.write("p.toml", std::string(kExperiment) + projection), {}, registry)
        .at(0);
  };
  const auto plain = load("");
  CHECK(inflab::stage_key("gradients", load("[projection]\nkind = \"none\"\n")) ==
        inflab::stage_key("gradients", plain));
  const auto projected = load("[projection]\nkind = \"gaussian\"\ndim = 64\n");
  CHECK(inflab::stage_key("gradients", projected) != inflab::stage_key("gradients", plain));
  CHECK(inflab::stage_key("finetune", projected) == inflab::stage_key("finetune", plain));
  for (const char* other : {"kind = \"sparse\"\ndim = 64\n", "kind = \"gaussian\"\ndim = 65\n",
                            "kind = \"gaussian\"\ndim = 64\nseed = 1\n"})
    CHECK(inflab::stage_key("gradients", load(std::string("[projection]\n") + other)) !=
          inflab::stage_key("gradients", projected));
  CHECK_THROWS_WITH(load("[projection]\nkind = \"dense\"\n"),
                    Contains("p.toml:") && Contains("projection") && Contains("factorised"));
  CHECK_THROWS_WITH(load("[projection]\ndim = 0\n"), Contains("p.toml:") && Contains("dim"));
}
