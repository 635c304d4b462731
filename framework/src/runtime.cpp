#include "inflab/runtime.hpp"

#include <ATen/Parallel.h>
#include <torch/version.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "inflab/error.hpp"

#ifndef INFLAB_VERSION
#define INFLAB_VERSION "0.0.0"
#endif

namespace inflab {

int configure_threads(int requested) {
  constexpr int kMaxThreads = 4096;  // as --threads: beyond it, a typo, not a machine
  if (requested > kMaxThreads)
    throw Error("threads: expected an integer in [1, 4096] (0: $INFLAB_THREADS or every core), found " +
                std::to_string(requested));
  int threads = requested;
  if (threads <= 0) {
    if (const char* env = std::getenv("INFLAB_THREADS"); env && *env) {
      try {
        std::size_t used = 0;
        threads = std::stoi(env, &used);
        if (env[used] != '\0') threads = -1;  // "2x": not a number
      } catch (const std::exception&) {
        throw Error(std::string("INFLAB_THREADS: expected an integer in [1, 4096], found '") + env + "'");
      }
      if (threads <= 0 || threads > kMaxThreads)
        throw Error(std::string("INFLAB_THREADS: expected an integer in [1, 4096], found '") + env + "'");
    }
  }
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  return threads;
}

int current_threads() { return at::get_num_threads(); }
std::string torch_version() { return TORCH_VERSION; }
std::string inflab_version() { return INFLAB_VERSION; }
}  // namespace inflab
