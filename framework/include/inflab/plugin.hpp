// The plugin ABI. A plugin is a shared library exporting one Boost.DLL alias,
// `inflab_plugin`, a function returning a PluginInfo: plain data plus a factory.
// The loader reads abi_version first and refuses a mismatch before touching anything else, then
// compares the build fingerprint (LibTorch, compiler, C++ library ABI) and refuses a plugin built
// with anything else: such a plugin would pass the number and then misread std::string or tensors.
#pragma once
#include <torch/version.h>

#include <boost/dll/alias.hpp>
#include <cstdint>
#include <memory>
#include <vector>

#include "inflab/options.hpp"

namespace inflab {

// Bump whenever PluginInfo or any plugin-facing header changes (the installed headers: see
// INFLAB_PLUGIN_HEADERS in CMakeLists.txt). The test abi_headers fails when they change and this
// number does not; `tests/abi_headers.sh --update` records the new state.
// 2: Kronecker factors; 3: text; 4: fit cache; 5: token masks; 6: distributed runs;
// 7: tasks (Split::targets, Model::token_logits/denoise), build fingerprint; 12: optional model
// capabilities as interfaces (inflab/model.hpp: TextEncoder, LinearProbe, Denoiser, ...);
// 13: Estimator::over_checkpoints (TracIn).
#define INFLAB_ABI_VERSION 13
inline constexpr std::uint32_t kAbiVersion = INFLAB_ABI_VERSION;

#define INFLAB_STRINGIFY_(x) #x
#define INFLAB_STRINGIFY(x) INFLAB_STRINGIFY_(x)
#if defined(__clang__)
#define INFLAB_COMPILER "clang " INFLAB_STRINGIFY(__clang_major__) "." INFLAB_STRINGIFY(__clang_minor__)
#elif defined(__GNUC__)
#define INFLAB_COMPILER "gcc " INFLAB_STRINGIFY(__GNUC__) "." INFLAB_STRINGIFY(__GNUC_MINOR__)
#else
#define INFLAB_COMPILER "unknown compiler"
#endif
#if defined(_GLIBCXX_USE_CXX11_ABI)
#define INFLAB_CXX11_ABI INFLAB_STRINGIFY(_GLIBCXX_USE_CXX11_ABI)
#else
#define INFLAB_CXX11_ABI "none"
#endif
// What a plugin (and the core library) was built with, e.g.
// "inflab-abi 8; libtorch 1.13.0; gcc 12.2; cxx11-abi 1". The core refuses any other.
#ifndef INFLAB_BUILD_FINGERPRINT
#define INFLAB_BUILD_FINGERPRINT                                                                      \
  "inflab-abi " INFLAB_STRINGIFY(INFLAB_ABI_VERSION) "; libtorch " TORCH_VERSION "; " INFLAB_COMPILER \
                                                     "; cxx11-abi " INFLAB_CXX11_ABI
#endif
// The core library's own fingerprint (compiled into libinflab).
const char* core_build_fingerprint();

enum class PluginKind : std::uint32_t { Estimator = 1, Dataset = 2, Model = 3 };
const char* to_string(PluginKind kind);

// Base of every plugin object. configure() receives validated options.
class Plugin {
 public:
  virtual ~Plugin() = default;
  virtual void configure(const Options& options) { (void)options; }
};

struct PluginInfo {
  std::uint32_t abi_version;  // must stay the first member
  const char* fingerprint;    // INFLAB_BUILD_FINGERPRINT of the plugin's build; the second member
  PluginKind kind;
  const char* name;
  const char* version;
  const char* description;
  std::vector<OptionSpec> (*options)();  // declared options, for validation and --help
  std::unique_ptr<Plugin> (*create)();
};

}  // namespace inflab

#ifndef INFLAB_PLUGIN_ABI_VERSION
#define INFLAB_PLUGIN_ABI_VERSION ::inflab::kAbiVersion
#endif

// Declares the plugin's entry point. Use once per plugin library:
//   INFLAB_PLUGIN(Estimator, "my_method", "0.1.0", "One line.", my_options, MyEstimator)
#define INFLAB_PLUGIN(KIND, NAME, VERSION, DESCRIPTION, OPTIONS_FN, CLASS)                \
  namespace inflab_plugin_entry_ {                                                        \
  inline std::unique_ptr<::inflab::Plugin> create() { return std::make_unique<CLASS>(); } \
  inline const ::inflab::PluginInfo* info() {                                             \
    static const ::inflab::PluginInfo value{INFLAB_PLUGIN_ABI_VERSION,                    \
                                            INFLAB_BUILD_FINGERPRINT,                     \
                                            ::inflab::PluginKind::KIND,                   \
                                            NAME,                                         \
                                            VERSION,                                      \
                                            DESCRIPTION,                                  \
                                            OPTIONS_FN,                                   \
                                            &create};                                     \
    return &value;                                                                        \
  }                                                                                       \
  }                                                                                       \
  BOOST_DLL_ALIAS(inflab_plugin_entry_::info, inflab_plugin)
