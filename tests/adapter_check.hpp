// Two PEFT adapter directories hold the same tensors (names and values) and configuration.
// Include after <torch/torch.h> and catch.hpp.
#pragma once
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "inflab/safetensors.hpp"

namespace test {

inline void check_same_adapter(const std::filesystem::path& expected, const std::filesystem::path& got,
                               const std::vector<std::string>& files = {"adapter_model.safetensors"}) {
  for (const auto& file : files) {
    const auto original = inflab::load_safetensors(expected / file);
    const auto written = inflab::load_safetensors(got / file);
    REQUIRE(written.size() == original.size());
    for (const auto& [name, tensor] : original) {
      INFO(file << ": " << name);
      REQUIRE(written.count(name));
      CHECK(torch::equal(written.at(name), tensor));
    }
  }
  std::ifstream a(expected / "adapter_config.json"), b(got / "adapter_config.json");
  CHECK(nlohmann::json::parse(a) == nlohmann::json::parse(b));
}

}  // namespace test
