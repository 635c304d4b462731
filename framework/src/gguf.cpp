// GGUF reader and dequantizers (inflab/gguf.hpp). Layout (ggml/docs/gguf.md): magic "GGUF",
// uint32 version, uint64 tensor count, uint64 metadata count, metadata (string key, uint32 type,
// value), tensor infos (string name, uint32 n_dims, uint64 ne[n_dims], uint32 type, uint64
// offset), padding to general.alignment (32), tensor data. Little-endian throughout.
#include "inflab/gguf.hpp"

#include <ATen/ops/empty.h>
#include <c10/util/Half.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "inflab/error.hpp"

namespace fs = std::filesystem;

namespace inflab {

namespace {

enum : std::uint32_t { kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8 };

// Elements per block and bytes per block of the types this reader knows the size of.
struct TypeLayout {
  const char* name;
  std::uint64_t block, bytes;
};
const TypeLayout* layout_of(std::uint32_t type) {
  static const std::map<std::uint32_t, TypeLayout> layouts{
      {0, {"F32", 1, 4}},       {1, {"F16", 1, 2}},       {2, {"Q4_0", 32, 18}},    {3, {"Q4_1", 32, 20}},
      {6, {"Q5_0", 32, 22}},    {7, {"Q5_1", 32, 24}},    {8, {"Q8_0", 32, 34}},    {9, {"Q8_1", 32, 36}},
      {10, {"Q2_K", 256, 84}},  {11, {"Q3_K", 256, 110}}, {12, {"Q4_K", 256, 144}}, {13, {"Q5_K", 256, 176}},
      {14, {"Q6_K", 256, 210}}, {15, {"Q8_K", 256, 292}}, {24, {"I8", 1, 1}},       {25, {"I16", 1, 2}},
      {26, {"I32", 1, 4}},      {27, {"I64", 1, 8}},      {28, {"F64", 1, 8}},      {30, {"BF16", 1, 2}}};
  auto it = layouts.find(type);
  return it == layouts.end() ? nullptr : &it->second;
}

// A bounds-checked little-endian cursor over the mapped file.
class Cursor {
 public:
  Cursor(const unsigned char* data, std::uint64_t size, const fs::path& path)
      : data_(data), size_(size), path_(path) {}
  std::uint64_t position() const { return position_; }
  std::uint64_t remaining() const { return size_ - position_; }
  void need(std::uint64_t bytes, const std::string& what) const {
    if (bytes > remaining())
      throw Error(fmt::format("{}: truncated at byte {}: {} needs {} bytes, {} remain", path_.string(),
                              position_, what, bytes, remaining()));
  }
  template <class T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, data_ + position_, sizeof(T));
    position_ += sizeof(T);
    return value;
  }
  std::string string(const std::string& what) {
    auto length = read<std::uint64_t>(what + " (length)");
    need(length, what);
    std::string out(reinterpret_cast<const char*>(data_ + position_), length);
    position_ += length;
    return out;
  }

 private:
  const unsigned char* data_;
  std::uint64_t size_, position_ = 0;
  const fs::path& path_;
};

GgufValue read_value(Cursor& in, std::uint32_t type, const std::string& key, const fs::path& path,
                     int depth) {
  GgufValue v;
  v.gguf_type = type;
  const std::string what = "value of '" + key + "'";
  auto integer = [&](std::int64_t x) {
    v.kind = GgufValue::Kind::Integer;
    v.integer = x;
  };
  switch (type) {
    case 0:
      integer(in.read<std::uint8_t>(what));
      break;
    case 1:
      integer(in.read<std::int8_t>(what));
      break;
    case 2:
      integer(in.read<std::uint16_t>(what));
      break;
    case 3:
      integer(in.read<std::int16_t>(what));
      break;
    case 4:
      integer(in.read<std::uint32_t>(what));
      break;
    case 5:
      integer(in.read<std::int32_t>(what));
      break;
    case 6:
      v.kind = GgufValue::Kind::Number, v.number = in.read<float>(what);
      break;
    case 7: {
      auto b = in.read<std::uint8_t>(what);
      if (b > 1)
        throw Error(fmt::format("{}: '{}': a boolean must be 0 or 1, found {}", path.string(), key, b));
      v.kind = GgufValue::Kind::Bool, v.boolean = b == 1;
      break;
    }
    case 8:
      v.kind = GgufValue::Kind::String, v.string = in.string(what);
      break;
    case 9: {
      if (depth > 4) throw Error(fmt::format("{}: '{}': arrays nested deeper than 4", path.string(), key));
      auto element_type = in.read<std::uint32_t>(what + " (element type)");
      auto count = in.read<std::uint64_t>(what + " (element count)");
      // Every element takes at least one byte: a count beyond the rest of the file is corrupt.
      if (count > in.remaining())
        throw Error(fmt::format("{}: '{}': array of {} elements in {} remaining bytes", path.string(), key,
                                count, in.remaining()));
      v.kind = GgufValue::Kind::Array;
      v.array.reserve(count);
      for (std::uint64_t i = 0; i < count; ++i)
        v.array.push_back(read_value(in, element_type, key, path, depth + 1));
      break;
    }
    case 10: {
      auto x = in.read<std::uint64_t>(what);
      if (x > static_cast<std::uint64_t>(INT64_MAX))
        throw Error(fmt::format("{}: '{}': {} does not fit in int64", path.string(), key, x));
      integer(static_cast<std::int64_t>(x));
      break;
    }
    case 11:
      integer(in.read<std::int64_t>(what));
      break;
    case 12:
      v.kind = GgufValue::Kind::Number, v.number = in.read<double>(what);
      break;
    default:
      throw Error(
          fmt::format("{}: '{}' has unknown value type {} (expected 0..12)", path.string(), key, type));
  }
  return v;
}

float half_to_float(const unsigned char* p) {
  std::uint16_t bits;
  std::memcpy(&bits, p, 2);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

}  // namespace

std::string ggml_type_name(std::uint32_t type) {
  const TypeLayout* layout = layout_of(type);
  return layout ? layout->name : fmt::format("type {}", type);
}

struct GgufFile::Mapping {
  void* address = nullptr;
  std::size_t size = 0;
  ~Mapping() {
    if (address) ::munmap(address, size);
  }
};

GgufFile::~GgufFile() = default;

GgufFile::GgufFile(const fs::path& path) : path_(path), mapping_(std::make_unique<Mapping>()) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error(fmt::format("{}: cannot open ({})", path.string(), std::strerror(errno)));
  std::error_code error;
  const auto file_size = fs::file_size(path, error);
  if (error || file_size < 24) {
    ::close(fd);
    throw Error(fmt::format("{}: not a GGUF file ({} bytes; the header alone is 24)", path.string(),
                            error ? 0 : file_size));
  }
  mapping_->address = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping_->address == MAP_FAILED) {
    mapping_->address = nullptr;
    throw Error(fmt::format("{}: cannot memory-map ({})", path.string(), std::strerror(errno)));
  }
  mapping_->size = file_size;
  const auto* bytes = static_cast<const unsigned char*>(mapping_->address);
  if (std::memcmp(bytes, "GGUF", 4) != 0)
    throw Error(fmt::format("{}: not a GGUF file (the first bytes are not \"GGUF\")", path.string()));
  Cursor in(bytes, file_size, path_);
  in.read<std::uint32_t>("magic");
  version_ = in.read<std::uint32_t>("version");
  if (version_ != 2 && version_ != 3)
    throw Error(
        fmt::format("{}: GGUF version {}; this reader knows versions 2 and 3", path.string(), version_));
  const auto tensor_count = in.read<std::uint64_t>("tensor count");
  const auto metadata_count = in.read<std::uint64_t>("metadata count");
  if (tensor_count > file_size || metadata_count > file_size)
    throw Error(fmt::format("{}: {} tensors and {} metadata entries cannot fit in {} bytes", path.string(),
                            tensor_count, metadata_count, file_size));
  for (std::uint64_t k = 0; k < metadata_count; ++k) {
    std::string key = in.string(fmt::format("metadata key {}", k));
    auto type = in.read<std::uint32_t>("type of '" + key + "'");
    GgufValue value = read_value(in, type, key, path_, 0);
    if (!metadata_.emplace(key, std::move(value)).second)
      throw Error(fmt::format("{}: metadata key '{}' appears twice", path.string(), key));
  }
  std::uint64_t alignment = 32;
  if (has("general.alignment")) {
    const std::int64_t a = get_int("general.alignment");
    if (a <= 0 || (a & (a - 1)) != 0 || a > (1 << 20))
      throw Error(fmt::format("{}: general.alignment = {}; expected a power of two", path.string(), a));
    alignment = static_cast<std::uint64_t>(a);
  }
  for (std::uint64_t t = 0; t < tensor_count; ++t) {
    GgufTensorInfo info;
    info.name = in.string(fmt::format("name of tensor {}", t));
    auto dims = in.read<std::uint32_t>("dimensions of '" + info.name + "'");
    if (dims == 0 || dims > 4)
      throw Error(
          fmt::format("{}: tensor '{}' has {} dimensions (expected 1..4)", path.string(), info.name, dims));
    std::uint64_t elements = 1;
    for (std::uint32_t d = 0; d < dims; ++d) {
      auto n = in.read<std::uint64_t>("shape of '" + info.name + "'");
      if (n == 0 || n > (std::uint64_t{1} << 40) || elements > (std::uint64_t{1} << 40) / n)
        throw Error(fmt::format("{}: tensor '{}' has dimension {} = {} (empty or too large)", path.string(),
                                info.name, d, n));
      elements *= n;
      info.ne.push_back(static_cast<std::int64_t>(n));
    }
    info.type = in.read<std::uint32_t>("type of '" + info.name + "'");
    info.offset = in.read<std::uint64_t>("offset of '" + info.name + "'");
    const TypeLayout* layout = layout_of(info.type);
    if (!layout)
      throw Error(
          fmt::format("{}: tensor '{}' has unknown ggml type {}", path.string(), info.name, info.type));
    if (static_cast<std::uint64_t>(info.ne[0]) % layout->block != 0)
      throw Error(
          fmt::format("{}: tensor '{}' ({}) has rows of {} elements, not a multiple of its block of {}",
                      path.string(), info.name, layout->name, info.ne[0], layout->block));
    info.bytes = elements / layout->block * layout->bytes;
    if (info.offset % alignment != 0)
      throw Error(fmt::format("{}: tensor '{}' starts at offset {}, not a multiple of the alignment {}",
                              path.string(), info.name, info.offset, alignment));
    for (const auto& other : tensors_)
      if (other.name == info.name)
        throw Error(fmt::format("{}: tensor '{}' appears twice", path.string(), info.name));
    tensors_.push_back(std::move(info));
  }
  data_start_ = (in.position() + alignment - 1) / alignment * alignment;
  for (const auto& info : tensors_)
    if (data_start_ > file_size || info.offset > file_size - data_start_ ||
        info.bytes > file_size - data_start_ - info.offset)
      throw Error(
          fmt::format("{}: tensor '{}' ({} bytes at offset {}) lies beyond the end of the file "
                      "({} bytes): truncated?",
                      path.string(), info.name, info.bytes, info.offset, file_size));
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
  for (const auto& info : tensors_)
    if (info.name == name) return info;
  throw Error(fmt::format("{}: no tensor named '{}' ({} tensors in the file)", path_.string(), name,
                          tensors_.size()));
}

namespace {
[[noreturn]] void wrong_type(const fs::path& path, const std::string& key, const char* expected,
                             const GgufValue& v) {
  throw Error(fmt::format("{}: metadata '{}': expected {}, found GGUF type {}", path.string(), key, expected,
                          v.gguf_type));
}
const GgufValue& find(const std::map<std::string, GgufValue>& metadata, const fs::path& path,
                      const std::string& key) {
  auto it = metadata.find(key);
  if (it == metadata.end()) throw Error(fmt::format("{}: no metadata key '{}'", path.string(), key));
  return it->second;
}
}  // namespace

std::int64_t GgufFile::get_int(const std::string& key) const {
  const GgufValue& v = find(metadata_, path_, key);
  if (v.kind != GgufValue::Kind::Integer) wrong_type(path_, key, "an integer", v);
  return v.integer;
}
double GgufFile::get_number(const std::string& key) const {
  const GgufValue& v = find(metadata_, path_, key);
  if (v.kind == GgufValue::Kind::Integer) return static_cast<double>(v.integer);
  if (v.kind != GgufValue::Kind::Number) wrong_type(path_, key, "a number", v);
  return v.number;
}
bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue& v = find(metadata_, path_, key);
  if (v.kind != GgufValue::Kind::Bool) wrong_type(path_, key, "a boolean", v);
  return v.boolean;
}
const std::string& GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = find(metadata_, path_, key);
  if (v.kind != GgufValue::Kind::String) wrong_type(path_, key, "a string", v);
  return v.string;
}
std::vector<std::string> GgufFile::get_strings(const std::string& key) const {
  const GgufValue& v = find(metadata_, path_, key);
  if (v.kind != GgufValue::Kind::Array) wrong_type(path_, key, "an array of strings", v);
  std::vector<std::string> out;
  out.reserve(v.array.size());
  for (const auto& e : v.array) {
    if (e.kind != GgufValue::Kind::String) wrong_type(path_, key, "an array of strings", e);
    out.push_back(e.string);
  }
  return out;
}
std::vector<std::int64_t> GgufFile::get_ints(const std::string& key) const {
  const GgufValue& v = find(metadata_, path_, key);
  if (v.kind != GgufValue::Kind::Array) wrong_type(path_, key, "an array of integers", v);
  std::vector<std::int64_t> out;
  out.reserve(v.array.size());
  for (const auto& e : v.array) {
    if (e.kind != GgufValue::Kind::Integer) wrong_type(path_, key, "an array of integers", e);
    out.push_back(e.integer);
  }
  return out;
}

at::Tensor GgufFile::dequantize(const std::string& name) const {
  const GgufTensorInfo& info = tensor(name);
  std::vector<std::int64_t> shape(info.ne.rbegin(), info.ne.rend());
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(c10::kFloat));
  float* x = out.data_ptr<float>();
  const auto* data = static_cast<const unsigned char*>(mapping_->address) + data_start_ + info.offset;
  const std::int64_t n = out.numel();
  switch (info.type) {
    case kF32:
      std::memcpy(x, data, static_cast<std::size_t>(n) * 4);
      break;
    case kF16:
      for (std::int64_t i = 0; i < n; ++i) x[i] = half_to_float(data + 2 * i);
      break;
    case kQ8_0:  // blocks of 32: half scale d, 32 x int8 q; x = d q
      for (std::int64_t b = 0; b < n / 32; ++b) {
        const unsigned char* block = data + 34 * b;
        const float d = half_to_float(block);
        for (int j = 0; j < 32; ++j)
          x[32 * b + j] = d * static_cast<float>(static_cast<std::int8_t>(block[2 + j]));
      }
      break;
    case kQ4_1:  // blocks of 32: half d, half m, 16 bytes; low nibbles are elements 0-15, high 16-31
      for (std::int64_t b = 0; b < n / 32; ++b) {
        const unsigned char* block = data + 20 * b;
        const float d = half_to_float(block), m = half_to_float(block + 2);
        for (int j = 0; j < 16; ++j) {
          x[32 * b + j] = static_cast<float>(block[4 + j] & 0x0F) * d + m;
          x[32 * b + j + 16] = static_cast<float>(block[4 + j] >> 4) * d + m;
        }
      }
      break;
    default:
      throw Error(fmt::format("{}: tensor '{}' is {}; inflab dequantizes F32, F16, Q8_0 and Q4_1",
                              path_.string(), name, ggml_type_name(info.type)));
  }
  return out;
}

}  // namespace inflab
