#include "inflab/registry.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <cstdlib>
#include <mutex>
#include <sstream>

#include "inflab/error.hpp"

namespace fs = std::filesystem;

namespace inflab {

const char* to_string(PluginKind kind) {
  switch (kind) {
    case PluginKind::Estimator:
      return "estimator";
    case PluginKind::Dataset:
      return "dataset";
    case PluginKind::Model:
      return "model";
  }
  return "unknown";
}

const char* core_build_fingerprint() { return INFLAB_BUILD_FINGERPRINT; }

struct Registry::Libraries {
  std::vector<boost::dll::shared_library> loaded;
  std::vector<fs::path> discovered;  // noted by discover_directory, not loaded yet
  std::recursive_mutex mutex;        // find() is const and may load; Python may call from threads
};

Registry::Registry() : libraries_(std::make_unique<Libraries>()) {}
// Records point into the libraries; plugins are linked with -z nodelete, so objects a plugin
// created stay valid even if they outlive this registry.
Registry::~Registry() = default;

void Registry::load_file(const fs::path& file) {
  std::lock_guard lock(libraries_->mutex);
  load_library(file);
}

void Registry::load_library(const fs::path& file) const {
  for (const auto& record : records_)
    if (fs::equivalent(record.file, file)) return;
  boost::dll::shared_library library;
  try {
    library.load(file.string(), boost::dll::load_mode::rtld_lazy | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    throw Error(fmt::format("{}: cannot load plugin library: {}", file.string(), e.what()));
  }
  if (!library.has("inflab_plugin")) return;  // some other shared library: not ours
  auto entry = library.get_alias<const PluginInfo*()>("inflab_plugin");
  const PluginInfo* info = entry();
  if (!info) throw Error(fmt::format("{}: inflab_plugin() returned null", file.string()));
  if (info->abi_version != kAbiVersion)
    throw Error(
        fmt::format("{}: plugin built for inflab plugin ABI version {}, but this inflab uses ABI version {}; "
                    "rebuild the plugin against this inflab's headers",
                    file.string(), info->abi_version, kAbiVersion));
  if (std::string(info->fingerprint ? info->fingerprint : "") != core_build_fingerprint())
    throw Error(fmt::format(
        "{}: plugin built with \"{}\", but this inflab was built with \"{}\"; rebuild the plugin with the "
        "same LibTorch, compiler and C++ library ABI (a mismatch would misread strings and tensors)",
        file.string(), info->fingerprint ? info->fingerprint : "(none)", core_build_fingerprint()));
  for (const auto& record : records_)
    if (record.info->kind == info->kind && std::string(record.info->name) == info->name)
      throw Error(
          fmt::format("two {} plugins are named '{}': {} and {}; remove one from the "
                      "plugin path",
                      to_string(info->kind), info->name, record.file.string(), file.string()));
  records_.push_back({info, fs::absolute(file)});
  libraries_->loaded.push_back(std::move(library));
}

namespace {
std::vector<fs::path> shared_libraries_in(const fs::path& directory) {
  if (!fs::is_directory(directory))
    throw Error(fmt::format("plugin directory {} does not exist", directory.string()));
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(directory))
    if (entry.is_regular_file() && entry.path().extension() == ".so") files.push_back(entry.path());
  std::sort(files.begin(), files.end());  // deterministic order
  return files;
}
}  // namespace

void Registry::load_directory(const fs::path& directory) {
  for (const auto& file : shared_libraries_in(directory)) load_file(file);
}

void Registry::discover_directory(const fs::path& directory) {
  auto files = shared_libraries_in(directory);
  std::lock_guard lock(libraries_->mutex);
  auto& discovered = libraries_->discovered;
  discovered.insert(discovered.end(), files.begin(), files.end());
}

void Registry::load_discovered(const std::string& stem) const {
  std::lock_guard lock(libraries_->mutex);
  auto& discovered = libraries_->discovered;
  std::vector<fs::path> matching;
  for (const auto& file : discovered)
    if (stem.empty() || file.stem() == stem) matching.push_back(file);
  // One at a time: a library that fails to load is reported, and the others stay discoverable.
  for (const auto& file : matching) {
    discovered.erase(std::find(discovered.begin(), discovered.end(), file));
    load_library(file);
  }
}

void Registry::load_default_locations() {
  // Found from this library, not from the program, so that any program linking it finds them (the
  // CLI, the tests, Python): build/lib/libinflab.so -> build/plugins; <prefix>/lib/libinflab.so ->
  // <prefix>/lib/inflab/plugins; a pip-installed inflab/lib/libinflab.so -> inflab/plugins.
  fs::path library = boost::dll::this_line_location().string();
  fs::path top = library.parent_path().parent_path();
  for (const fs::path& dir : {top / "plugins", top / "lib" / "inflab" / "plugins"})
    if (fs::is_directory(dir)) discover_directory(dir);
  if (const char* env = std::getenv("INFLAB_PLUGIN_PATH")) {
    std::stringstream paths(env);
    std::string path;
    while (std::getline(paths, path, ':'))
      if (!path.empty()) discover_directory(path);
  }
}

const std::deque<PluginRecord>& Registry::plugins() const {
  load_discovered("");
  return records_;
}

std::vector<std::string> Registry::names(PluginKind kind) const {
  std::vector<std::string> out;
  for (const auto& record : plugins())
    if (record.info->kind == kind) out.push_back(record.info->name);
  return out;
}

const PluginRecord* Registry::loaded(PluginKind kind, const std::string& name) const {
  for (const auto& record : records_)
    if (record.info->kind == kind && name == record.info->name) return &record;
  return nullptr;
}

const PluginRecord& Registry::find(PluginKind kind, const std::string& name) const {
  std::lock_guard lock(libraries_->mutex);
  // Every discovered file named after the plugin first (two such files in the plugin path are
  // still reported as a duplicate), then, for a plugin in a file of another name, all of them.
  load_discovered(name);
  if (const auto* record = loaded(kind, name)) return *record;
  load_discovered("");
  if (const auto* record = loaded(kind, name)) return *record;
  auto available = names(kind);
  std::string list;
  for (const auto& n : available) list += (list.empty() ? "" : ", ") + n;
  std::string suggestion = closest_match(name, available);
  throw Error(fmt::format("unknown {} plugin '{}'{}; available {} plugins: {}", to_string(kind), name,
                          suggestion.empty() ? "" : fmt::format(" (did you mean '{}'?)", suggestion),
                          to_string(kind), list.empty() ? "(none found)" : list));
}

std::unique_ptr<Plugin> Registry::create(PluginKind kind, const std::string& name,
                                         const Options& options) const {
  const auto& record = find(kind, name);
  auto plugin = record.info->create();
  plugin->configure(options);
  return plugin;
}

void Registry::throw_wrong_type(PluginKind kind, const std::string& name) const {
  throw Error(fmt::format("{} plugin '{}' does not implement the {} interface of this inflab",
                          to_string(kind), name, to_string(kind)));
}

}  // namespace inflab
