// Readers of outside data files that dataset plugins share, kept in the framework so each one
// is fuzzed (tests/fuzz). No LibTorch here: plugins turn the results into tensors.
#pragma once
#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace inflab {

// A whole gzip file, decompressed. `missing_hint` says how to obtain a missing file.
std::string read_gzip(const std::filesystem::path& path, const std::string& missing_hint);

// An IDX image file (magic 2051: count, rows, cols, then uint8 pixels) and its label file
// (magic 2049: count, then uint8 labels). Labels above `max_label` are refused.
struct IdxImages {
  std::size_t count = 0, rows = 0, cols = 0;
  std::vector<std::uint8_t> pixels;  // count x rows x cols
  std::vector<std::uint8_t> labels;  // count
};
// From the decompressed bytes; `images_name` and `labels_name` appear in errors.
IdxImages parse_idx(const std::string& images, const std::string& labels, const std::string& images_name,
                    const std::string& labels_name, int max_label);
IdxImages read_idx(const std::filesystem::path& images_gz, const std::filesystem::path& labels_gz,
                   const std::string& missing_hint, int max_label);

// sklearn's digits.csv: per line 64 pixel values in 0..16, then the label 0..9.
struct DigitsTable {
  std::vector<std::array<float, 64>> images;  // pixel / 16
  std::vector<std::int64_t> labels;
};
DigitsTable parse_digits_csv(const std::string& text, const std::string& name);

}  // namespace inflab
