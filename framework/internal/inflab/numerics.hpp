// Which numerical kernels this process computes with, and the choice between reproducible
// ("pinned") and processor-specific ("native") ones. OpenBLAS picks its GEMM kernels by processor
// and their last bits differ (SkylakeX vs Haswell); fine-tuning amplifies that into another model,
// so the same commit and experiment gave other AUCs on another processor. Pinned mode selects the
// kernels every x86-64 processor with AVX2 and FMA has: OpenBLAS's Haswell kernels, ATen's AVX2
// kernels and oneDNN limited to AVX2. docs/performance.md ("Pinned kernels") measures the price.
#pragma once
#include <string>

namespace inflab {

enum class KernelMode { Pinned, Native };

// "pinned" | "native"; anything else is an Error naming `where` (a flag, a variable or a TOML key).
KernelMode parse_kernel_mode(const std::string& text, const std::string& where);
std::string to_string(KernelMode mode);

// What this process actually runs on (read from the loaded libraries, not from the environment).
struct Numerics {
  KernelMode requested = KernelMode::Pinned;
  bool pinned = false;       // requested pinned and every pinned kernel is in use
  std::string blas;          // "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64", or another
  std::string blas_library;  // the file sgemm_ comes from
  std::string blas_kernel;   // OpenBLAS core name ("Haswell", "SkylakeX"), "" for another BLAS
  std::string aten_capability;  // "avx2", "avx512", "default"
  std::string onednn_isa;       // oneDNN's effective ISA ("avx2", "avx512_core", ...), "" if not loaded
  std::string libtorch;         // LibTorch version
  std::string processor;        // /proc/cpuinfo model name, and its widest vector extension
  std::string note;             // why pinned kernels could not be had, or what was overridden
  // What can change results, as one line: part of every stage's cache key and of run manifests.
  // It includes the current LibTorch thread count (threaded GEMMs round differently).
  std::string key() const;
  // For logs: "pinned kernels (OpenBLAS Haswell, ATen avx2, oneDNN avx2)".
  std::string summary() const;
};

// The mode asked for: `flag` (--kernels) if not empty, else $INFLAB_KERNELS, else `experiment`
// (the experiment's numerics.kernels) if not empty, else pinned.
KernelMode requested_kernel_mode(const std::string& flag, const std::string& experiment = "");

// Remembers the command line, so that select_kernels can start the process again.
void remember_command_line(int argc, char** argv);

// Makes this process compute on the kernels of `mode`. OpenBLAS reads its core type when it loads,
// before main(): when the loaded kernels differ, the environment is set and the process is started
// again from the remembered command line (once; never in a process that cannot, like Python's,
// which keeps what it has and says so). Where pinned kernels cannot be had (another BLAS, no AVX2),
// it says so once and goes on natively. Returns what the process runs on.
const Numerics& select_kernels(KernelMode mode, bool may_restart = true);

// What the process runs on now (the kernels selected, or the loaded ones if none was selected).
const Numerics& current_numerics();

}  // namespace inflab
