// Distributed runs on LibTorch's c10d (the engine behind torch.distributed; Gloo on CPU, TCP).
// Ranks hold contiguous shards of the training examples; whatever an estimator sums over
// training examples is summed over ranks with these collectives. In a single process (world
// size 1) every collective is the identity, so estimators call them unconditionally.
#pragma once
#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <string>

namespace inflab {

struct Shard {
  std::int64_t begin = 0, end = 0;  // rows [begin, end)
  std::int64_t size() const { return end - begin; }
};

// Starts the process group from the torchrun-style environment: RANK and WORLD_SIZE, and either
// MASTER_ADDR/MASTER_PORT (a TCPStore served by rank 0) or INFLAB_STORE_FILE (a FileStore).
// Nothing happens when WORLD_SIZE is unset or 1. `timeout` bounds every collective: a rank that
// died or hangs makes the others fail with an error naming it instead of waiting forever.
void init_distributed_from_environment(std::chrono::milliseconds timeout);
int distributed_rank();        // 0 in a single process
int distributed_world_size();  // 1 in a single process
// This rank's share of n rows: contiguous, sizes differ by at most one, in rank order.
Shard shard_of(std::int64_t n);
Shard shard_of(std::int64_t n, int rank, int world_size);

// Collectives (in place where they take a reference). Every rank must call them in the same order.
at::Tensor& sum_over_ranks(at::Tensor& tensor);  // all_reduce(SUM)
double sum_over_ranks(double value);
std::int64_t rows_over_ranks(std::int64_t local_rows);  // the global n
// The rows of every rank, concatenated in rank order, on every rank (shards may differ in size).
at::Tensor gather_rows_over_ranks(const at::Tensor& local);
void barrier_over_ranks();

// Bytes this process has sent into all_reduce and all_gather (communication volume).
std::uint64_t distributed_bytes_communicated();

// Called with (rank, number of collectives entered so far) before each collective. Production
// code installs none; the fault-injection tests load a plugin that installs one
// (tests/plugins/fault_injection.cpp: a rank that dies or hangs at a chosen collective).
using CollectiveObserver = void (*)(int rank, std::uint64_t collective);
void set_collective_observer(CollectiveObserver observer);

}  // namespace inflab
