#include <fmt/format.h>
#include <toml++/toml.h>

#include <cstdlib>

// LibTorch's headers (through pipeline.hpp) define their own CHECK: they come before Catch's.
#include "inflab/pipeline.hpp"
// clang-format off
#include <catch2/catch.hpp>
// clang-format on

#include "helpers.hpp"
#include "inflab/config.hpp"
#include "inflab/error.hpp"
#include "inflab/numerics.hpp"
#include "inflab/registry.hpp"
#include "inflab/task_table.hpp"

using Catch::Matchers::Contains;

namespace {

const char* kValid = R"([experiment]
name = "t"
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

[[estimator]]
plugin = "datainf"

[[estimator]]
plugin = "hessian_free"
)";

struct Fixture {
  test::TempDir dir;
  inflab::Registry registry;
  Fixture() { registry.load_directory(test::plugin_dir()); }
  std::vector<inflab::ExperimentConfig> load(const std::string& text, std::vector<std::string> sets = {}) {
    return inflab::load_experiment(dir.write("exp.toml", text), sets, registry);
  }
  std::string error_of(const std::string& text, std::vector<std::string> sets = {}) {
    try {
      load(text, sets);
    } catch (const inflab::Error& e) {
      return e.what();
    }
    FAIL("expected a config error");
    return "";
  }
  std::string file() const { return (dir.path / "exp.toml").string(); }
};

using test::replace;

// A value of a run's resolved configuration (what the stages read), by dotted path.
template <typename T>
T resolved(const inflab::ExperimentConfig& run, const std::string& path) {
  const toml::table table = toml::parse(run.resolved_toml);
  const auto value = table.at_path(path).value<T>();
  if (!value) throw std::runtime_error("no " + path + " in the resolved configuration");
  return *value;
}

}  // namespace

TEST_CASE("a valid experiment resolves with defaults filled in", "[config]") {
  Fixture f;
  auto runs = f.load(kValid);
  REQUIRE(runs.size() == 1);
  const auto& run = runs[0];
  CHECK(run.name == "t");
  CHECK(run.seed == 3);
  CHECK(resolved<std::int64_t>(run, "model.lora.rank") == 2);
  CHECK(resolved<double>(run, "model.lora.alpha") == 2.0);  // alpha defaults to the rank, as in the paper
  CHECK(resolved<double>(run, "dataset.label_noise") == Approx(0.2));
  CHECK(run.dataset.options.get_int("n_train") == 100);
  CHECK(run.dataset.options.get_int("n_validation") == 200);  // plugin default
  CHECK(run.model.options.get_int_list("hidden") == std::vector<std::int64_t>{32});
  REQUIRE(run.estimators.size() == 2);
  CHECK(run.estimators[0].options.get_double("damping_scale") == Approx(0.1));
  CHECK_THAT(run.resolved_toml, Contains("damping_scale = 0.1") && Contains("learning_rate"));
}

TEST_CASE("more checkpoints than epochs is an error that says the way out", "[config]") {
  Fixture f;
  const std::string file = std::string(kValid) + "\n[training]\nepochs = 3\n\n[checkpoints]\ncount = 3\n";
  CHECK(f.load(file).at(0).checkpoints == 3);
  // A shorter override of a file that keeps checkpoints (as the tests of the LLM studies do).
  const auto message = f.error_of(file, {"training.epochs=1"});
  CHECK_THAT(message, Contains(f.file() + ":26:1") && Contains("checkpoints.count") &&
                          Contains("found training.epochs = 1") && Contains("--set checkpoints.count=1"));
  CHECK(f.load(file, {"training.epochs=1", "checkpoints.count=1"}).at(0).checkpoints == 1);
}

TEST_CASE("a wrong type names file:line:column, key, expected and found", "[config]") {
  Fixture f;
  auto message = f.error_of(replace(kValid, "rank = 2", "rank = \"two\""));
  CHECK_THAT(message, Contains(f.file() + ":15:8") && Contains("model.lora.rank") &&
                          Contains("expected integer") && Contains("found string \"two\""));
  auto plugin_option = f.error_of(replace(kValid, "n_train = 100", "n_train = 1.5"));
  CHECK_THAT(plugin_option,
             Contains(f.file() + ":7:11") && Contains("dataset.n_train") && Contains("found number 1.5"));
}

TEST_CASE("unknown keys are errors with the closest valid key", "[config]") {
  Fixture f;
  auto message = f.error_of(replace(kValid, "n_train = 100", "n_trian = 100"));
  CHECK_THAT(message, Contains(f.file() + ":7:1") && Contains("unknown key 'dataset.n_trian'") &&
                          Contains("did you mean 'dataset.n_train'?"));
  auto estimator_option =
      f.error_of(replace(kValid, "plugin = \"datainf\"", "plugin = \"datainf\"\ndamping_scal = 0.2"));
  CHECK_THAT(estimator_option, Contains("estimator.damping_scal") && Contains("damping_scale"));
  auto section = f.error_of(std::string(kValid) + "\n[evalution]\nmode = \"pairwise\"\n");
  CHECK_THAT(section, Contains("unknown section 'evalution'") && Contains("did you mean 'evaluation'?"));
}

TEST_CASE("an unknown plugin in the file points at the line and suggests", "[config]") {
  Fixture f;
  auto message = f.error_of(replace(kValid, "plugin = \"datainf\"", "plugin = \"data_inf\""));
  CHECK_THAT(message, Contains(f.file() + ":18:10") && Contains("did you mean 'datainf'?"));
}

TEST_CASE("TOML syntax errors carry the position", "[config]") {
  Fixture f;
  auto message = f.error_of(replace(kValid, "seed = 3", "seed = = 3"));
  CHECK_THAT(message, Contains(f.file() + ":3:"));
}

TEST_CASE("sweeps expand to the cartesian product, with readable run names", "[config]") {
  Fixture f;
  auto runs =
      f.load(std::string(kValid) + "\n[sweep]\n\"model.lora.rank\" = [1, 2, 4]\nexperiment.seed = [0, 1]\n");
  REQUIRE(runs.size() == 6);
  std::set<std::pair<std::int64_t, std::int64_t>> points;
  std::set<std::string> names;
  for (const auto& r : runs)
    points.insert({resolved<std::int64_t>(r, "model.lora.rank"), r.seed}), names.insert(r.run_name);
  CHECK(points.size() == 6);
  CHECK(names.size() == 6);
  CHECK(names.count("seed0_rank4") == 1);
  // Runs that differ only in the seed share the pretrained base but not the fine-tune.
  CHECK(inflab::stage_key("base", runs[0]) == inflab::stage_key("base", runs[1]));
  CHECK(inflab::stage_key("finetune", runs[0]) != inflab::stage_key("finetune", runs[1]));
}

TEST_CASE("repeats sweep the seed, a bad sweep value is located", "[config]") {
  Fixture f;
  auto runs = f.load(replace(kValid, "seed = 3", "seed = 3\nrepeats = 3"));
  REQUIRE(runs.size() == 3);
  CHECK(runs[2].seed == 5);
  auto message = f.error_of(std::string(kValid) + "\n[sweep]\n\"model.lora.rank\" = [1, \"x\"]\n");
  CHECK_THAT(message,
             Contains(f.file() + ":24:25") && Contains("model.lora.rank") && Contains("expected integer"));
}

TEST_CASE("[sweep.zip] steps its keys together, crossed with the other axes", "[config]") {
  Fixture f;
  auto runs = f.load(std::string(kValid) +
                     "\n[sweep]\n\"model.lora.rank\" = [1, 2]\n[sweep.zip]\nexperiment.seed = [0, 1, 2]\n"
                     "\"dataset.noise_seed\" = [10, 11, 12]\n");
  REQUIRE(runs.size() == 6);
  std::set<std::string> names;
  for (const auto& r : runs) {
    CHECK(resolved<std::int64_t>(r, "dataset.noise_seed") == 10 + r.seed);  // stepped together, never crossed
    names.insert(r.run_name);
  }
  CHECK(names.size() == 6);
  std::string all_names;
  for (const auto& n : names) all_names += n + " ";
  INFO(all_names);
  CHECK(names.count("rank2_seed1") == 1);  // a zipped axis with experiment.seed is named by it
  // ... also when --set replaced the values; without it, by the key written first in the file.
  auto overridden = f.load(std::string(kValid) +
                               "\n[sweep.zip]\ndataset.noise_seed = [10, 11]\n"
                               "experiment.seed = [0, 1]\n",
                           {"sweep.zip.experiment.seed=[5, 6]", "sweep.zip.dataset.noise_seed=[7, 8]"});
  REQUIRE(overridden.size() == 2);
  CHECK(overridden[1].run_name == "seed6");
  CHECK(resolved<std::int64_t>(overridden[1], "dataset.noise_seed") == 8);
  auto unseeded = f.load(std::string(kValid) +
                         "\n[sweep.zip]\n\"training.epochs\" = [1, 2]\n"
                         "\"dataset.noise_seed\" = [3, 4]\n");
  CHECK(unseeded[1].run_name == "epochs2");

  auto unequal = f.error_of(std::string(kValid) +
                            "\n[sweep.zip]\nexperiment.seed = [0, 1, 2]\n\"dataset.noise_seed\" = [1, 2]\n");
  CHECK_THAT(unequal, Contains("one length") && Contains("'experiment.seed' has 3") &&
                          Contains("'dataset.noise_seed' has 2") && Contains(f.file() + ":"));
  CHECK_THAT(f.error_of(replace(kValid, "seed = 3", "seed = 3\nrepeats = 2") +
                        "\n[sweep.zip]\n\"dataset.noise_seed\" = [1, 2]\nexperiment.seed = [0, 1]\n"),
             Contains("repeats") && Contains("not both"));
  CHECK_THAT(f.error_of(std::string(kValid) + "\n[sweep]\nzip = [1, 2]\n"), Contains("[sweep.zip]"));
  CHECK_THAT(
      f.error_of(std::string(kValid) + "\n[sweep]\n\"model.lora.rank\" = [1, 2]\nmodel.lora.rank = [4]\n"),
      Contains("'model.lora.rank' is swept twice"));
}

TEST_CASE("a sweep or repeats beyond 10000 runs is refused before anything is expanded", "[config]") {
  Fixture f;
  CHECK_THAT(f.error_of(replace(kValid, "seed = 3", "seed = 3\nrepeats = 1000000000000")),
             Contains("experiment.repeats") && Contains("over the limit of 10000"));
  std::string sweep = std::string(kValid) + "\n[sweep]\n";
  for (const char* key :
       {"training.epochs", "training.batch_size", "training.learning_rate", "experiment.seed"})
    sweep += fmt::format("\"{}\" = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]\n", key);
  CHECK_THAT(f.error_of(sweep), Contains("14641 runs (11 x 11 x 11 x 11)"));
}

TEST_CASE("overrides given with --set reach any key and are validated like the file", "[config]") {
  Fixture f;
  auto runs = f.load(kValid, {"model.lora.rank=8", "dataset.label_noise=0.1", "training.optimizer=sgd"});
  CHECK(resolved<std::int64_t>(runs[0], "model.lora.rank") == 8);
  CHECK(resolved<double>(runs[0], "dataset.label_noise") == Approx(0.1));
  CHECK(resolved<std::string>(runs[0], "training.optimizer") == "sgd");
  auto message = f.error_of(kValid, {"model.lora.rnk=8"});
  CHECK_THAT(message, Contains("--set model.lora.rnk=8") && Contains("did you mean 'model.lora.rank'?"));
}

TEST_CASE("semantic checks: references, metrics, ranges", "[config]") {
  Fixture f;
  CHECK_THAT(f.error_of(std::string(kValid) + "\n[evaluation]\nmetrics = [\"pearson\"]\n"),
             Contains("needs evaluation.reference"));
  CHECK_THAT(f.error_of(std::string(kValid) +
                        "\n[evaluation]\nmetrics = [\"auc\", \"pearsn\"]\nreference = \"datainf\"\n"),
             Contains("did you mean \"pearson\"?"));
  CHECK_THAT(f.error_of(std::string(kValid) + "\n[evaluation]\nreference = \"exact\"\n"),
             Contains("no [[estimator]] is named \"exact\""));
  CHECK_THAT(f.error_of(replace(kValid, "label_noise = 0.2", "label_noise = 1.5")),
             Contains("dataset.label_noise"));
  CHECK_THAT(f.error_of(replace(kValid, "[[estimator]]\nplugin = \"hessian_free\"",
                                "[[estimator]]\nplugin = \"datainf\"")),
             Contains("two [[estimator]] entries are named 'datainf'"));
  // normalise: a framework key of every [[estimator]], named with its line and the three values.
  const std::string typo = replace(kValid, "[[estimator]]\nplugin = \"hessian_free\"",
                                   "[[estimator]]\nplugin = \"hessian_free\"\nnormalise = \"cosine\"");
  REQUIRE(typo != kValid);
  CHECK_THAT(f.error_of(typo), Contains("estimator.normalise") && Contains("hessian_free") &&
                                   Contains("\"cosine\"") && Contains("relatif"));
  auto runs = f.load(replace(kValid, "[[estimator]]\nplugin = \"hessian_free\"",
                             "[[estimator]]\nplugin = \"hessian_free\"\nnormalise = \"unit\""));
  REQUIRE(runs.size() == 1);
  for (const auto& e : runs[0].estimators)
    CHECK(e.normalise == (e.plugin == "hessian_free" ? "unit" : "none"));
}

TEST_CASE("`inflab validate` reports errors on stderr with exit code 2", "[config][cli]") {
  test::TempDir dir;
  auto file = dir.write("bad.toml", replace(kValid, "rank = 2", "rank = -1"));
  auto result = test::run_command(std::string(INFLAB_BINARY) + " validate " + file.string());
  CHECK(result.exit_code == 2);
  CHECK_THAT(result.output, Contains("model.lora.rank") && Contains("an integer in [1, 65536]") &&
                                Contains("found integer -1"));
  auto good = dir.write("good.toml", kValid);
  auto ok = test::run_command(std::string(INFLAB_BINARY) + " validate " + good.string());
  CHECK(ok.exit_code == 0);
  CHECK_THAT(ok.output, Contains("valid, 1 run(s)"));
}

TEST_CASE("[numerics] kernels: pinned or native, located when wrong, never swept", "[config][numerics]") {
  Fixture f;
  CHECK(f.load(kValid)[0].kernels.empty());  // absent: the command line or the environment decides
  CHECK(f.load(std::string(kValid) + "\n[numerics]\nkernels = \"native\"\n")[0].kernels == "native");
  const std::string wrong = f.error_of(std::string(kValid) + "\n[numerics]\nkernels = \"fast\"\n");
  CHECK_THAT(wrong, Contains(f.file() + ":24:") && Contains("numerics.kernels") &&
                        Contains("found \"fast\"") && Contains("\"pinned\"") && Contains("\"native\""));
  CHECK_THAT(f.error_of(std::string(kValid) + "\n[numerics]\nkernel = \"native\"\n"),
             Contains("did you mean 'numerics.kernels'?"));
  CHECK_THAT(f.error_of(std::string(kValid) + "\n[sweep]\n\"numerics.kernels\" = [\"pinned\", \"native\"]\n"),
             Contains("chosen when the process starts"));
}

TEST_CASE("the kernel mode: --kernels, then $INFLAB_KERNELS, then the experiment, then pinned",
          "[config][numerics]") {
  using inflab::KernelMode;
  using inflab::requested_kernel_mode;
  const char* saved = std::getenv("INFLAB_KERNELS");
  const std::string restore = saved ? saved : "";
  unsetenv("INFLAB_KERNELS");
  CHECK(requested_kernel_mode("") == KernelMode::Pinned);
  CHECK(requested_kernel_mode("", "native") == KernelMode::Native);
  setenv("INFLAB_KERNELS", "native", 1);
  CHECK(requested_kernel_mode("", "pinned") == KernelMode::Native);
  CHECK(requested_kernel_mode("pinned", "native") == KernelMode::Pinned);
  setenv("INFLAB_KERNELS", "quick", 1);
  CHECK_THROWS_WITH(requested_kernel_mode(""), Contains("INFLAB_KERNELS") && Contains("found \"quick\""));
  CHECK(requested_kernel_mode("native") == KernelMode::Native);  // the flag is read first
  if (saved)
    setenv("INFLAB_KERNELS", restore.c_str(), 1);
  else
    unsetenv("INFLAB_KERNELS");
}

TEST_CASE("a bad kernel mode on the command line or in the environment is a clear error",
          "[config][cli][numerics]") {
  test::TempDir dir;
  auto flag = test::run_command(std::string(INFLAB_BINARY) + " --kernels fast plugins");
  CHECK(flag.exit_code != 0);
  CHECK_THAT(flag.output, Contains("--kernels") && Contains("fast"));
  auto good = dir.write("good.toml", kValid);
  auto variable =
      test::run_command("INFLAB_KERNELS=fast " + std::string(INFLAB_BINARY) + " validate " + good.string());
  CHECK(variable.exit_code == 2);
  CHECK_THAT(variable.output, Contains("INFLAB_KERNELS") && Contains("found \"fast\""));
  auto native =
      test::run_command("INFLAB_KERNELS=native " + std::string(INFLAB_BINARY) + " validate " + good.string());
  CHECK_THAT(native.output, Contains("valid, 1 run(s), native kernels"));
}

TEST_CASE("causal-LM and schedule choices are checked before a run, naming the key and the choices",
          "[config]") {
  Fixture f;
  CHECK_THAT(f.error_of(kValid, {"task.name=causal_lm", "task.scored=prompts"}),
             Contains("task.scored") && Contains("\"response\", \"prompt\", \"all\"") &&
                 Contains("found \"prompts\""));
  CHECK_THAT(f.error_of(kValid, {"task.name=causal_lm", "task.padding=max"}),
             Contains("task.padding") && Contains("\"none\", \"longest\""));
  CHECK_THAT(f.error_of(kValid, {"task.name=causal_lm", "task.fine_tune_scored=prompt"}),
             Contains("task.fine_tune_scored") && Contains("\"response\", \"all\""));
  CHECK_THAT(f.error_of(kValid, {"training.schedule=cosine"}),
             Contains("training.schedule") && Contains("found \"cosine\""));
  CHECK_THAT(f.error_of(kValid, {"training.accumulation_steps=0"}), Contains("training.accumulation_steps"));
  CHECK_THAT(f.error_of(kValid, {"evaluation.class_recall_at=validation"}),
             Contains("evaluation.class_recall_at") && Contains("\"training\" or \"queries\""));
  CHECK_THAT(f.error_of(kValid, {"task.name=denoising", "task.timestep_gradients=stack"}),
             Contains("task.timestep_gradients"));
  auto runs = f.load(
      kValid, {"training.accumulation_steps=16", "training.schedule=linear", "training.max_grad_norm=1"});
  CHECK(runs.size() == 1);
}

TEST_CASE("a zipped axis whose first key repeats a value is named by all its keys, so runs never collide",
          "[config]") {
  Fixture f;
  auto runs =
      f.load(std::string(kValid) +
             "\n[sweep.zip]\n\"training.epochs\" = [1, 1, 2]\n\"training.batch_size\" = [8, 16, 16]\n");
  REQUIRE(runs.size() == 3);
  CHECK(runs[0].run_name == "epochs1_batch_size8");
  CHECK(runs[1].run_name == "epochs1_batch_size16");
  CHECK(runs[2].run_name == "epochs2_batch_size16");
  // Distinct first values keep the short name.
  auto seeds = f.load(std::string(kValid) +
                      "\n[sweep.zip]\n\"experiment.seed\" = [0, 1]\n\"training.epochs\" = [1, 1]\n");
  CHECK(seeds[1].run_name == "seed1");
  CHECK_THAT(f.error_of(std::string(kValid) +
                        "\n[sweep.zip]\n\"training.epochs\" = [1, 1]\n\"training.batch_size\" = [8, 8]\n"),
             Contains("both be run 'epochs1_batch_size8'"));
}

TEST_CASE("the task table decides which tasks take label noise and [queries]", "[config]") {
  Fixture f;
  REQUIRE(inflab::task_definitions().size() == inflab::task_names().size());
  for (const auto& task : inflab::task_definitions()) {
    INFO(task.name);
    const std::string name = "task.name=" + task.name;
    // kValid flips 20% of the labels.
    if (task.trains_on_class_labels)
      CHECK(f.load(kValid, {name}).size() == 1);
    else
      CHECK_THAT(f.error_of(kValid, {name}),
                 Contains("label noise flips class labels") && Contains(task.name));
    const std::string with_queries =
        replace(kValid, "label_noise = 0.2", "label_noise = 0.0") + "\n[queries]\n";
    if (task.generates_images)
      CHECK(f.load(with_queries, {name}).size() == 1);
    else
      CHECK_THAT(f.error_of(with_queries, {name}), Contains("[queries] generates images"));
    // Every task's own keys are [task] keys, and a value a task does not take names its key.
    const auto specs = inflab::task_option_specs();
    for (const auto& option : task.options)
      CHECK(std::any_of(specs.begin(), specs.end(),
                        [&](const inflab::OptionSpec& s) { return s.name == option.name; }));
  }
  CHECK_THAT(f.error_of(replace(kValid, "label_noise = 0.2", "label_noise = 0.0"),
                        {"task.name=causal_lm", "task.scored=everything"}),
             Contains("task.scored"));
}
