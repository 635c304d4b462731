#include "inflab/readers.hpp"

#include <fmt/format.h>
#include <zlib.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>

#include "inflab/error.hpp"

namespace inflab {

std::string read_gzip(const std::filesystem::path& path, const std::string& missing_hint) {
  if (!std::filesystem::exists(path))
    throw Error(fmt::format("{}: missing; {}", path.string(), missing_hint));
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) throw Error(fmt::format("{}: cannot open", path.string()));
  std::string out;
  char buffer[1 << 16];
  int got;
  while ((got = gzread(file, buffer, sizeof buffer)) > 0) out.append(buffer, static_cast<std::size_t>(got));
  int error = 0;
  std::string message = gzerror(file, &error);
  gzclose(file);
  if (got < 0 || (error != Z_OK && error != Z_STREAM_END))
    throw Error(fmt::format("{}: corrupt gzip data ({})", path.string(), message));
  return out;
}

namespace {
std::uint32_t big_endian(const std::string& bytes, std::size_t offset) {
  auto byte = [&](std::size_t k) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[offset + k]));
  };
  return (byte(0) << 24) | (byte(1) << 16) | (byte(2) << 8) | byte(3);
}
}  // namespace

IdxImages parse_idx(const std::string& images, const std::string& labels, const std::string& images_name,
                    const std::string& labels_name, int max_label) {
  if (images.size() < 16 || big_endian(images, 0) != 2051)
    throw Error(fmt::format("{}: not an IDX image file (magic 2051 expected)", images_name));
  if (labels.size() < 8 || big_endian(labels, 0) != 2049)
    throw Error(fmt::format("{}: not an IDX label file (magic 2049 expected)", labels_name));
  IdxImages idx;
  idx.count = big_endian(images, 4);
  idx.rows = big_endian(images, 8);
  idx.cols = big_endian(images, 12);
  if (big_endian(labels, 4) != idx.count)
    throw Error(fmt::format("{} has {} images but {} has {} labels", images_name, idx.count, labels_name,
                            big_endian(labels, 4)));
  // Sizes come from the file: compare without overflow (each factor is below 2^32).
  const std::size_t data = images.size() - 16;
  const bool fits = idx.rows == 0 || idx.cols == 0 || idx.count == 0 ||
                    (idx.rows <= data / idx.cols && idx.count <= data / (idx.rows * idx.cols));
  if (!fits || data != idx.count * idx.rows * idx.cols)
    throw Error(
        fmt::format("{}: the header promises {} images of {} x {} pixels, the file has {} bytes of pixels",
                    images_name, idx.count, idx.rows, idx.cols, data));
  if (labels.size() - 8 != idx.count)
    throw Error(fmt::format("{}: the header promises {} labels, the file has {}", labels_name, idx.count,
                            labels.size() - 8));
  idx.pixels.assign(images.begin() + 16, images.end());
  idx.labels.assign(labels.begin() + 8, labels.end());
  for (std::size_t i = 0; i < idx.count; ++i)
    if (idx.labels[i] > max_label)
      throw Error(fmt::format("{}: label {} of example {} is outside 0..{}", labels_name, int(idx.labels[i]),
                              i, max_label));
  return idx;
}

IdxImages read_idx(const std::filesystem::path& images_gz, const std::filesystem::path& labels_gz,
                   const std::string& missing_hint, int max_label) {
  return parse_idx(read_gzip(images_gz, missing_hint), read_gzip(labels_gz, missing_hint), images_gz.string(),
                   labels_gz.string(), max_label);
}

DigitsTable parse_digits_csv(const std::string& text, const std::string& name) {
  DigitsTable table;
  std::stringstream lines(text);
  std::string line;
  for (int number = 1; std::getline(lines, line); ++number) {
    if (line.empty()) continue;
    std::stringstream fields(line);
    std::string field;
    std::vector<double> values;
    while (std::getline(fields, field, ',')) {
      char* end = nullptr;
      double value = std::strtod(field.c_str(), &end);
      if (end == field.c_str() || !std::isfinite(value))
        throw Error(fmt::format("{}:{}: expected a number, found '{}'", name, number, field));
      values.push_back(value);
    }
    if (values.size() != 65)
      throw Error(fmt::format("{}:{}: expected 65 comma-separated values (64 pixels and a label), found {}",
                              name, number, values.size()));
    std::array<float, 64> image{};
    for (int p = 0; p < 64; ++p) {
      if (values[p] < 0 || values[p] > 16)
        throw Error(fmt::format("{}:{}: pixel {} is {}, expected 0..16", name, number, p + 1, values[p]));
      image[p] = static_cast<float>(values[p] / 16.0);
    }
    if (values[64] < 0 || values[64] > 9 || values[64] != std::floor(values[64]))
      throw Error(fmt::format("{}:{}: the label is {}, expected an integer 0..9", name, number, values[64]));
    table.images.push_back(image);
    table.labels.push_back(static_cast<std::int64_t>(values[64]));
  }
  return table;
}

}  // namespace inflab
