// GGUF files (llama.cpp's model format, versions 2 and 3): typed metadata, a tensor table and
// aligned tensor data. The file is memory-mapped; every count, length, dimension and offset is
// checked against the file before it is used, and errors name the file and the key or tensor.
// Dequantization to float32: F32, F16, Q8_0 and Q4_1 (others are an error naming the type).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace inflab {

// One metadata value. Integers of every width are `integer`, both float widths `number`.
struct GgufValue {
  enum class Kind { Integer, Number, Bool, String, Array };
  Kind kind = Kind::Integer;
  std::uint32_t gguf_type = 0;  // the type code in the file (0..12)
  std::int64_t integer = 0;
  double number = 0;
  bool boolean = false;
  std::string string;
  std::vector<GgufValue> array;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<std::int64_t> ne;  // GGUF order: ne[0] varies fastest (a matrix is ne = {in, out})
  std::uint32_t type = 0;        // ggml type code
  std::uint64_t offset = 0;      // from the start of the data section
  std::uint64_t bytes = 0;
};

// ggml's name for a type code ("Q4_1", "F32", ...; "type 99" when unknown).
std::string ggml_type_name(std::uint32_t type);

class GgufFile {
 public:
  explicit GgufFile(const std::filesystem::path& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::uint32_t version() const { return version_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  bool has(const std::string& key) const { return metadata_.count(key) != 0; }
  // Typed access; a missing key or another type is an Error naming the file and the key.
  std::int64_t get_int(const std::string& key) const;
  double get_number(const std::string& key) const;  // integers are widened
  bool get_bool(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  std::vector<std::string> get_strings(const std::string& key) const;
  std::vector<std::int64_t> get_ints(const std::string& key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo& tensor(const std::string& name) const;  // Error naming the tensor if absent
  // float32 copy in LibTorch order (reversed ne): a GGUF matrix {in, out} becomes (out, in).
  at::Tensor dequantize(const std::string& name) const;

 private:
  std::filesystem::path path_;
  std::uint32_t version_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensorInfo> tensors_;
  struct Mapping;
  std::unique_ptr<Mapping> mapping_;
  std::uint64_t data_start_ = 0;
};

}  // namespace inflab
