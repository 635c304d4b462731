// .npy files: the streaming reader and the memory-mapping reader.
#include <ATen/core/Tensor.h>

#include "fuzz_common.hpp"
#include "inflab/io.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto path = fuzz::write("input.npy", fuzz::as_string(data, size));
  fuzz::expect_ok_or_error([&] {
    at::Tensor t = inflab::load_npy(path);
    if (t.numel() > 0) (void)t.sum().item<double>();  // touch every element
  });
  fuzz::expect_ok_or_error([&] {
    at::Tensor t = inflab::map_npy(path);
    if (t.numel() > 0) (void)t.sum().item<double>();
  });
  return 0;
}
