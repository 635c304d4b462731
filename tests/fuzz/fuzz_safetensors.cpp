// safetensors files (the MiniLM weights' format).
#include <ATen/core/Tensor.h>

#include "fuzz_common.hpp"
#include "inflab/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto path = fuzz::write("input.safetensors", fuzz::as_string(data, size));
  fuzz::expect_ok_or_error([&] {
    for (auto& [name, tensor] : inflab::load_safetensors(path))
      if (tensor.numel() > 0) (void)tensor.to(c10::kDouble).sum().item<double>();  // every byte in range
  });
  return 0;
}
