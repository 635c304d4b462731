// safetensors files: 8-byte little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data.
#pragma once
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace inflab {

// Memory-maps the file and returns every tensor as a view of it (no copy). Checks the header
// length, the JSON, each dtype, that shapes match byte ranges and that ranges lie in the file;
// errors name the file and the tensor.
std::map<std::string, at::Tensor> load_safetensors(const std::filesystem::path& path);

// Writes tensors (float32, float16, bfloat16, float64, int64, int32, uint8, bool) atomically, in
// the given order, streaming each tensor's memory (a memory-mapped block is not copied whole).
void save_safetensors(const std::filesystem::path& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace inflab
