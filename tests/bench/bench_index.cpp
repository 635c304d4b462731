// The index query engine at scale (issue 27): `inflab explain`'s streamed pass over a synthetic
// float16 index of N rows x 4096 values (k = 4096 in total, one block), for 1 query and for 1,000.
// Synthetic rows (Gaussian) stand in for gradients here only because the pass's cost depends on the
// shape, not the values; the files are built once in $INFLAB_BENCH_INDEX_DIR (default
// /tmp/inflab-bench-index; 8.2 GB for 10^6 rows) and then served from the page cache.
//   ./inflab bench-index --benchmark_filter=index/
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "bench_common.hpp"
#include "inflab/estimator.hpp"
#include "inflab/index.hpp"
#include "inflab/io.hpp"
#include "inflab/runtime.hpp"

namespace fs = std::filesystem;

namespace {

constexpr std::int64_t kWidth = 4096;

fs::path bench_directory() {
  const char* dir = std::getenv("INFLAB_BENCH_INDEX_DIR");
  return dir && *dir ? fs::path(dir) : fs::path("/tmp/inflab-bench-index");
}

// One shard of `rows` synthetic float16 rows, written once (a chunk at a time) and then mapped.
inflab::IndexRows synthetic_rows(std::int64_t rows) {
  const fs::path file = bench_directory() / fmt::format("rows{}x{}.npy", rows, kWidth);
  if (!fs::exists(file)) {
    fs::path partial = file;
    partial += ".partial";
    {
      at::Tensor out = inflab::create_mapped_npy(partial, {rows, kWidth}, torch::kHalf);
      torch::manual_seed(0);
      for (std::int64_t begin = 0; begin < rows; begin += 16384) {
        const std::int64_t count = std::min<std::int64_t>(16384, rows - begin);
        out.narrow(0, begin, count).copy_(torch::randn({count, kWidth}).mul_(1e-2));
      }
    }
    fs::rename(partial, file);
  }
  inflab::IndexRows out;
  out.dtype = "float16";
  out.block_names = {"synthetic"};
  out.shards = {{inflab::map_npy(file)}};
  return out;
}

// kB of /proc/self/status's field (RssAnon: the process's own memory; RssFile: mapped file pages,
// which are the page cache's and reclaimable).
double status_kb(const std::string& field) {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind(field + ":", 0) == 0) return std::stod(line.substr(field.size() + 1));
  return 0;
}

// explain's pass: queries x rows scores, each query's 10 most helpful and harmful kept.
void streamed_pass(benchmark::State& state) {
  const std::int64_t rows = state.range(0), queries = state.range(1), chunk = state.range(2);
  const inflab::IndexRows index = synthetic_rows(rows);
  torch::manual_seed(1);
  const inflab::GradientBlocks preconditioned{{"synthetic", torch::randn({queries, kWidth})}};
  inflab::rank_index_rows(index, preconditioned, 10, chunk);  // the first pass loads the page cache
  for (auto _ : state) benchmark::DoNotOptimize(inflab::rank_index_rows(index, preconditioned, 10, chunk));
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * static_cast<double>(rows * kWidth * queries) * static_cast<double>(state.iterations()) / 1e9,
      benchmark::Counter::kIsRate);
  state.counters["rows/s"] =
      benchmark::Counter(static_cast<double>(rows * state.iterations()), benchmark::Counter::kIsRate);
  // After the passes: the process's own memory stays a few chunks, whatever the index's size.
  state.counters["anon_MiB"] = status_kb("RssAnon") / 1024;
  state.counters["file_MiB"] = status_kb("RssFile") / 1024;
}

// The pass's products alone, from one float32 chunk already in memory (no conversion, no top k):
// what the streamed pass would reach if reading and ranking were free.
void chunk_products(benchmark::State& state) {
  const std::int64_t queries = state.range(0), chunk = state.range(1), rows = 100000;
  const at::Tensor values = torch::randn({chunk, kWidth}), v = torch::randn({queries, kWidth});
  for (auto _ : state)
    for (std::int64_t begin = 0; begin < rows; begin += chunk)
      benchmark::DoNotOptimize(inflab::matrix_product(v, values.t()).neg_());
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * static_cast<double>(rows * kWidth * queries) * static_cast<double>(state.iterations()) / 1e9,
      benchmark::Counter::kIsRate);
}

// A kept preconditioner applied to the queries (explain's other step): Q (q x d) times d x d,
// in float64 as precondition_queries does.
void apply_preconditioner(benchmark::State& state) {
  const std::int64_t queries = state.range(0);
  const at::Tensor inverse = torch::randn({kWidth, kWidth}), q = torch::randn({queries, kWidth});
  for (auto _ : state)
    benchmark::DoNotOptimize(q.to(torch::kDouble).mm(inverse.to(torch::kDouble)).to(torch::kFloat));
}

}  // namespace

BENCHMARK(bench::matmul_peak)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(streamed_pass)
    ->Name("index/streamed_pass")
    ->Args({100000, 1, 0})
    ->Args({100000, 1000, 0})
    ->Args({1000000, 1000, 0})
    ->ArgsProduct({{100000}, {1, 1000}, {256, 4096, 16384}})  // chunk sizes around the automatic 1024
    ->ArgNames({"rows", "queries", "chunk"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MeasureProcessCPUTime();
BENCHMARK(chunk_products)
    ->Name("index/chunk_products")
    ->ArgsProduct({{1000}, {1024, 4096}})
    ->ArgNames({"queries", "chunk"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(apply_preconditioner)
    ->Name("index/apply_preconditioner")
    ->Arg(1)
    ->Arg(1000)
    ->ArgNames({"queries"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
int main(int argc, char** argv) {
  // $INFLAB_THREADS, else every core: LibTorch's own default is the physical cores.
  benchmark::AddCustomContext("libtorch_threads", std::to_string(inflab::configure_threads(0)));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
