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

// float32 2048^3 matmul at the configured threads: the peak the other cases are compared with.
inline void matmul_peak(benchmark::State& state) {
  const int64_t n = 2048;
  auto a = torch::randn({n, n}), b = torch::randn({n, n}), c = torch::empty({n, n});
  for (auto _ : state) {
    torch::mm_out(c, a, b);
    benchmark::DoNotOptimize(c.data_ptr());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * n * n * n * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

}  // namespace bench
