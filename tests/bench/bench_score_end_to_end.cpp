// Where `inflab score` spends its time, phase by phase, on a generated gradient store, beside this
// machine's limits measured in the same binary (float32 and float64 GEMM, read bandwidth):
//   ./inflab bench-score [--benchmark_out=F.json --benchmark_out_format=json]
// Store: INFLAB_BENCH_N training rows (4500), INFLAB_BENCH_Q queries (500), 13 blocks of 2048 x 6,
// 1280 x 3 and 768 x 4 values (19,200 in all: the layout of issue 18), float32, in a temporary
// directory. Phases: the process start-up (`inflab --help`), opening and checking the store
// (load_gradient_store: memory maps and the NaN pass), the damping rule's row norms, each
// estimator's fit, its scoring (inverse products and G R^T), writing the scores, and the whole
// `inflab score` process. docs/performance.md ("Scoring end to end") has a run.
#include <fmt/format.h>

#include <boost/dll/runtime_symbol_info.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "bench_common.hpp"
#include "inflab/gradients.hpp"
#include "inflab/io.hpp"
#include "inflab/runtime.hpp"
#include "inflab/scoring.hpp"

namespace fs = std::filesystem;

namespace {

std::int64_t env_int(const char* name, std::int64_t fallback) {
  const char* value = std::getenv(name);
  return value && *value ? std::atoll(value) : fallback;
}

const std::vector<std::int64_t> kLayout{2048, 2048, 2048, 2048, 2048, 2048, 1280,
                                        1280, 1280, 768,  768,  768,  768};

// The store, written once per process (removed at exit).
struct Store {
  fs::path dir;
  std::int64_t n, q;
  Store() : n(env_int("INFLAB_BENCH_N", 4500)), q(env_int("INFLAB_BENCH_Q", 500)) {
    dir = fs::temp_directory_path() / fmt::format("inflab-bench-store-{}", ::getpid());
    fs::create_directories(dir / "train");
    fs::create_directories(dir / "query");
    torch::manual_seed(0);
    std::string blocks;
    for (std::size_t b = 0; b < kLayout.size(); ++b) {
      const std::string name = fmt::format("block{:02d}", b);
      inflab::save_npy(dir / "train" / (name + ".npy"), torch::randn({n, kLayout[b]}) * 1e-2);
      inflab::save_npy(dir / "query" / (name + ".npy"), torch::randn({q, kLayout[b]}) * 1e-2);
      blocks += fmt::format("{}{{\"name\": \"{}\", \"dim\": {}}}", b ? ", " : "", name, kLayout[b]);
    }
    std::ofstream(dir / "blocks.json") << "{\"blocks\": [" << blocks << "]}\n";
  }
  ~Store() { fs::remove_all(dir); }
  double megabytes() const {
    double values = 0;
    for (auto d : kLayout) values += static_cast<double>(d);
    return values * static_cast<double>(n + q) * 4 / 1e6;
  }
};

Store& store() {
  static Store s;
  return s;
}

fs::path cli() { return boost::dll::program_location().parent_path() / "inflab"; }

void run_or_fail(benchmark::State& state, const std::string& command) {
  if (std::system(command.c_str()) != 0) state.SkipWithError(("failed: " + command).c_str());
}

void startup(benchmark::State& state) {
  for (auto _ : state) run_or_fail(state, fmt::format("'{}' --help > /dev/null", cli().string()));
}

// What every case of an estimator sets, in process and on the command line: 10 iterations for the
// iterative solvers (the paper's code's LiSSA count; CG then warns it did not reach 1e-12).
std::vector<std::pair<std::string, std::string>> settings(const std::string& estimator) {
  if (estimator == "lissa") return {{"iterations", "10"}};
  if (estimator == "cg") return {{"max_iterations", "10"}, {"tolerance", "1e-12"}};
  return {};
}

void whole_process(benchmark::State& state, const std::string& estimator, const std::string& mode) {
  const fs::path out = store().dir / "scores_cli.npy";
  std::string sets;
  for (const auto& [key, text] : settings(estimator)) sets += fmt::format(" --set {}={}", key, text);
  for (auto _ : state)
    run_or_fail(state,
                fmt::format("'{}' --quiet score --gradients '{}' --estimator {} --mode {} --out '{}'{}",
                            cli().string(), store().dir.string(), estimator, mode, out.string(), sets));
  state.counters["MB"] = store().megabytes();
}

void open_and_check(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(inflab::load_gradient_store(store().dir).train.size());
  state.counters["GB/s"] = benchmark::Counter(
      store().megabytes() / 1e3 * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

// The store as the phases after opening see it: mapped, its pages touched once (the first case to
// read it would otherwise pay the page faults).
inflab::GradientStore& loaded() {
  static inflab::GradientStore s = [] {
    auto opened = inflab::load_gradient_store(store().dir);
    for (const auto* side : {&opened.train, &opened.query})
      for (const auto& b : *side) benchmark::DoNotOptimize(b.values.sum().item<float>());
    return opened;
  }();
  return s;
}

// One pass over the training gradients as they are stored: the floor of every phase that reads them.
void read_pass(benchmark::State& state) {
  double bytes = 0;
  for (const auto& b : loaded().train) bytes += static_cast<double>(b.values.nbytes());
  for (auto _ : state)
    for (const auto& b : loaded().train) benchmark::DoNotOptimize(b.values.sum().item<float>());
  state.counters["GB/s"] =
      benchmark::Counter(bytes / 1e9 * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

void damping(benchmark::State& state) {
  for (auto _ : state)
    for (const auto& b : loaded().train)
      benchmark::DoNotOptimize(inflab::squared_row_norms(b.values).data_ptr());
}

std::unique_ptr<inflab::Estimator> make(const std::string& name) {
  const auto specs = bench::registry().find(inflab::PluginKind::Estimator, name).info->options();
  auto options = inflab::default_options(name, specs);
  for (const auto& [key, text] : settings(name))
    for (const auto& spec : specs)
      if (spec.name == key) options.set(key, inflab::parse_value(text, spec.type, key));
  return inflab::with_rescaling(
      bench::registry().create_as<inflab::Estimator>(inflab::PluginKind::Estimator, name, options));
}

void fit(benchmark::State& state, const std::string& name) {
  for (auto _ : state) make(name)->fit(loaded().train);
}

void scoring(benchmark::State& state, const std::string& name, const std::string& mode) {
  auto estimator = make(name);
  estimator->fit(loaded().train);
  for (auto _ : state) {
    auto scores = mode == "aggregate" ? inflab::score_aggregate(*estimator, loaded().train, loaded().query)
                                      : inflab::score_pairwise(*estimator, loaded().train, loaded().query);
    benchmark::DoNotOptimize(scores.data_ptr());
  }
}

void writing(benchmark::State& state, const std::string& mode) {
  const auto scores = mode == "aggregate" ? torch::randn({store().n}) : torch::randn({store().n, store().q});
  for (auto _ : state) inflab::save_npy(store().dir / "scores_written.npy", scores);
}

}  // namespace

BENCHMARK(bench::matmul_peak)->Name("limit/matmul_float32")->Unit(benchmark::kMillisecond)->UseRealTime();
using bench::matmul_peak_of;  // BENCHMARK_CAPTURE pastes the name into an identifier
BENCHMARK_CAPTURE(matmul_peak_of, float64, torch::kDouble)
    ->Name("limit/matmul_float64")
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(read_pass)->Name("limit/read_pass")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(startup)->Name("phase/startup")->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(5);
BENCHMARK(open_and_check)->Name("phase/open_and_check")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(damping)->Name("phase/damping_norms")->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(writing, aggregate, "aggregate")
    ->Name("phase/write_scores/aggregate")
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(writing, pairwise, "pairwise")
    ->Name("phase/write_scores/pairwise")
    ->Unit(benchmark::kMillisecond);

#define INFLAB_PHASES(ESTIMATOR, MODE)                                    \
  BENCHMARK_CAPTURE(fit, ESTIMATOR##_##MODE, #ESTIMATOR)                  \
      ->Name("phase/fit/" #ESTIMATOR)                                     \
      ->Unit(benchmark::kMillisecond)                                     \
      ->UseRealTime()                                                     \
      ->Iterations(3);                                                    \
  BENCHMARK_CAPTURE(scoring, ESTIMATOR##_##MODE, #ESTIMATOR, #MODE)       \
      ->Name("phase/score/" #ESTIMATOR "/" #MODE)                         \
      ->Unit(benchmark::kMillisecond)                                     \
      ->UseRealTime()                                                     \
      ->Iterations(3);                                                    \
  BENCHMARK_CAPTURE(whole_process, ESTIMATOR##_##MODE, #ESTIMATOR, #MODE) \
      ->Name("process/" #ESTIMATOR "/" #MODE)                             \
      ->Unit(benchmark::kMillisecond)                                     \
      ->UseRealTime()                                                     \
      ->Iterations(3);

INFLAB_PHASES(hessian_free, aggregate)
INFLAB_PHASES(datainf, aggregate)
INFLAB_PHASES(lissa, aggregate)
INFLAB_PHASES(cg, aggregate)
INFLAB_PHASES(exact, aggregate)
INFLAB_PHASES(datainf, pairwise)

int main(int argc, char** argv) {
  // As the CLI: $INFLAB_THREADS, else every core (the store is written once, before the first case).
  const int threads = inflab::configure_threads(0);
  benchmark::AddCustomContext("libtorch_threads", std::to_string(threads));
  benchmark::AddCustomContext(
      "store", fmt::format("n = {}, q = {}, 13 blocks, 19,200 values, {:.0f} MB float32", store().n,
                           store().q, store().megabytes()));
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
