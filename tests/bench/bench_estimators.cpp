// Estimator speed against this machine's own limits, measured in the same binary:
//   matmul_peak: float32 2048^3 matmul GFLOP/s at the configured threads;
//   memory_bandwidth: GB/s reading a 1 GiB float32 array.
// Each estimator case reports time for fit + scoring Q queries over n examples of one d-wide
// block, with counters GFLOP/s (useful flops) and GB/s (gradient bytes read).
//   ./inflab bench --benchmark_filter=datainf
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <thread>

#include "bench_common.hpp"
#include "inflab/registry.hpp"
#include "inflab/runtime.hpp"
#include "inflab/scoring.hpp"

namespace {

using bench::registry;

BENCHMARK(bench::matmul_peak)->Name("matmul_peak")->Unit(benchmark::kMillisecond)->UseRealTime();

void memory_bandwidth(benchmark::State& state) {
  auto x = torch::rand({1 << 28});  // 1 GiB
  for (auto _ : state) benchmark::DoNotOptimize(x.sum().item<float>());
  state.counters["GB/s"] =
      benchmark::Counter(x.nbytes() * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}
BENCHMARK(memory_bandwidth)->Unit(benchmark::kMillisecond)->UseRealTime();

struct Cost {
  double flops, bytes;
};

// Useful work per method for one block: n examples, d parameters, q queries.
Cost cost(const std::string& name, double n, double d, double q, double lissa_iterations) {
  const double read = n * d * 4;  // one pass over the float32 gradients
  if (name == "hessian_free") return {2 * n * d * q, read};
  if (name == "datainf") return {6 * n * d * q + 2 * n * d, 4 * read};  // norms, V G^T, C G, scoring
  if (name == "cg") return {0, 0};                                      // iteration count varies: time only
  if (name == "lissa")
    return {lissa_iterations * 4 * n * d * q + 2 * n * d * q, (2 * lissa_iterations + 1) * read};
  // exact: Gram or covariance (2 n d min(n,d)), Cholesky (min^3/3), solves, scoring
  double m = std::min(n, d);
  return {2 * n * d * m + m * m * m / 3 + 4 * m * m * q + 4 * n * d * q, 3 * read};
}

void estimator_case(benchmark::State& state, const std::string& name) {
  const int64_t n = state.range(0), d = state.range(1), q = state.range(2);
  torch::manual_seed(0);
  inflab::GradientBlocks train{{"block", torch::randn({n, d})}}, queries{{"block", torch::randn({q, d})}};
  auto options =
      inflab::default_options(name, registry().find(inflab::PluginKind::Estimator, name).info->options());
  const int64_t lissa_iterations = 10;  // the reference code's count; cost grows linearly with it
  if (name == "lissa") options.set("iterations", lissa_iterations);
  if (name == "exact") options.set("memory_budget_mb", 16384.0);
  for (auto _ : state) {
    auto estimator = registry().create_as<inflab::Estimator>(inflab::PluginKind::Estimator, name, options);
    estimator->fit(train);
    auto scores = inflab::score_pairwise(*estimator, train, queries);
    benchmark::DoNotOptimize(scores.data_ptr());
  }
  Cost c = cost(name, n, d, q, lissa_iterations);
  if (c.flops > 0) {
    state.counters["GFLOP/s"] =
        benchmark::Counter(c.flops * state.iterations() / 1e9, benchmark::Counter::kIsRate);
    state.counters["GB/s"] =
        benchmark::Counter(c.bytes * state.iterations() / 1e9, benchmark::Counter::kIsRate);
  }
}

void register_estimators() {
  for (std::string name : {"hessian_free", "datainf", "lissa", "exact", "cg"}) {
    auto* b =
        benchmark::RegisterBenchmark(name.c_str(), [name](benchmark::State& s) { estimator_case(s, name); });
    b->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(0.5);
    for (int64_t n : {1024, 4096, 16384})
      for (int64_t d : {1024, 8192, 32768})
        for (int64_t q : {1, 100}) {
          double m = std::min(n, d);
          // Exact's Gram/covariance costs 2 n d min(n, d) flops: skip cases over ~2.2 TFLOP here.
          if (name == "exact" && 2.0 * n * d * m > 2.2e12) continue;
          if (name == "lissa" && q == 100 && n * d > 4096 * 8192) continue;
          if (name == "cg" && n * d > 4096 * 8192) continue;  // up to 500 iterations of 2 passes each
          b->Args({n, d, q});
        }
  }
}

// LoRA block shapes: (out, in) of the linear map a block's gradient belongs to.
struct BlockShape {
  std::string name;
  int64_t out, in;
};
std::vector<BlockShape> lora_shapes() {
  std::vector<BlockShape> shapes;
  for (int64_t r : {1, 2, 4, 8}) {
    std::string rank = "_r" + std::to_string(r);
    shapes.push_back({"mlp_fc1_A" + rank, r, 784});
    shapes.push_back({"mlp_fc1_B" + rank, 128, r});
    shapes.push_back({"qv384_A" + rank, r, 384});
    shapes.push_back({"qv384_B" + rank, 384, r});
  }
  return shapes;
}

// A block of n examples with one token each, gradients delta a^T and their Kronecker factors.
inflab::GradientBlock lora_block(int64_t n, const BlockShape& shape) {
  torch::manual_seed(1);
  auto a = torch::randn({n, shape.in}), delta = torch::randn({n, shape.out}) * torch::rand({n, 1});
  inflab::GradientBlock block{
      "block", torch::einsum("no,ni->noi", {delta, a}).reshape({n, -1}).contiguous(), {}, {}};
  block.activation_covariance = a.t().mm(a) / n;
  block.gradient_covariance = delta.t().mm(delta) / n;
  return block;
}

void register_lora_blocks() {
  const int64_t n = 4096;
  for (std::string name : {"datainf", "exact", "kfac", "ekfac", "cg"})
    for (const auto& shape : lora_shapes()) {
      std::string fit_name = "fit/" + name + "/" + shape.name,
                  query_name = "query/" + name + "/" + shape.name;
      benchmark::RegisterBenchmark(
          fit_name.c_str(),
          [name, shape, n](benchmark::State& state) {
            inflab::GradientBlocks train{lora_block(n, shape)};
            auto options = inflab::default_options(
                name, registry().find(inflab::PluginKind::Estimator, name).info->options());
            for (auto _ : state) {
              auto estimator =
                  registry().create_as<inflab::Estimator>(inflab::PluginKind::Estimator, name, options);
              estimator->fit(train);
            }
            // What K-FAC/EK-FAC keep per block: two eigenbases (float64) and out x in eigenvalues.
            double factor_bytes = 8.0 * (shape.in * shape.in + shape.out * shape.out + shape.in + shape.out +
                                         shape.in * shape.out);
            if (name == "kfac" || name == "ekfac") state.counters["factor_bytes"] = factor_bytes;
            state.counters["d"] = static_cast<double>(shape.in * shape.out);
          })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->MinTime(0.2);
      benchmark::RegisterBenchmark(
          query_name.c_str(),
          [name, shape, n](benchmark::State& state) {
            inflab::GradientBlocks train{lora_block(n, shape)};
            inflab::GradientBlocks queries{{"block", torch::randn({1, shape.in * shape.out}), {}, {}}};
            auto options = inflab::default_options(
                name, registry().find(inflab::PluginKind::Estimator, name).info->options());
            auto estimator =
                registry().create_as<inflab::Estimator>(inflab::PluginKind::Estimator, name, options);
            estimator->fit(train);
            for (auto _ : state)
              benchmark::DoNotOptimize(inflab::score_pairwise(*estimator, train, queries).data_ptr());
          })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->MinTime(0.2);
    }
}

}  // namespace

int main(int argc, char** argv) {
  int threads = inflab::configure_threads(0);
  benchmark::AddCustomContext("libtorch_threads", std::to_string(threads));
  register_estimators();
  register_lora_blocks();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
