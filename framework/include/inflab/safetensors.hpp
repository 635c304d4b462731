// safetensors files: 8-byte little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data.
#pragma once
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <string>

namespace inflab {

// Memory-maps the file and returns every tensor as a view of it (no copy). Checks the header
// length, the JSON, each dtype, that shapes match byte ranges and that ranges lie in the file;
// errors name the file and the tensor.
std::map<std::string, at::Tensor> load_safetensors(const std::filesystem::path& path);

}  // namespace inflab
