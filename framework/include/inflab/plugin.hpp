// The plugin ABI. A plugin is a shared library exporting one Boost.DLL alias,
// `inflab_plugin`, a function returning a PluginInfo: plain data plus a factory.
// The loader reads abi_version first and refuses a mismatch before touching anything else.
#pragma once
#include <boost/dll/alias.hpp>
#include <cstdint>
#include <memory>
#include <vector>

#include "inflab/options.hpp"

namespace inflab {

// Bump whenever PluginInfo or any plugin interface (Estimator, Dataset, Model) changes.
// 2: Kronecker factors; 3: text; 4: fit cache; 5: token masks; 6: distributed runs.
inline constexpr std::uint32_t kAbiVersion = 6;

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
