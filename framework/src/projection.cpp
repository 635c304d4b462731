#include "inflab/projection.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <vector>

#include "inflab/error.hpp"

namespace inflab {

namespace {
// SplitMix64: a counter-based generator, so entry i of a matrix does not depend on how many were
// drawn before it, and nothing depends on ATen's CPU-specific sampling kernels.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}
double unit_open(std::uint64_t bits) { return (static_cast<double>(bits >> 11) + 0.5) * 0x1.0p-53; }
std::uint64_t name_hash(const std::string& text) {  // FNV-1a
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : text) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}
const char* kind_name(Projection::Kind kind) {
  switch (kind) {
    case Projection::Kind::none:
      return "none";
    case Projection::Kind::gaussian:
      return "gaussian";
    case Projection::Kind::sparse:
      return "sparse";
    case Projection::Kind::factorised:
      return "factorised";
  }
  return "?";
}
}  // namespace

std::string Projection::describe() const {
  return active() ? fmt::format("{} dim {} seed {}", kind_name(kind), dim, seed) : "";
}

Projection::Kind projection_kind(const std::string& name) {
  for (auto kind : {Projection::Kind::none, Projection::Kind::gaussian, Projection::Kind::sparse,
                    Projection::Kind::factorised})
    if (name == kind_name(kind)) return kind;
  throw Error(fmt::format("projection kind '{}': expected none, gaussian, sparse or factorised", name));
}

ProjectedLayer projected_layer(const Projection& projection, std::int64_t in, std::int64_t rank,
                               std::int64_t out, std::int64_t parts) {
  ProjectedLayer shape{parts * rank * in, parts * out * rank, in, out, false, false};
  if (projection.kind == Projection::Kind::factorised) {
    const std::int64_t side = std::max<std::int64_t>(1, projection.dim / rank);
    shape.side_in = std::min(in, side), shape.side_out = std::min(out, side);
    shape.width_a = parts * rank * shape.side_in, shape.width_b = parts * shape.side_out * rank;
  } else if (projection.active()) {
    shape.dense_a = shape.width_a > projection.dim, shape.dense_b = shape.width_b > projection.dim;
    shape.width_a = std::min(shape.width_a, projection.dim),
    shape.width_b = std::min(shape.width_b, projection.dim);
  }
  return shape;
}

namespace {
// Drawn once per process: the train and query splits (and `inflab explain`'s queries) reuse them.
at::Tensor draw_matrix(const Projection& projection, const std::string& block, std::int64_t rows,
                       std::int64_t cols);
}  // namespace

at::Tensor projection_matrix(const Projection& projection, const std::string& block, std::int64_t rows,
                             std::int64_t cols) {
  if (!projection.active() || rows < 1 || cols < 1)
    throw Error(fmt::format("internal: projection matrix {} x {} of block '{}' under '{}'", rows, cols, block,
                            projection.describe()));
  static std::mutex mutex;
  static std::map<std::string, at::Tensor> drawn;
  const std::string key = fmt::format("{}|{}|{}x{}", projection.describe(), block, rows, cols);
  std::lock_guard<std::mutex> lock(mutex);
  auto [it, added] = drawn.try_emplace(key);
  if (added) it->second = draw_matrix(projection, block, rows, cols);
  return it->second;
}

namespace {
at::Tensor draw_matrix(const Projection& projection, const std::string& block, std::int64_t rows,
                       std::int64_t cols) {
  const std::uint64_t stream = mix(projection.seed ^ mix(name_hash(block)));
  std::vector<double> values(static_cast<std::size_t>(rows * cols));
  const bool sparse = projection.kind == Projection::Kind::sparse;
  const double scale = sparse ? std::sqrt(3.0 / double(cols)) : 1.0 / std::sqrt(double(cols));
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double u = unit_open(mix(stream + 2 * i)), v = unit_open(mix(stream + 2 * i + 1));
    if (sparse)
      values[i] = u < 1.0 / 6 ? scale : (u < 2.0 / 6 ? -scale : 0.0);
    else  // Box-Muller
      values[i] = scale * std::sqrt(-2.0 * std::log(u)) * std::cos(2.0 * M_PI * v);
  }
  return torch::from_blob(values.data(), {rows, cols}, torch::kDouble).to(torch::kFloat);
}
}  // namespace

}  // namespace inflab
