#include "inflab/io.hpp"

#include <ATen/ops/empty.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>

#include "inflab/error.hpp"

namespace fs = std::filesystem;

namespace inflab {

void write_file_atomic(const fs::path& path, const std::string& contents) {
  if (path.has_parent_path()) fs::create_directories(path.parent_path());
  fs::path temporary = path;
  temporary += fmt::format(".tmp-{}-{}", ::getpid(), std::random_device{}());
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(fmt::format("cannot write {}: {}", temporary.string(), std::strerror(errno)));
    out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
    out.flush();
    if (!out) {
      fs::remove(temporary);
      throw Error(fmt::format("writing {} failed (disk full?)", temporary.string()));
    }
  }
  std::error_code error;
  fs::rename(temporary, path, error);
  if (error) {
    fs::remove(temporary);
    throw Error(fmt::format("cannot replace {}: {}", path.string(), error.message()));
  }
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read {}: {}", path.string(), std::strerror(errno)));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

namespace {
struct NpyType {
  const char* descr;
  c10::ScalarType type;
};
const NpyType kNpyTypes[] = {
    {"<f4", c10::kFloat}, {"<f8", c10::kDouble}, {"<f2", c10::kHalf}, {"<i8", c10::kLong},
    {"<i4", c10::kInt},   {"|b1", c10::kBool},   {"|u1", c10::kByte},
};
}  // namespace

std::string npy_bytes(const at::Tensor& tensor_in) {
  at::Tensor tensor = tensor_in.contiguous();
  const char* descr = nullptr;
  for (const auto& t : kNpyTypes)
    if (t.type == tensor.scalar_type()) descr = t.descr;
  if (!descr) throw Error(fmt::format("save_npy: unsupported dtype {}", c10::toString(tensor.scalar_type())));
  std::string shape;
  for (auto size : tensor.sizes()) shape += std::to_string(size) + ", ";
  if (tensor.dim() == 1) shape.pop_back();  // "(n,)"
  else if (!shape.empty()) shape.erase(shape.size() - 2);
  std::string header =
      fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, shape);
  std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  out.push_back(static_cast<char>(header.size() & 0xff));
  out.push_back(static_cast<char>(header.size() >> 8));
  out += header;
  out.append(static_cast<const char*>(tensor.data_ptr()), tensor.nbytes());
  return out;
}

void save_npy(const fs::path& path, const at::Tensor& tensor) {
  write_file_atomic(path, npy_bytes(tensor));
}

at::Tensor load_npy(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open ({})", path.string(), std::strerror(errno)));
  char magic[8];
  if (!in.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw Error(fmt::format("{}: not a .npy file (missing the \\x93NUMPY magic)", path.string()));
  std::uint32_t header_length = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    header_length = b[0] | (b[1] << 8);
  } else if (magic[6] == 2 || magic[6] == 3) {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    header_length = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<std::uint32_t>(b[3]) << 24);
  } else {
    throw Error(fmt::format("{}: unsupported .npy format version {}", path.string(), int(magic[6])));
  }
  std::string header(header_length, '\0');
  if (!in.read(header.data(), header_length))
    throw Error(fmt::format("{}: truncated .npy header", path.string()));
  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr'\\s*:\\s*'([^']+)'")))
    throw Error(fmt::format("{}: .npy header has no 'descr': {}", path.string(), header));
  std::string descr = m[1];
  if (std::regex_search(header, m, std::regex("'fortran_order'\\s*:\\s*True")))
    throw Error(fmt::format("{}: Fortran-ordered arrays are not supported; save with "
                            "numpy.ascontiguousarray first", path.string()));
  if (!std::regex_search(header, m, std::regex("'shape'\\s*:\\s*\\(([^)]*)\\)")))
    throw Error(fmt::format("{}: .npy header has no 'shape': {}", path.string(), header));
  std::vector<std::int64_t> shape;
  std::string dims = m[1];
  std::regex number("[0-9]+");
  for (auto it = std::sregex_iterator(dims.begin(), dims.end(), number);
       it != std::sregex_iterator(); ++it)
    shape.push_back(std::stoll(it->str()));
  if (descr == "<f4" || descr == "=f4") descr = "<f4";
  c10::ScalarType type = c10::ScalarType::Undefined;
  for (const auto& t : kNpyTypes)
    if (descr == t.descr) type = t.type;
  if (descr == "=f8") type = c10::kDouble;
  if (descr == "<i1" || descr == "|i1") type = c10::kChar;
  if (type == c10::ScalarType::Undefined)
    throw Error(fmt::format("{}: unsupported dtype '{}' (expected little-endian float32, "
                            "float64, float16, int64, int32 or bool)", path.string(), descr));
  at::Tensor tensor = at::empty(shape, at::TensorOptions().dtype(type));
  auto bytes = static_cast<std::streamsize>(tensor.nbytes());
  if (!in.read(static_cast<char*>(tensor.data_ptr()), bytes))
    throw Error(fmt::format("{}: truncated: the header promises {} bytes of data, the file has {}",
                            path.string(), bytes, in.gcount()));
  return tensor;
}

std::string content_hash(const std::string& text) {
  std::uint64_t hash = 14695981039346656037ULL;  // FNV-1a 64 offset basis
  for (unsigned char c : text) hash = (hash ^ c) * 1099511628211ULL;
  return fmt::format("{:016x}", hash);
}

}  // namespace inflab
