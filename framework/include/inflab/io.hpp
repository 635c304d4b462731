// Files: atomic writes, .npy read/write, content hashing.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

namespace inflab {

// Writes to a temporary file in the same directory, then renames: readers never see a
// partial file, and an interrupted run leaves the previous version intact.
void write_file_atomic(const std::filesystem::path& path, const std::string& contents);
void write_file_atomic(const std::filesystem::path& path, const std::function<void(std::ostream&)>& write);
std::string read_file(const std::filesystem::path& path);

// NumPy .npy (format 1.0/2.0/3.0, little-endian float32/float64/int64/int32/bool/float16).
void save_npy(const std::filesystem::path& path, const at::Tensor& tensor);  // atomic
at::Tensor load_npy(const std::filesystem::path& path);                      // errors name the file
// The file's data as a tensor without reading it: pages load on demand (copy-on-write).
at::Tensor map_npy(const std::filesystem::path& path);
// A new .npy of this shape whose data is the returned tensor: writes go to the file.
at::Tensor create_mapped_npy(const std::filesystem::path& path, const std::vector<std::int64_t>& shape,
                             c10::ScalarType type);
std::string npy_bytes(const at::Tensor& tensor);

// 64-bit FNV-1a as 16 hex digits: cache keys from canonical config text.
std::string content_hash(const std::string& text);

}  // namespace inflab
