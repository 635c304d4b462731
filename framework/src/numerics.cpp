#include "inflab/numerics.hpp"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <dlfcn.h>
#include <fmt/format.h>
#include <torch/version.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <vector>

#include "inflab/error.hpp"

namespace inflab {

namespace {

// The kernels pinned mode selects: present on every x86-64 processor with AVX2 and FMA. OpenBLAS
// reads its variable when it loads; ATen and oneDNN read theirs at their first use. The same table
// stands in the launcher (preset_pinned_kernels in ./inflab) and in framework/python/inflab/__init__.py
// (_pin_kernels_if_unloaded), which must set it before this library loads: change all three together.
constexpr const char* kPinnedOpenblasCore = "Haswell";
struct PinnedVariable {
  const char* name;
  const char* value;
};
constexpr PinnedVariable kPinnedVariables[] = {{"OPENBLAS_CORETYPE", kPinnedOpenblasCore},
                                               {"ATEN_CPU_CAPABILITY", "avx2"},
                                               {"ONEDNN_MAX_CPU_ISA", "AVX2"},
                                               {"DNNL_MAX_CPU_ISA", "AVX2"}};
// The launcher sets these variables before the binary starts (which saves it a restart) and keeps
// what they were in INFLAB_PRESET_<NAME> ("<unset>" for none), so native mode can undo it.
constexpr const char* kPresetPrefix = "INFLAB_PRESET_";
constexpr const char* kUnset = "<unset>";
// Set in the environment of a process started again by select_kernels (no second restart), and
// what the environment had asked for before pinned mode overrode it (for the note).
constexpr const char* kRestartedVariable = "INFLAB_KERNELS_RESTARTED";
constexpr const char* kOverriddenVariable = "INFLAB_KERNELS_OVERRODE";

std::vector<std::string>& command_line() {
  static std::vector<std::string> arguments;
  return arguments;
}

template <typename Function>
Function library_symbol(const char* name) {
  return reinterpret_cast<Function>(dlsym(RTLD_DEFAULT, name));
}

std::string environment(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

// "Intel(R) Xeon(R) Processor, family 6 model 167" (a virtual machine's name alone says little).
std::string processor_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line, name = "unknown processor", family, model;
  auto value = [&line] {
    const auto colon = line.find(':');
    return colon == std::string::npos ? std::string() : line.substr(line.find_first_not_of(" \t", colon + 1));
  };
  while (std::getline(cpuinfo, line) && !line.empty()) {
    if (line.rfind("model name", 0) == 0)
      name = value();
    else if (line.rfind("cpu family", 0) == 0)
      family = value();
    else if (line.rfind("model\t", 0) == 0 || line.rfind("model ", 0) == 0)
      model = value();
  }
  return family.empty() ? name : fmt::format("{}, family {} model {}", name, family, model);
}

bool has_avx2_and_fma() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

std::string widest_vector_extension() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return "AVX-512";
  if (__builtin_cpu_supports("avx2")) return "AVX2";
  if (__builtin_cpu_supports("avx")) return "AVX";
  return "SSE";
#else
  return "not x86-64";
#endif
}

// ATen's dispatch level, as at::show_config() reports it (get_cpu_capability is not exported).
std::string aten_capability() {
  const std::string config = at::show_config();
  const std::string marker = "CPU capability usage: ";
  const auto at = config.find(marker);
  if (at == std::string::npos) return "unknown";
  const auto end = config.find('\n', at);
  std::string value = config.substr(at + marker.size(), end - at - marker.size());
  for (char& c : value) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return value;
}

// oneDNN's ISA (dnnl_cpu_isa_t of oneDNN 2.x). Reading it fixes oneDNN's maximum for the process,
// so it is read only after the environment is set.
std::string onednn_isa() {
  using Query = int (*)();
  auto query = library_symbol<Query>("dnnl_get_effective_cpu_isa");
  if (!query) return "";
  switch (query()) {
    case 0x1:
      return "sse41";
    case 0x3:
      return "avx";
    case 0x7:
      return "avx2";
    case 0x407:
      return "avx2_vnni";
    case 0x27:
      return "avx512_core";
    case 0x67:
      return "avx512_core_vnni";
    case 0xe7:
      return "avx512_core_bf16";
    case 0x3e7:
      return "avx512_core_amx";
    default:
      return fmt::format("isa 0x{:x}", query());
  }
}

std::string blas_library() {
  void* sgemm = dlsym(RTLD_DEFAULT, "sgemm_");
  Dl_info info{};
  if (sgemm && dladdr(sgemm, &info) && info.dli_fname) {
    char resolved[4096];
    if (realpath(info.dli_fname, resolved)) return resolved;
    return info.dli_fname;
  }
  return "unknown";
}

Numerics read_numerics(KernelMode requested, const std::string& note) {
  Numerics n;
  n.requested = requested;
  n.note = note;
  using Text = char* (*)();
  if (auto config = library_symbol<Text>("openblas_get_config")) {
    n.blas = config();
    if (auto core = library_symbol<Text>("openblas_get_corename")) n.blas_kernel = core();
  } else {
    n.blas = "not OpenBLAS";
  }
  n.blas_library = blas_library();
  n.aten_capability = aten_capability();
  n.onednn_isa = at::hasMKLDNN() ? onednn_isa() : "";
  n.libtorch = TORCH_VERSION;
  n.processor = fmt::format("{} ({})", processor_model(), widest_vector_extension());
  n.pinned = requested == KernelMode::Pinned && n.blas_kernel == kPinnedOpenblasCore &&
             n.aten_capability == "avx2" && (n.onednn_isa.empty() || n.onednn_isa == "avx2");
  return n;
}

std::optional<Numerics>& selected() {
  static std::optional<Numerics> numerics;
  return numerics;
}

void append(std::string& note, const std::string& sentence) { note += (note.empty() ? "" : "; ") + sentence; }

std::string environment(const std::string& name) { return environment(name.c_str()); }

// What the environment had for a pinned variable before the launcher preset it: the recorded value
// while the variable still holds the preset, else (changed since, or never preset) its value now.
std::optional<std::string> original_value(const PinnedVariable& v) {
  const char* now = std::getenv(v.name);
  const char* recorded = std::getenv((std::string(kPresetPrefix) + v.name).c_str());
  if (recorded && now && std::string(now) == v.value)
    return std::string(recorded) == kUnset ? std::nullopt : std::optional<std::string>(recorded);
  return now ? std::optional<std::string>(now) : std::nullopt;
}

[[noreturn]] void restart(const std::string& overridden) {
  setenv(kRestartedVariable, "1", 1);
  if (!overridden.empty()) setenv(kOverriddenVariable, overridden.c_str(), 1);
  std::vector<char*> arguments;
  for (auto& a : command_line()) arguments.push_back(a.data());
  arguments.push_back(nullptr);
  std::fflush(nullptr);
  execv("/proc/self/exe", arguments.data());
  throw Error(fmt::format("could not start inflab again on other kernels: {}", std::strerror(errno)));
}

}  // namespace

KernelMode parse_kernel_mode(const std::string& text, const std::string& where) {
  if (text == "pinned") return KernelMode::Pinned;
  if (text == "native") return KernelMode::Native;
  throw Error(fmt::format(
      "{}: expected \"pinned\" (the same numbers on every x86-64 processor with AVX2) or \"native\" (this "
      "processor's own kernels), found \"{}\"",
      where, text));
}

std::string to_string(KernelMode mode) { return mode == KernelMode::Pinned ? "pinned" : "native"; }

std::string Numerics::key() const {
  // Threads too: OpenBLAS 0.3.21's threaded sgemm differs from its one-thread result in the last bits
  // (measured: 128 x 128 x 128 and larger), so a result holds for its thread count.
  return fmt::format("blas={}; aten={}; onednn={}; libtorch={}; threads={}", blas, aten_capability,
                     onednn_isa.empty() ? "none" : onednn_isa, libtorch, at::get_num_threads());
}

std::string Numerics::summary() const {
  const std::string blas_part = blas_kernel.empty() ? blas : "OpenBLAS " + blas_kernel;
  return fmt::format("{} kernels ({}, ATen {}{})",
                     pinned ? "pinned" : (requested == KernelMode::Pinned ? "unpinned" : "native"), blas_part,
                     aten_capability, onednn_isa.empty() ? "" : ", oneDNN " + onednn_isa);
}

KernelMode requested_kernel_mode(const std::string& flag, const std::string& experiment) {
  if (!flag.empty()) return parse_kernel_mode(flag, "--kernels");
  if (const std::string variable = environment("INFLAB_KERNELS"); !variable.empty())
    return parse_kernel_mode(variable, "INFLAB_KERNELS");
  if (!experiment.empty()) return parse_kernel_mode(experiment, "numerics.kernels");
  return KernelMode::Pinned;
}

void remember_command_line(int argc, char** argv) { command_line().assign(argv, argv + argc); }

const Numerics& select_kernels(KernelMode mode, bool may_restart) {
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  // A process started again by this function: no second restart; its children start afresh.
  static const bool restarted = !environment(kRestartedVariable).empty();
  static const std::string inherited_override = environment(kOverriddenVariable);
  unsetenv(kRestartedVariable);
  unsetenv(kOverriddenVariable);
  if (selected() && selected()->requested == mode) return *selected();
  may_restart = may_restart && !restarted && !command_line().empty();
  using Text = char* (*)();
  auto openblas_core = library_symbol<Text>("openblas_get_corename");
  std::string note;

  if (mode == KernelMode::Native) {
    // Undo the launcher's preset: the processor's own kernels, or those the user's environment names.
    bool preset = false;
    for (const auto& v : kPinnedVariables) {
      const auto original = original_value(v);
      const std::string recorded = std::string(kPresetPrefix) + v.name;
      const char* now = std::getenv(v.name);
      preset |=
          std::getenv(recorded.c_str()) && original != (now ? std::optional<std::string>(now) : std::nullopt);
      original ? setenv(v.name, original->c_str(), 1) : unsetenv(v.name);
      unsetenv(recorded.c_str());
    }
    if (preset && may_restart) restart("");
    if (preset)
      append(note, "the kernels preset for pinned mode were loaded before native mode was asked for");
    selected() = read_numerics(mode, note);
    return *selected();
  }

  if (!has_avx2_and_fma()) {
    append(note, fmt::format("pinned kernels need AVX2 and FMA, which this processor ({}) lacks: running on "
                             "its own kernels, whose results may differ on other processors",
                             processor_model()));
    selected() = read_numerics(mode, note);
    std::fprintf(stderr, "[inflab] warning: %s\n", note.c_str());
    return *selected();
  }
  std::string overridden = inherited_override;
  for (const auto& v : kPinnedVariables) {
    if (const auto original = original_value(v); original && *original != v.value)
      append(overridden, fmt::format("{}={}", v.name, *original));
    setenv(v.name, v.value, 1);  // children inherit it
    unsetenv((std::string(kPresetPrefix) + v.name).c_str());
  }
  const std::string loaded_core = openblas_core ? openblas_core() : "";
  if (openblas_core && loaded_core != kPinnedOpenblasCore) {
    // OpenBLAS chose its kernels when it loaded: start again with the environment that pins them.
    if (may_restart) restart(overridden);
    append(note, fmt::format("OpenBLAS was loaded with its {} kernels before inflab could pin them: set "
                             "OPENBLAS_CORETYPE={} ATEN_CPU_CAPABILITY=avx2 before the process starts",
                             loaded_core, kPinnedOpenblasCore));
  }
  if (!overridden.empty())
    append(note, fmt::format("pinned kernels override {} from the environment (--kernels native keeps it)",
                             overridden));
  Numerics numerics = read_numerics(mode, note);
  if (!openblas_core)
    append(numerics.note, fmt::format("the BLAS in use ({}) is not OpenBLAS: its kernels are not pinned, and "
                                      "results may differ on other processors",
                                      numerics.blas_library));
  else if (numerics.aten_capability != "avx2")
    append(numerics.note, fmt::format("ATen had chosen its {} kernels before inflab could pin them",
                                      numerics.aten_capability));
  selected() = numerics;
  if (!numerics.pinned)
    std::fprintf(stderr, "[inflab] warning: kernels not pinned: %s\n", numerics.note.c_str());
  return *selected();
}

const Numerics& current_numerics() {
  if (!selected()) selected() = read_numerics(KernelMode::Native, "no kernels were selected");
  return *selected();
}

}  // namespace inflab
