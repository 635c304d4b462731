// Discovers plugin libraries and creates plugin instances by (kind, name).
#pragma once
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
  // The plugins directory beside libinflab (build/plugins), then INFLAB_PLUGIN_PATH (colon separated).
  void load_default_locations();

  const std::vector<PluginRecord>& plugins() const { return records_; }
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
  struct Libraries;
  std::unique_ptr<Libraries> libraries_;
  std::vector<PluginRecord> records_;
};

}  // namespace inflab
