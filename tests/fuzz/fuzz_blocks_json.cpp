// A gradient directory's blocks.json, next to valid train/query .npy files for blocks "w" (dim 2)
// and "v" (dim 1): whatever the JSON says, loading either works or is refused by name.
#include <ATen/core/Tensor.h>
#include <ATen/ops/ones.h>

#include "fuzz_common.hpp"
#include "inflab/gradients.hpp"
#include "inflab/io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const auto dir = [] {
    auto d = fuzz::scratch_dir() / "store";
    inflab::save_npy(d / "train" / "w.npy", at::ones({3, 2}));
    inflab::save_npy(d / "query" / "w.npy", at::ones({2, 2}));
    inflab::save_npy(d / "train" / "v.npy", at::ones({3, 1}));
    inflab::save_npy(d / "query" / "v.npy", at::ones({2, 1}));
    return d;
  }();
  fuzz::write("store/blocks.json", fuzz::as_string(data, size));
  fuzz::expect_ok_or_error([&] {
    auto store = inflab::load_gradient_store(dir);
    if (store.train.size() != store.query.size() || store.train.empty()) __builtin_trap();
    for (std::size_t b = 0; b < store.train.size(); ++b)
      if (store.train[b].values.size(1) != store.query[b].values.size(1)) __builtin_trap();
  });
  return 0;
}
