#include "inflab/safetensors.hpp"

#include <ATen/ops/from_blob.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>

#include "inflab/error.hpp"
#include "inflab/io.hpp"

namespace fs = std::filesystem;

namespace inflab {

namespace {
struct Mapping {
  void* address = nullptr;
  std::size_t size = 0;
  ~Mapping() {
    if (address) ::munmap(address, size);
  }
};

c10::ScalarType dtype_of(const std::string& dtype, const fs::path& path, const std::string& name) {
  if (dtype == "F32") return c10::kFloat;
  if (dtype == "F16") return c10::kHalf;
  if (dtype == "BF16") return c10::kBFloat16;
  if (dtype == "F64") return c10::kDouble;
  if (dtype == "I64") return c10::kLong;
  if (dtype == "I32") return c10::kInt;
  if (dtype == "I8") return c10::kChar;
  if (dtype == "U8") return c10::kByte;
  if (dtype == "BOOL") return c10::kBool;
  throw Error(fmt::format("{}: tensor '{}' has unsupported dtype '{}'", path.string(), name, dtype));
}
}  // namespace

std::map<std::string, at::Tensor> load_safetensors(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw Error(fmt::format("{}: cannot open ({})", path.string(), std::strerror(errno)));
  const std::size_t file_size = fs::file_size(path);
  if (file_size < 8) {
    ::close(fd);
    throw Error(
        fmt::format("{}: truncated: {} bytes, not even the 8-byte header length", path.string(), file_size));
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->address = ::mmap(nullptr, file_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (mapping->address == MAP_FAILED) {
    mapping->address = nullptr;
    throw Error(fmt::format("{}: cannot memory-map ({})", path.string(), std::strerror(errno)));
  }
  mapping->size = file_size;
  const auto* bytes = static_cast<const unsigned char*>(mapping->address);
  std::uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | bytes[i];
  if (header_length > file_size - 8)
    throw Error(fmt::format("{}: header length {} exceeds the file ({} bytes): truncated or not safetensors",
                            path.string(), header_length, file_size));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(reinterpret_cast<const char*>(bytes + 8),
                                   reinterpret_cast<const char*>(bytes + 8 + header_length));
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{}: header is not valid JSON ({})", path.string(), e.what()));
  }
  if (!header.is_object()) throw Error(fmt::format("{}: header is not a JSON object", path.string()));
  const std::size_t data_start = 8 + header_length, data_size = file_size - data_start;
  std::map<std::string, at::Tensor> tensors;
  for (auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets"))
      throw Error(fmt::format("{}: tensor '{}' needs dtype, shape and data_offsets, found {}", path.string(),
                              name, entry.dump()));
    if (!entry["dtype"].is_string() || !entry["shape"].is_array() || !entry["data_offsets"].is_array())
      throw Error(
          fmt::format("{}: tensor '{}': dtype must be a string, shape and data_offsets arrays, found {}",
                      path.string(), name, entry.dump()));
    c10::ScalarType type = dtype_of(entry["dtype"].get<std::string>(), path, name);
    std::vector<std::int64_t> shape;
    std::vector<std::uint64_t> offsets;
    try {
      shape = entry["shape"].get<std::vector<std::int64_t>>();
      offsets = entry["data_offsets"].get<std::vector<std::uint64_t>>();
    } catch (const nlohmann::json::exception& e) {
      throw Error(fmt::format("{}: tensor '{}': shape and data_offsets must hold integers ({})",
                              path.string(), name, e.what()));
    }
    std::uint64_t count = 1;
    for (auto s : shape) {
      if (s < 0) throw Error(fmt::format("{}: tensor '{}' has a negative dimension", path.string(), name));
      // The byte count must not overflow into a small number that matches the range.
      if (s > 0 && count > (std::uint64_t{1} << 60) / static_cast<std::uint64_t>(s))
        throw Error(fmt::format("{}: tensor '{}' has more than 2^60 elements", path.string(), name));
      count *= static_cast<std::uint64_t>(s);
    }
    if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_size)
      throw Error(
          fmt::format("{}: tensor '{}' has data_offsets [{}] outside the {} data bytes: truncated or corrupt",
                      path.string(), name, fmt::format("{}", fmt::join(offsets, ", ")), data_size));
    if (offsets[1] - offsets[0] != count * c10::elementSize(type))
      throw Error(fmt::format("{}: tensor '{}' of shape [{}] and dtype {} needs {} bytes, its range has {}",
                              path.string(), name, fmt::format("{}", fmt::join(shape, ", ")),
                              entry["dtype"].get<std::string>(), count * c10::elementSize(type),
                              offsets[1] - offsets[0]));
    void* data = const_cast<unsigned char*>(bytes + data_start + offsets[0]);
    // Each view keeps the whole mapping alive.
    tensors[name] = at::from_blob(
        data, shape, [mapping](void*) {}, at::TensorOptions().dtype(type));
  }
  return tensors;
}

void save_safetensors(const fs::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  static const std::map<c10::ScalarType, std::string> names{
      {c10::kFloat, "F32"}, {c10::kHalf, "F16"}, {c10::kBFloat16, "BF16"}, {c10::kDouble, "F64"},
      {c10::kLong, "I64"},  {c10::kInt, "I32"},  {c10::kByte, "U8"},       {c10::kBool, "BOOL"}};
  std::vector<at::Tensor> contiguous;
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::size_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    auto type = names.find(tensor.scalar_type());
    if (type == names.end())
      throw Error(fmt::format("{}: tensor '{}' has a dtype safetensors export does not support",
                              path.string(), name));
    if (header.contains(name))
      throw Error(fmt::format("{}: tensor name '{}' given twice", path.string(), name));
    contiguous.push_back(tensor.contiguous());
    header[name] = {{"dtype", type->second},
                    {"shape", tensor.sizes().vec()},
                    {"data_offsets", {offset, offset + contiguous.back().nbytes()}}};
    offset += contiguous.back().nbytes();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the format pads the header with spaces to 8 bytes
  write_file_atomic(path, [&](std::ostream& out) {
    std::uint64_t length = text.size();
    unsigned char prefix[8];
    for (int b = 0; b < 8; ++b) prefix[b] = static_cast<unsigned char>(length >> (8 * b));  // little-endian
    out.write(reinterpret_cast<const char*>(prefix), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& t : contiguous)
      out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  });
}

}  // namespace inflab
