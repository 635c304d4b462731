#include "inflab/runtime.hpp"

#include <ATen/Parallel.h>
#include <torch/version.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "inflab/error.hpp"

#ifndef INFLAB_VERSION
#define INFLAB_VERSION "0.0.0"
#endif
#ifndef INFLAB_SOURCE_DIR
#define INFLAB_SOURCE_DIR "."
#endif

namespace inflab {

int configure_threads(int requested) {
  int threads = requested;
  if (threads <= 0) {
    if (const char* env = std::getenv("INFLAB_THREADS"); env && *env) {
      try {
        threads = std::stoi(env);
      } catch (const std::exception&) {
        throw Error(std::string("INFLAB_THREADS: expected a positive integer, found '") + env + "'");
      }
      if (threads <= 0)
        throw Error(std::string("INFLAB_THREADS: expected a positive integer, found '") + env + "'");
    }
  }
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  return threads;
}

int current_threads() { return at::get_num_threads(); }
std::string torch_version() { return TORCH_VERSION; }
std::string inflab_version() { return INFLAB_VERSION; }
std::string git_commit() {
  // Read at run time: a compile-time value would go stale after the next commit.
  std::string command =
      std::string("git -C '") + INFLAB_SOURCE_DIR + "' rev-parse --short=12 HEAD 2>/dev/null";
  std::string out;
  if (FILE* pipe = ::popen(command.c_str(), "r")) {
    char buffer[64];
    while (std::fgets(buffer, sizeof buffer, pipe)) out += buffer;
    ::pclose(pipe);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  if (out.empty()) return "unknown";
  // Mark a tree with uncommitted changes so a manifest never overstates reproducibility.
  std::string dirty_command =
      std::string("git -C '") + INFLAB_SOURCE_DIR + "' status --porcelain --untracked-files=no 2>/dev/null";
  if (FILE* pipe = ::popen(dirty_command.c_str(), "r")) {
    char buffer[8];
    if (std::fgets(buffer, sizeof buffer, pipe)) out += "-dirty";
    ::pclose(pipe);
  }
  return out;
}

}  // namespace inflab
