// Shared by the libFuzzer targets: inputs that readers must refuse throw inflab::Error, which is
// the documented outcome; anything else (a crash, another exception, a sanitizer report, a hang)
// is a bug. Readers take paths, so each input is written to a per-process scratch file.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "inflab/error.hpp"

namespace fuzz {

inline std::filesystem::path scratch_dir() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("inflab-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  // Registered after `dir` is complete, so it runs before dir's destructor. libFuzzer ends with
  // exit(); a crash skips this and leaves the directory for inspection.
  static const bool cleanup_registered = std::atexit([] {
    std::error_code ignored;
    std::filesystem::remove_all(scratch_dir(), ignored);
  }) == 0;
  (void)cleanup_registered;
  return dir;
}

inline std::filesystem::path write(const std::string& name, const std::string& bytes) {
  auto path = scratch_dir() / name;
  std::filesystem::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

inline std::string as_string(const std::uint8_t* data, std::size_t size) {
  return std::string(reinterpret_cast<const char*>(data), size);
}

// Runs `body`; inflab::Error is an accepted refusal. Its message must name something.
template <class Body>
void expect_ok_or_error(Body&& body) {
  try {
    body();
  } catch (const inflab::Error& e) {
    if (std::string(e.what()).empty()) __builtin_trap();  // a refusal must say why
  }
}

}  // namespace fuzz
