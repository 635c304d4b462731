// Small helpers shared by the test files.
#pragma once
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>

#include "inflab/registry.hpp"

namespace test {

// A tiny style-conditioned denoiser run (8x8 styled digits, 6 training images per class, two
// timesteps, one epoch each of pretraining and fine-tuning); tests append their own sections.
inline const std::string kTinyDenoiserExperiment = R"([experiment]
name = "styles"
[dataset]
plugin = "styled_digits"
train_per_class = 6
test_per_class = 2
n_pretrain = 60
[model]
plugin = "ddpm_lora"
channels = [8, 8]
embedding = 8
groups = 4
[task]
name = "denoising"
timesteps = [25, 525]
[training]
epochs = 1
pretrain_epochs = 1
)";

// A fresh directory under the system temp dir, removed when the object dies.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("inflab-test-" + std::to_string(std::random_device{}()) + std::to_string(std::rand()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::filesystem::path write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name, std::ios::binary) << text;
    return path / name;
  }
};

// `text` with the first `from` replaced by `to`; a test's own text must contain `from`.
inline std::string replace(std::string text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  if (at == std::string::npos) throw std::logic_error("test text lacks '" + from + "'");
  return text.replace(at, from.size(), to);
}

struct CommandResult {
  int exit_code;
  std::string output;  // stdout and stderr
};

inline CommandResult run_command(const std::string& command) {
  CommandResult result{-1, ""};
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe)) result.output += buffer;
  int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

inline std::string plugin_dir() { return std::string(INFLAB_BUILD_DIR) + "/plugins"; }

// The built plugins, loaded once per test process.
inline inflab::Registry& registry() {
  static inflab::Registry* r = [] {
    auto* reg = new inflab::Registry;  // lives for the whole process (plugins are -z nodelete)
    reg->load_directory(plugin_dir());
    return reg;
  }();
  return *r;
}

// A plugin with its declared defaults, some options overridden.
template <class T>
std::unique_ptr<T> make(inflab::PluginKind kind, const std::string& name,
                        const std::map<std::string, inflab::Value>& set = {}) {
  auto options = inflab::default_options(name, registry().find(kind, name).info->options());
  for (const auto& [k, v] : set) options.set(k, v);
  return registry().create_as<T>(kind, name, options);
}

}  // namespace test
