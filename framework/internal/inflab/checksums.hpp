// Directory checksums with some files checked by size only (the framework's own; io.hpp has the
// plugin-facing form, which hashes every file).
#pragma once

#include <filesystem>
#include <functional>
#include <string>

namespace inflab {

// verify_directory_checksums(dir), except that files whose name (relative to dir) satisfies
// `size_only` are checked by their size alone: an index's shards can be gigabytes.
std::string verify_directory_checksums(const std::filesystem::path& dir,
                                       const std::function<bool(const std::string&)>& size_only);

}  // namespace inflab
