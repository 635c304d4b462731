// The prepared CSV/TSV datasets: sklearn's digits.csv and the labelled text TSVs.
#include <cmath>

#include "fuzz_common.hpp"
#include "inflab/readers.hpp"
#include "inflab/splits.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string text = fuzz::as_string(data, size);
  fuzz::expect_ok_or_error([&] {
    auto table = inflab::parse_digits_csv(text, "digits.csv");
    if (table.images.size() != table.labels.size()) __builtin_trap();
    for (const auto& image : table.images)
      for (float p : image)
        if (!(p >= 0 && p <= 1)) __builtin_trap();
    for (auto label : table.labels)
      if (label < 0 || label > 9) __builtin_trap();
  });
  auto path = fuzz::write("input.tsv", text);
  fuzz::expect_ok_or_error([&] {
    auto texts = inflab::read_labeled_tsv(path.string(), "label", "text", "neg", "pos", "./inflab setup");
    if (texts.texts.size() != texts.labels.size()) __builtin_trap();
    for (auto label : texts.labels)
      if (label != 0 && label != 1) __builtin_trap();
  });
  return 0;
}
