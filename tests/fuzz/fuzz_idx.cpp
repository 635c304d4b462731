// Fashion-MNIST's gzip IDX files: the gzip reader on arbitrary bytes, and the IDX parser on an
// image part and a label part (the first byte of the input says where the input is cut).
#include "fuzz_common.hpp"
#include "inflab/readers.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string bytes = fuzz::as_string(data, size);
  auto path = fuzz::write("input.gz", bytes);
  fuzz::expect_ok_or_error([&] { (void)inflab::read_gzip(path, "fuzz input"); });
  if (size == 0) return 0;
  const std::size_t cut = std::min<std::size_t>(size - 1, static_cast<std::size_t>(data[0]) * 4);
  std::string images = bytes.substr(1, cut), labels = bytes.substr(1 + cut);
  fuzz::expect_ok_or_error([&] {
    auto idx = inflab::parse_idx(images, labels, "images", "labels", 9);
    if (idx.pixels.size() != idx.count * idx.rows * idx.cols || idx.labels.size() != idx.count)
      __builtin_trap();
    for (auto label : idx.labels)
      if (label > 9) __builtin_trap();
  });
  return 0;
}
