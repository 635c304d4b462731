// The CSV/TSV readers: sklearn's digits.csv, the labelled text TSVs, and a user's JSON lines or CSV.
#include <cmath>

#include "fuzz_common.hpp"
#include "inflab/readers.hpp"
#include "inflab/splits.hpp"
#include "inflab/text_records.hpp"

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
  for (const char* format : {"jsonl", "csv"})  // a user's text file (dataset text_file)
    fuzz::expect_ok_or_error([&] {
      auto records = inflab::parse_text_records(text, format, {"text", "", "label"}, "input");
      if (records.values.size() != records.lines.size()) __builtin_trap();
      for (const auto& values : records.values)
        if (values.size() != 3 || !values[1].empty()) __builtin_trap();
      for (std::size_t r = 1; r < records.lines.size(); ++r)
        if (records.lines[r] <= records.lines[r - 1]) __builtin_trap();
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
