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

// Checksums of cache entries, so a damaged entry is recomputed rather than trusted. A checksum
// is FNV-1a over 8-byte words (fast enough to check a gigabyte store on every load) plus the size.
std::string file_checksum(const std::filesystem::path& path);  // "<16 hex digits> <bytes>"
// One file: a sidecar PATH.checksum. Write it before the file is renamed into place.
void write_checksum_sidecar(const std::filesystem::path& data_file, const std::filesystem::path& sidecar);
// A directory: DIR/CHECKSUMS lists every regular file below DIR (written last, atomically).
void write_directory_checksums(const std::filesystem::path& dir);
// "" when the entry matches its checksums; otherwise what is wrong (missing list, missing or
// changed file), for a warning.
std::string verify_checksum_sidecar(const std::filesystem::path& data_file);
std::string verify_directory_checksums(const std::filesystem::path& dir);

// Removes entries of `dir` named <anything>.tmp-<pid>[-...] whose process no longer runs: the
// temporaries of a killed run. Those of live processes (a concurrent run) are left alone.
void remove_stale_temporaries(const std::filesystem::path& dir);

}  // namespace inflab
