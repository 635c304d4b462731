#include "inflab/distributed.hpp"

#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <vector>

#include "inflab/error.hpp"

namespace inflab {

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  int rank = 0, world_size = 1;
  std::chrono::milliseconds timeout{0};
  std::uint64_t collectives = 0;  // how many this rank entered
  std::uint64_t bytes = 0;
};

Group& state() {
  static Group group;
  return group;
}

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  if (!value || !*value) return fallback;
  char* end = nullptr;
  long parsed = std::strtol(value, &end, 10);
  if (*end != '\0' || parsed < 0 || parsed > 1 << 20)
    throw Error(
        fmt::format("environment variable {}: expected a non-negative integer, found '{}'", name, value));
  return static_cast<int>(parsed);
}

CollectiveObserver& observer() {
  static CollectiveObserver value = nullptr;
  return value;
}

// Runs one collective. Each rank first records in the store how many collectives it entered, so
// when one fails (a peer died or timed out) the error can name the ranks that fell behind.
template <class Body>
void collective(const char* what, Body&& body) {
  Group& g = state();
  if (CollectiveObserver o = observer()) o(g.rank, g.collectives);
  ++g.collectives;
  try {
    const std::string count = std::to_string(g.collectives);
    g.store->set(fmt::format("inflab/entered/{}", g.rank),
                 std::vector<std::uint8_t>(count.begin(), count.end()));
    body(*g.group);
  } catch (const std::exception& e) {
    std::vector<std::string> behind;
    for (int r = 0; r < g.world_size; ++r) {
      if (r == g.rank) continue;
      std::string key = fmt::format("inflab/entered/{}", r);
      std::uint64_t entered = 0;
      try {
        if (g.store->check({key})) {
          auto bytes = g.store->get(key);
          entered = std::stoull(std::string(bytes.begin(), bytes.end()));
        }
      } catch (const std::exception&) {
        // The store itself may be gone (rank 0 serves the TCPStore): report what we know.
      }
      if (entered < g.collectives)
        behind.push_back(fmt::format("rank {} (reached collective {})", r, entered));
    }
    throw Error(fmt::format(
        "distributed {} failed on rank {} of {} at collective {} (timeout {} s): {}; {}", what, g.rank,
        g.world_size, g.collectives, g.timeout.count() / 1000.0, e.what(),
        behind.empty() ? std::string("every other rank reached it")
                       : fmt::format("not reached by {}: it died or hangs", fmt::join(behind, ", "))));
  }
}

}  // namespace

void set_collective_observer(CollectiveObserver o) { observer() = o; }

void init_distributed_from_environment(std::chrono::milliseconds timeout) {
  Group& g = state();
  if (g.group) return;
  const int world_size = env_int("WORLD_SIZE", 1);
  if (world_size <= 1) return;
  const int rank = env_int("RANK", -1);
  if (rank < 0 || rank >= world_size)
    throw Error(fmt::format("RANK must be set to 0..{} when WORLD_SIZE = {}", world_size - 1, world_size));
  g.rank = rank, g.world_size = world_size, g.timeout = timeout;
  const char* file = std::getenv("INFLAB_STORE_FILE");
  const char* address = std::getenv("MASTER_ADDR");
  try {
    if (file && *file) {
      g.store = c10::make_intrusive<c10d::FileStore>(file, world_size);
    } else if (address && *address) {
      c10d::TCPStoreOptions options;
      options.port = static_cast<std::uint16_t>(env_int("MASTER_PORT", 29500));
      options.isServer = rank == 0;
      options.numWorkers = world_size;
      options.timeout = timeout;
      g.store = c10::make_intrusive<c10d::TCPStore>(address, options);
    } else {
      throw Error(
          "WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT (TCP) or INFLAB_STORE_FILE (a shared file)");
    }
    g.store->setTimeout(timeout);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    const char* host = address && *address ? address : "127.0.0.1";
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
    options->threads = 1;
    g.group = c10::make_intrusive<c10d::ProcessGroupGloo>(g.store, rank, world_size, options);
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(fmt::format("rank {} of {} could not join the process group within {} s: {}", rank,
                            world_size, timeout.count() / 1000.0, e.what()));
  }
}

int distributed_rank() { return state().rank; }
int distributed_world_size() { return state().world_size; }

Shard shard_of(std::int64_t n, int rank, int world_size) {
  const std::int64_t base = n / world_size, extra = n % world_size;
  Shard s;
  s.begin = rank * base + std::min<std::int64_t>(rank, extra);
  s.end = s.begin + base + (rank < extra ? 1 : 0);
  return s;
}
Shard shard_of(std::int64_t n) { return shard_of(n, distributed_rank(), distributed_world_size()); }

at::Tensor& sum_over_ranks(at::Tensor& tensor) {
  if (state().world_size <= 1) return tensor;
  if (!tensor.is_contiguous()) throw Error("sum_over_ranks: the tensor must be contiguous");
  state().bytes += tensor.nbytes();
  collective("all_reduce", [&](c10d::ProcessGroupGloo& group) {
    std::vector<at::Tensor> tensors{tensor};
    group.allreduce(tensors)->wait(state().timeout);
  });
  return tensor;
}

double sum_over_ranks(double value) {
  if (state().world_size <= 1) return value;
  at::Tensor t = at::tensor({value}, at::TensorOptions().dtype(c10::kDouble));
  return sum_over_ranks(t).item<double>();
}

std::int64_t rows_over_ranks(std::int64_t local_rows) {
  if (state().world_size <= 1) return local_rows;
  at::Tensor t = at::tensor({local_rows}, at::TensorOptions().dtype(c10::kLong));
  return sum_over_ranks(t).item<std::int64_t>();
}

at::Tensor gather_rows_over_ranks(const at::Tensor& local_in) {
  Group& g = state();
  if (g.world_size <= 1) return local_in;
  at::Tensor local = local_in.contiguous();
  // Shards may differ in size: exchange the row counts, pad to the largest, trim after.
  at::Tensor counts = at::zeros({g.world_size}, at::TensorOptions().dtype(c10::kLong));
  counts[g.rank] = local.size(0);
  sum_over_ranks(counts);
  const std::int64_t largest = counts.max().item<std::int64_t>();
  std::vector<std::int64_t> shape = local.sizes().vec();
  shape[0] = largest;
  at::Tensor padded = at::zeros(shape, local.options());
  padded.narrow(0, 0, local.size(0)).copy_(local);
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < g.world_size; ++r) outputs[0].push_back(at::empty(shape, local.options()));
  g.bytes += padded.nbytes();
  collective("all_gather", [&](c10d::ProcessGroupGloo& group) {
    std::vector<at::Tensor> inputs{padded};
    group.allgather(outputs, inputs)->wait(g.timeout);
  });
  std::vector<at::Tensor> parts;
  for (int r = 0; r < g.world_size; ++r)
    parts.push_back(outputs[0][r].narrow(0, 0, counts[r].item<std::int64_t>()));
  return at::cat(parts);
}

void barrier_over_ranks() {
  if (state().world_size <= 1) return;
  collective("barrier", [&](c10d::ProcessGroupGloo& group) { group.barrier()->wait(state().timeout); });
}

std::uint64_t distributed_bytes_communicated() { return state().bytes; }

}  // namespace inflab
