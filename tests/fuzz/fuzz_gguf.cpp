// GGUF files (the SmolLM2 weights' format): every tensor the reader accepts dequantizes in range.
#include <ATen/core/Tensor.h>

#include "fuzz_common.hpp"
#include "inflab/gguf.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto path = fuzz::write("input.gguf", fuzz::as_string(data, size));
  fuzz::expect_ok_or_error([&] {
    inflab::GgufFile file(path);
    for (const auto& info : file.tensors()) (void)file.dequantize(info.name).sum().item<double>();
  });
  return 0;
}
