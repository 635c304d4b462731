// Stage inputs and cache keys (stage_keys.hpp): the only way a stage reads the configuration.
#include "stage_keys.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <sstream>

#include "inflab/config.hpp"
#include "inflab/error.hpp"
#include "inflab/io.hpp"
#include "inflab/numerics.hpp"
#include "inflab/progress.hpp"
#include "inflab/registry.hpp"
#include "inflab/run.hpp"
#include "stages/stages.hpp"

namespace fs = std::filesystem;

namespace inflab {

// ---- helpers the stage units share (stages/stages.hpp) -------------------------------------

std::string describe_plugin(Registry& registry, PluginKind kind, const std::string& name) {
  return fmt::format("{} plugin '{}' ({})", to_string(kind), name,
                     registry.find(kind, name).file.filename().string());
}

void log(const std::string& message) {
  if (!Progress::quiet()) std::fprintf(stderr, "[inflab] %s\n", message.c_str());
}
void warn(const std::string& message) { std::fprintf(stderr, "[inflab] warning: %s\n", message.c_str()); }

fs::path cache_root_of(const RunPaths& paths) {
  return paths.cache_root.empty() ? default_cache_root() : paths.cache_root;
}

const std::vector<StageDeclaration>& cached_stages() {
  static const std::vector<StageDeclaration> stages{base_stage(),         finetune_stage(),
                                                    ground_truth_stage(), leave_one_out_stage(),
                                                    gradients_stage(),    fit_stage()};
  return stages;
}

const StageDeclaration& stage_declaration(const std::string& name) {
  if (name == data_stage().name) return data_stage();
  for (const auto& s : cached_stages())
    if (s.name == name) return s;
  throw Error(fmt::format("internal: no stage named '{}'", name));
}

namespace {

bool under(const std::string& path, const std::string& prefix) {
  return path == prefix || (path.size() > prefix.size() && path.compare(0, prefix.size(), prefix) == 0 &&
                            path[prefix.size()] == '.');
}

Value to_value(const toml::node& node, const std::string& path) {
  if (auto v = node.value_exact<bool>()) return *v;
  if (auto v = node.value_exact<std::int64_t>()) return *v;
  if (auto v = node.value_exact<double>()) return *v;
  if (auto v = node.value_exact<std::string>()) return *v;
  if (const toml::array* array = node.as_array()) {
    std::vector<std::int64_t> ints;
    std::vector<double> doubles;
    std::vector<std::string> strings;
    for (const auto& item : *array) {
      if (auto i = item.value_exact<std::int64_t>()) ints.push_back(*i);
      if (auto d = item.value_exact<double>()) doubles.push_back(*d);
      if (auto s = item.value_exact<std::string>()) strings.push_back(*s);
    }
    if (!strings.empty() || array->empty()) return strings;
    if (!doubles.empty()) return doubles;
    return ints;
  }
  throw Error(fmt::format("internal: configuration value '{}' has an unsupported type", path));
}

void collect_leaves(const toml::node& node, const std::string& path, const std::vector<std::string>& except,
                    std::map<std::string, Value>& out) {
  for (const auto& e : except)
    if (under(path, e)) return;
  if (const toml::table* table = node.as_table()) {
    for (auto&& [key, child] : *table)
      collect_leaves(child, path + "." + std::string(key.str()), except, out);
    return;
  }
  out[path] = to_value(node, path);
}

// A [dataset] option naming a file the user supplies (text_file's train, a plugin's path): the
// key covers the file's content, not only its name, so editing the file invalidates what was
// computed from it. Memoized by (size, modification time): a stage key is computed many times.
std::string file_content_hash(const std::string& path) {
  namespace fs = std::filesystem;
  static std::map<std::string, std::pair<std::string, std::string>> memo;  // path -> (stamp, hash)
  std::error_code error;
  const auto size = fs::file_size(path, error);
  const auto time = fs::last_write_time(path, error);
  if (error) return "";
  const std::string stamp = fmt::format("{} {}", size, time.time_since_epoch().count());
  auto& entry = memo[path];
  if (entry.first != stamp) entry = {stamp, content_hash(read_file(path))};
  return entry.second;
}

// A folder the user supplies (image_folder's train): every file under it, by relative path and content.
std::string directory_content_hash(const std::string& path) {
  namespace fs = std::filesystem;
  std::vector<std::string> files;
  std::error_code error;
  for (fs::recursive_directory_iterator it(path, error), end; !error && it != end; it.increment(error))
    if (it->is_regular_file()) files.push_back(it->path().string());
  std::sort(files.begin(), files.end());
  std::string listing;
  for (const auto& f : files) listing += fs::relative(f, path).string() + "\t" + file_content_hash(f) + "\n";
  return content_hash(listing);
}

}  // namespace

namespace {
// The resolved configuration, parsed once: a run's stage inputs (and each stage's upstream ones,
// computed for its key) all read the same text.
const toml::table& parsed_configuration(const std::string& resolved_toml) {
  thread_local std::string text;
  thread_local toml::table table;
  if (resolved_toml != text || text.empty()) {
    table = toml::parse(resolved_toml, std::string_view("resolved configuration"));
    text = resolved_toml;
  }
  return table;
}
}  // namespace

StageInputs::StageInputs(const StageDeclaration& stage, const std::string& resolved_toml,
                         std::map<std::string, std::string> plugin_versions)
    : stage_(stage) {
  const toml::table& resolved = parsed_configuration(resolved_toml);
  for (const auto& path : stage.reads) {
    auto node = resolved.at_path(path);
    if (!node) {
      const auto& later = stage.keyed_when_present;
      if (std::find(later.begin(), later.end(), path) == later.end()) values_[path] = "<absent>";
      continue;
    }
    collect_leaves(*node.node(), path, stage.except, typed_);
  }
  for (const auto& [path, value] : typed_) {
    values_[path] = format_value(value);
    const auto* text = std::get_if<std::string>(&value);
    // Files and folders a user supplies: their content is an input, not only their name.
    if (!text || text->empty() || !(under(path, "dataset") || path == "model.adapter")) continue;
    if (std::filesystem::is_regular_file(*text))
      values_[path + " (content)"] = file_content_hash(*text);
    else if (std::filesystem::is_directory(*text))
      values_[path + " (content)"] = directory_content_hash(*text);
  }
  for (const auto& [path, earlier] : stage.keyed_unless) {
    auto it = typed_.find(path);
    if (it != typed_.end() && format_value(it->second) == format_value(earlier)) values_.erase(path);
  }
  for (const auto& path : stage.settings)
    if (auto node = resolved.at_path(path)) collect_leaves(*node.node(), path, {}, typed_);
  for (const auto& section : stage.plugins) {
    auto it = plugin_versions.find(section);
    if (it == plugin_versions.end())
      throw Error(fmt::format("internal: stage '{}' runs the {} plugin but its version is unknown",
                              stage.name, section));
    plugin_versions_[section] = it->second;
  }
}

bool StageInputs::present(const std::string& path) const {
  if (!declares(path)) return false;
  for (const auto& [leaf, value] : typed_)
    if (under(leaf, path)) return true;
  return false;
}

bool StageInputs::declares(const std::string& path) const {
  bool declared = false;
  for (const auto& r : stage_.reads) declared |= under(path, r);
  for (const auto& e : stage_.except) declared &= !under(path, e);
  return declared;
}

bool StageInputs::readable(const std::string& path) const {
  if (declares(path)) return true;
  for (const auto& s : stage_.settings)
    if (under(path, s)) return true;
  return false;
}

namespace {
[[noreturn]] void undeclared(const StageDeclaration& stage, const std::string& path) {
  throw Error(fmt::format(
      "internal: stage '{}' reads '{}', which it does not declare (framework/src/stages: add it to the "
      "stage's reads, so that its cache key covers it)",
      stage.name, path));
}
}  // namespace

std::int64_t StageInputs::get_int(const std::string& path) const {
  if (!readable(path) || !typed_.count(path)) undeclared(stage_, path);
  Options o(stage_.name);
  o.set(path, typed_.at(path));
  return o.get_int(path);
}
double StageInputs::get_double(const std::string& path) const {
  if (!readable(path) || !typed_.count(path)) undeclared(stage_, path);
  Options o(stage_.name);
  o.set(path, typed_.at(path));
  return o.get_double(path);
}
std::string StageInputs::get_string(const std::string& path) const {
  if (!readable(path) || !typed_.count(path)) undeclared(stage_, path);
  Options o(stage_.name);
  o.set(path, typed_.at(path));
  return o.get_string(path);
}
std::vector<std::string> StageInputs::get_string_list(const std::string& path) const {
  if (!readable(path) || !typed_.count(path)) undeclared(stage_, path);
  Options o(stage_.name);
  o.set(path, typed_.at(path));
  return o.get_string_list(path);
}

Options StageInputs::section(const std::string& path) const {
  if (!declares(path)) undeclared(stage_, path);
  Options out("[" + path + "]");
  for (const auto& [leaf, value] : typed_)
    if (under(leaf, path) && leaf.find('.', path.size() + 1) == std::string::npos)
      out.set(leaf.substr(path.size() + 1), value);
  return out;
}

void StageInputs::add(const std::string& name, const std::string& value) { extra_[name] = value; }

std::string StageInputs::key_text() const {
  std::string text = fmt::format("stage {} format {}\n", stage_.name, stage_.format_version);
  // The kernels the process computes with: results of one choice are never reused under another.
  text += fmt::format("numerics {}\n", current_numerics().key());
  for (const auto& [stage, key] : upstream_) text += fmt::format("after {} {}\n", stage, key);
  for (const auto& [section, version] : plugin_versions_)
    text += fmt::format("plugin {} {}\n", section, version);
  for (const auto& [path, value] : values_) text += fmt::format("{} = {}\n", path, value);
  for (const auto& [name, value] : extra_) text += fmt::format("input {} = {}\n", name, value);
  return text;
}

std::string StageInputs::key() const { return content_hash(key_text()); }

StageInputs stage_inputs(const std::string& stage, const std::string& resolved_toml,
                         const std::map<std::string, std::string>& versions) {
  const StageDeclaration& declaration = stage_declaration(stage);
  StageInputs inputs(declaration, resolved_toml, versions);
  for (const auto& upstream : declaration.after)
    inputs.add_upstream(upstream, stage_inputs(upstream, resolved_toml, versions).key());
  return inputs;
}

std::map<std::string, std::string> plugin_versions(const ExperimentConfig& config, Registry& registry) {
  auto describe = [&](PluginKind kind, const std::string& name) {
    return fmt::format("{} {}", name, registry.find(kind, name).info->version);
  };
  return {{"dataset", describe(PluginKind::Dataset, config.dataset.plugin)},
          {"model", describe(PluginKind::Model, config.model.plugin)}};
}

StageInputs stage_inputs(const std::string& stage, const ExperimentConfig& config) {
  return stage_inputs(stage, config.resolved_toml, config.plugin_versions);
}

}  // namespace inflab
