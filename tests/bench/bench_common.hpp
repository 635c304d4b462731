// Shared by the benchmark binaries: the installed/built plugins and this machine's matmul peak.
#pragma once
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "inflab/registry.hpp"

namespace bench {

inline inflab::Registry& registry() {
  static inflab::Registry* r = [] {
    auto* reg = new inflab::Registry;
    reg->load_default_locations();
    return reg;
  }();
  return *r;
}

// A 2048^3 matmul of `type` at the configured threads: the peak the other cases are compared with.
inline void matmul_peak_of(benchmark::State& state, c10::ScalarType type) {
  const int64_t n = 2048;
  const auto options = torch::TensorOptions().dtype(type);
  auto a = torch::randn({n, n}, options), b = torch::randn({n, n}, options),
       c = torch::empty({n, n}, options);
  for (auto _ : state) {
    torch::mm_out(c, a, b);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * n * n * n * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

// float32, the case every table compares with.
inline void matmul_peak(benchmark::State& state) { matmul_peak_of(state, torch::kFloat); }

}  // namespace bench
