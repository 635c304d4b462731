// Discovers plugin libraries and creates plugin instances by (kind, name).
#pragma once
#include <deque>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "inflab/plugin.hpp"

namespace inflab {

struct PluginRecord {
  const PluginInfo* info;
  std::filesystem::path file;
};

class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Loads every shared library in `directory` (not recursive). Libraries that are not
  // inflab plugins are skipped; a plugin with the wrong ABI version is an error.
  void load_directory(const std::filesystem::path& directory);
  void load_file(const std::filesystem::path& file);
  // Notes the shared libraries in `directory` without loading them: find() loads the library
  // named after the plugin asked for (datainf.so for 'datainf') and only that one; names(),
  // plugins() and a name no file is named after load them all. Each library costs a few ms of
  // relocations against LibTorch, so a command that needs one estimator loads one.
  void discover_directory(const std::filesystem::path& directory);
  // Discovers the plugins directory beside libinflab (build/plugins), then INFLAB_PLUGIN_PATH
  // (colon separated).
  void load_default_locations();

  const std::deque<PluginRecord>& plugins() const;                           // loads every discovered library
  const PluginRecord& find(PluginKind kind, const std::string& name) const;  // or throws
  std::vector<std::string> names(PluginKind kind) const;

  std::unique_ptr<Plugin> create(PluginKind kind, const std::string& name, const Options& options) const;
  template <class T>
  std::unique_ptr<T> create_as(PluginKind kind, const std::string& name, const Options& options) const {
    auto plugin = create(kind, name, options);
    if (!dynamic_cast<T*>(plugin.get())) throw_wrong_type(kind, name);
    return std::unique_ptr<T>(static_cast<T*>(plugin.release()));  // ownership moves to the typed pointer
  }

 private:
  [[noreturn]] void throw_wrong_type(PluginKind kind, const std::string& name) const;
  const PluginRecord* loaded(PluginKind kind, const std::string& name) const;
  void load_discovered(const std::string& stem) const;  // "" = all
  void load_library(const std::filesystem::path& file) const;
  struct Libraries;
  std::unique_ptr<Libraries> libraries_;
  mutable std::deque<PluginRecord> records_;  // a deque: find()'s references survive later loads
};

}  // namespace inflab
