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
}  // namespace inflab
