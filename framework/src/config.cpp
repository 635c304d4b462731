#include "inflab/config.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>

#include <map>
#include <set>
#include <sstream>

#include "evaluation.hpp"
#include "inflab/error.hpp"
#include "inflab/numerics.hpp"
#include "inflab/registry.hpp"
#include "inflab/sampling.hpp"
#include "inflab/task.hpp"
#include "inflab/task_table.hpp"
#include "sections.hpp"
#include "stage_keys.hpp"

namespace fs = std::filesystem;

namespace inflab {

namespace {

std::string where(const toml::source_region& source, const std::string& fallback) {
  if (!source.path) return fallback;
  if (source.begin.line == 0) return *source.path;
  return fmt::format("{}:{}:{}", *source.path, source.begin.line, source.begin.column);
}

std::string describe(const toml::node& node) {
  std::ostringstream out;
  switch (node.type()) {
    case toml::node_type::string:
      out << "string \"" << node.as_string()->get() << "\"";
      break;
    case toml::node_type::integer:
      out << "integer " << node.as_integer()->get();
      break;
    case toml::node_type::floating_point:
      out << "number " << node.as_floating_point()->get();
      break;
    case toml::node_type::boolean:
      out << "boolean " << (node.as_boolean()->get() ? "true" : "false");
      break;
    case toml::node_type::array:
      out << "array " << *node.as_array();
      break;
    case toml::node_type::table:
      out << "table";
      break;
    default:
      out << "a date or time";
      break;
  }
  return out.str();
}

// Where values substituted by --set or [sweep] came from, by key path: TOML++ keeps source
// positions only for nodes it parsed in place, not for inserted copies.
using Origins = std::map<std::string, std::string>;

struct Validator {
  std::string file;
  const Origins* origins = nullptr;

  std::string locate(const toml::source_region& source, const std::string& path) const {
    if (source.path) return where(source, file);
    if (origins) {
      for (std::string p = path; !p.empty();
           p.resize(p.find_last_of('.') == std::string::npos ? 0 : p.find_last_of('.'))) {
        auto it = origins->find(p);
        if (it != origins->end()) return it->second;
        if (p.find('.') == std::string::npos) break;
      }
    }
    return file;
  }

  [[noreturn]] void fail(const toml::source_region& source, const std::string& message,
                         const std::string& path = "") const {
    throw Error(fmt::format("{}: {}", locate(source, path), message));
  }

  Value convert(const toml::node& node, const OptionSpec& spec, const std::string& path) const {
    auto mismatch = [&]() {
      fail(node.source(),
           fmt::format("key '{}': expected {}, found {}", path, to_string(spec.type), describe(node)), path);
    };
    switch (spec.type) {
      case OptionType::Bool:
        if (auto v = node.value_exact<bool>()) return *v;
        mismatch();
      case OptionType::Int:
        if (auto v = node.value_exact<std::int64_t>()) return *v;
        mismatch();
      case OptionType::Double:
        if (node.is_number()) return *node.value<double>();
        mismatch();
      case OptionType::String:
        if (auto v = node.value_exact<std::string>()) return *v;
        mismatch();
      case OptionType::IntList:
      case OptionType::DoubleList:
      case OptionType::StringList: {
        const toml::array* array = node.as_array();
        if (!array) mismatch();
        std::vector<std::int64_t> ints;
        std::vector<double> doubles;
        std::vector<std::string> strings;
        for (const auto& item : *array) {
          if (spec.type == OptionType::IntList) {
            auto v = item.value_exact<std::int64_t>();
            if (!v)
              fail(item.source(),
                   fmt::format("key '{}': expected {}, found an element {}", path, to_string(spec.type),
                               describe(item)),
                   path);
            ints.push_back(*v);
          } else if (spec.type == OptionType::DoubleList) {
            if (!item.is_number())
              fail(item.source(),
                   fmt::format("key '{}': expected {}, found an element {}", path, to_string(spec.type),
                               describe(item)),
                   path);
            doubles.push_back(*item.value<double>());
          } else {
            auto v = item.value_exact<std::string>();
            if (!v)
              fail(item.source(),
                   fmt::format("key '{}': expected {}, found an element {}", path, to_string(spec.type),
                               describe(item)),
                   path);
            strings.push_back(*v);
          }
        }
        if (spec.type == OptionType::IntList) return ints;
        if (spec.type == OptionType::DoubleList) return doubles;
        return strings;
      }
    }
    throw Error("unreachable: unknown option type");
  }

  // Checks every key of `table` against `specs` (plus allowed sub-tables) and fills `out`.
  void validate(const toml::table& table, const std::string& prefix, const std::vector<OptionSpec>& specs,
                const std::set<std::string>& subtables, Options& out) const {
    for (auto&& [key, node] : table) {
      std::string name(key.str());
      std::string path = prefix.empty() ? name : prefix + "." + name;
      if (subtables.count(name)) continue;
      auto spec =
          std::find_if(specs.begin(), specs.end(), [&](const OptionSpec& s) { return s.name == name; });
      if (spec == specs.end()) {
        std::vector<std::string> valid;
        for (const auto& s : specs) valid.push_back(s.name);
        valid.insert(valid.end(), subtables.begin(), subtables.end());
        std::string suggestion = closest_match(name, valid);
        std::string list;
        for (const auto& v : valid) list += (list.empty() ? "" : ", ") + v;
        fail(key.source(),
             fmt::format("unknown key '{}'{}; valid keys here: {}", path,
                         suggestion.empty()
                             ? ""
                             : fmt::format(" (did you mean '{}'?)",
                                           prefix.empty() ? suggestion : prefix + "." + suggestion),
                         list),
             path);
      }
      Value value = convert(node, *spec, path);
      if (const std::string expected = out_of_range(*spec, value); !expected.empty())
        fail(node.source(), fmt::format("key '{}': expected {}, found {}", path, expected, describe(node)),
             path);
      out.set(name, std::move(value));
    }
    for (const auto& spec : specs) {
      if (out.has(spec.name)) continue;
      if (spec.required)
        fail(table.source(),
             fmt::format("missing required key '{}{}' ({}: {})", prefix.empty() ? "" : prefix + ".",
                         spec.name, to_string(spec.type), spec.help));
      out.set(spec.name, spec.default_value);
    }
  }

  // The same for a framework section (sections.hpp), then its check, reported at the key it names.
  void validate(const toml::table& table, const SectionSchema& schema, Options& out,
                const std::set<std::string>& subtables = {}) const {
    validate(table, schema.name, schema.options, subtables, out);
    if (!schema.check) return;
    if (auto problem = schema.check(out)) {
      const toml::node* node = problem->key.empty() ? nullptr : table.get(problem->key);
      fail(node ? node->source() : table.source(), problem->message,
           problem->key.empty() ? schema.name : schema.name + "." + problem->key);
    }
  }

  const toml::table& section(const toml::table& root, const std::string& name, bool required) const {
    const toml::node* node = root.get(name);
    static const toml::table empty;
    if (!node) {
      if (required) fail(root.source(), fmt::format("missing section [{}]", name));
      return empty;
    }
    if (!node->is_table())
      fail(node->source(),
           fmt::format("key '{}': expected a table ([{}]), found {}", name, name, describe(*node)));
    return *node->as_table();
  }
};

OptionSpec spec(std::string name, OptionType type, Value value, std::string help, bool required = false) {
  return OptionSpec{std::move(name), type, std::move(value), std::move(help), required};
}
// A numeric option with the values it may take (checked before any work, file:line and range named).
OptionSpec spec(std::string name, OptionType type, Value value, std::string help, Range range) {
  return OptionSpec{std::move(name), type, std::move(value), std::move(help), false, range};
}

const std::vector<OptionSpec>& experiment_specs() {
  static const std::vector<OptionSpec> specs{
      spec("name", OptionType::String, std::string(), "experiment name; results go to results/<name>/", true),
      spec("description", OptionType::String, std::string(), "free text"),
      spec("seed", OptionType::Int, std::int64_t{0}, "seed of LoRA initialisation and training order"),
      spec("repeats", OptionType::Int, std::int64_t{1}, "runs with seeds seed, seed+1, ...",
           between(1, 10000)),
      spec("plugin_paths", OptionType::StringList, std::vector<std::string>{},
           "extra plugin directories, relative to this file"),
  };
  return specs;
}
const std::vector<OptionSpec>& numerics_specs() {
  static const std::vector<OptionSpec> specs{
      spec("kernels", OptionType::String, std::string("pinned"),
           "\"pinned\": kernels every x86-64 processor with AVX2 has, the same numbers everywhere; "
           "\"native\": "
           "this processor's own (faster on some); --kernels and $INFLAB_KERNELS take precedence"),
  };
  return specs;
}
const std::vector<OptionSpec>& model_specs() {
  static const std::vector<OptionSpec> specs{
      spec("plugin", OptionType::String, std::string(), "model plugin name", true),
      spec("adapter", OptionType::String, std::string(),
           "a Hugging Face PEFT adapter directory (adapter_config.json, adapter_model.safetensors) trained "
           "elsewhere: its LoRA replaces inflab's fine-tuning (docs/python.md, \"PEFT adapters\")"),
      spec("adapter_from", OptionType::String, std::string(),
           "another experiment file (relative to this one) whose fine-tuned adapter this experiment scores "
           "instead of fine-tuning its own: the adapter is found by that experiment's finetune stage key "
           "(its run with this run's seed), fine-tuned first if the cache lacks it; the [model] sections "
           "must agree (docs/experiments.md, \"One adapter for several experiments\")"),
      spec("adapter_key", OptionType::String, std::string(),
           "written by inflab beside adapter_from in a run's config.toml: the finetune stage key of the "
           "adapter it takes, so the run's configuration loads without the other experiment's file")};
  return specs;
}
const std::vector<OptionSpec>& estimator_framework_specs() {
  static const std::vector<OptionSpec> specs{
      spec("plugin", OptionType::String, std::string(), "estimator plugin name", true),
      spec("name", OptionType::String, std::string(), "label in results (default: the plugin name)"),
      spec("normalise", OptionType::String, std::string("none"),
           "none; unit: score / (||g_train|| ||g_query||); relatif: score / sqrt(self-influence of the "
           "training example) (docs/estimators.md, \"Normalised scores\")"),
  };
  return specs;
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::stringstream stream(path);
  std::string part;
  while (std::getline(stream, part, '.')) parts.push_back(part);
  return parts;
}

// Sets `node` at dotted `path` in `root`, creating tables on the way.
void set_path(toml::table& root, const std::string& path, const toml::node& node, const std::string& origin) {
  auto parts = split_path(path);
  if (parts.empty()) throw Error(fmt::format("{}: empty key path", origin));
  toml::table* table = &root;
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    toml::node* child = table->get(parts[i]);
    if (!child) {
      table->insert(parts[i], toml::table{});
      child = table->get(parts[i]);
    }
    if (child->is_array_of_tables() && parts[i] == "estimator")
      throw Error(
          fmt::format("{}: '{}' cannot address an [[estimator]] entry; give each "
                      "variant its own [[estimator]] with a distinct name",
                      origin, path));
    if (!child->is_table())
      throw Error(fmt::format("{}: '{}' is not a table, cannot set '{}'", origin, parts[i], path));
    table = child->as_table();
  }
  table->insert_or_assign(parts.back(), node);
}

// "key=value" -> (key, value); `form` says what was expected.
std::pair<std::string, std::string> split_assignment(const std::string& assignment, const char* form) {
  auto equals = assignment.find('=');
  if (equals == std::string::npos || equals == 0)
    throw Error(fmt::format("--set '{}': expected {}", assignment, form));
  return {assignment.substr(0, equals), assignment.substr(equals + 1)};
}

void apply_override(toml::table& root, const std::string& assignment, Origins& origins) {
  auto [key, value] = split_assignment(assignment, "key.path=value");
  std::string origin = fmt::format("--set {}", assignment);
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + value, origin);
  } catch (const toml::parse_error&) {
    // A bare word is a string: --set dataset.plugin=digits
    parsed = toml::parse("v = \"" + value + "\"", origin);
  }
  set_path(root, key, *parsed.get("v"), origin);
  origins[key] = origin;
}

// One axis of a sweep: the values of `path` and, for a [sweep.zip] axis, the keys swept in step
// with it (their k-th values go with its k-th value).
struct SweepDimension {
  std::string path;
  std::vector<const toml::node*> values;
  std::vector<SweepDimension> tied;
};

void collect_sweep(const toml::table& table, const std::string& prefix, std::vector<SweepDimension>& out,
                   const std::string& file) {
  for (auto&& [key, node] : table) {
    std::string path = prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
    if (prefix.empty() && key.str() == "zip") {
      // [sweep.zip]: its keys form one axis, stepping together (e.g. a seed and the data's seed).
      if (!node.is_table())
        throw Error(
            fmt::format("{}: sweep key 'zip': expected a table of equally long arrays ([sweep.zip]), "
                        "found {}",
                        where(node.source(), file), describe(node)));
      std::vector<SweepDimension> zipped;
      collect_sweep(*node.as_table(), "", zipped, file);
      if (zipped.empty())
        throw Error(fmt::format("{}: [sweep.zip] is empty; expected keys with arrays of values",
                                where(node.source(), file)));
      for (const auto& dim : zipped)
        if (dim.values.size() != zipped[0].values.size())
          throw Error(fmt::format(
              "{}: [sweep.zip] steps its keys together, so their arrays need one length: '{}' has {} values, "
              "'{}' has {}",
              where(dim.values[0]->source(), file), zipped[0].path, zipped[0].values.size(), dim.path,
              dim.values.size()));
      // toml++ orders keys by name. The axis is named by experiment.seed when it is zipped (seeds
      // tied to it), else by the key written first in the file (values given by --set come last).
      auto position = [](const SweepDimension& dim) {
        const auto begin = dim.values[0]->source().begin;
        const bool seed = dim.path == "experiment.seed";
        return std::tuple(!seed, begin.line == 0, begin.line, begin.column);
      };
      std::sort(zipped.begin(), zipped.end(),
                [&](const auto& a, const auto& b) { return position(a) < position(b); });
      SweepDimension axis = std::move(zipped[0]);
      axis.tied.assign(std::make_move_iterator(zipped.begin() + 1), std::make_move_iterator(zipped.end()));
      out.push_back(std::move(axis));
    } else if (node.is_table()) {
      collect_sweep(*node.as_table(), path, out, file);
    } else if (const toml::array* array = node.as_array(); array && !array->empty()) {
      SweepDimension dim{path, {}, {}};
      for (const auto& item : *array) dim.values.push_back(&item);
      out.push_back(std::move(dim));
    } else {
      throw Error(fmt::format("{}: sweep key '{}': expected a non-empty array of values, found {}",
                              where(node.source(), file), path, describe(node)));
    }
  }
}

toml::node_view<const toml::node> lookup(const toml::table& root, const std::string& path) {
  return root.at_path(path);
}

void put_value(toml::table& table, const std::string& key, const Value& value) {
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool> || std::is_same_v<T, std::int64_t> ||
                      std::is_same_v<T, double> || std::is_same_v<T, std::string>) {
          table.insert_or_assign(key, v);
        } else {
          toml::array array;
          for (const auto& item : v) array.push_back(item);
          table.insert_or_assign(key, std::move(array));
        }
      },
      value);
}

toml::table options_table(const Options& options) {
  toml::table table;
  for (const auto& [key, value] : options.values()) put_value(table, key, value);
  return table;
}

std::string to_text(const toml::table& table) {
  std::ostringstream out;
  out << table;
  return out.str();
}

// Why `name` cannot be one folder's name ("" when it can).
std::string path_component_problem(const std::string& name) {
  if (name.empty()) return "it is empty";
  if (name == "." || name == "..") return "it names a folder relative to another";
  if (name.size() > 100) return fmt::format("it has {} characters", name.size());
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.')
      return c == '/' ? "it contains '/', a path" : fmt::format("it contains '{}'", c < 32 ? '?' : c);
  return "";
}

std::string label_of(const toml::node& node) {
  if (auto s = node.value_exact<std::string>()) return *s;
  std::ostringstream out;
  if (auto a = node.as_array())
    out << *a;
  else if (auto i = node.value_exact<std::int64_t>())
    out << *i;
  else if (auto d = node.value_exact<double>())
    out << *d;
  else if (auto b = node.value_exact<bool>())
    out << (*b ? "true" : "false");
  std::string text = out.str();
  for (char& c : text)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-') c = '_';
  return text;
}

// "path = value" for every leaf of a table: what two [model] sections differ in.
void flatten(const toml::table& table, const std::string& prefix, std::map<std::string, std::string>& out) {
  for (auto&& [key, node] : table) {
    const std::string path = prefix + std::string(key.str());
    if (const toml::table* child = node.as_table()) {
      flatten(*child, path + ".", out);
      continue;
    }
    std::ostringstream text;
    node.visit([&](auto&& leaf) { text << leaf; });
    out[path] = text.str();
  }
}

// [model] adapter_from = "OTHER.toml": OTHER's run with this run's seed, whose finetune stage key
// names the adapter this run scores (recorded as model.adapter_key, so every later stage's key
// covers the other experiment's fine-tuning). The command's --set overrides reach OTHER too (but
// not its sweeps: they are this experiment's), so `--set` on a shared [model] or a smaller
// dataset applies to both. The [model] sections must agree: the adapter is loaded as it is.
std::shared_ptr<const ExperimentConfig> adapter_source(const Validator& v, const toml::node& at,
                                                       const fs::path& file, std::int64_t seed,
                                                       const std::vector<std::string>& overrides,
                                                       const fs::path& peft_adapter,
                                                       toml::table& model_resolved, Registry& registry) {
  auto fail = [&](const std::string& what) {
    v.fail(at.source(), "key 'model.adapter_from': " + what, "model.adapter_from");
  };
  if (!peft_adapter.empty())
    fail("an adapter comes from a PEFT directory (model.adapter) or from another experiment, not both");
  const fs::path source_file = file.parent_path() / *at.value<std::string>();
  if (!fs::is_regular_file(source_file))
    fail(fmt::format("expected an experiment file (a path relative to {}), found '{}': no such file",
                     file.string(), source_file.string()));
  std::error_code error;
  if (fs::equivalent(source_file, file, error)) fail("names this experiment itself");
  std::vector<ExperimentConfig> runs;
  try {
    std::vector<std::string> source_overrides;
    for (const auto& o : overrides)  // not this experiment's sweeps, nor where its adapter comes from
      if (o.rfind("sweep", 0) != 0 && o.rfind("model.adapter", 0) != 0) source_overrides.push_back(o);
    source_overrides.push_back(fmt::format("experiment.seed={}", seed));
    source_overrides.push_back("experiment.repeats=1");
    runs = load_experiment(source_file, source_overrides, registry);
  } catch (const Error& e) {
    fail(fmt::format("{} does not load: {}", source_file.string(), e.what()));
  }
  std::set<std::string> keys;
  for (const auto& run : runs) {
    if (run.adapter_source)
      fail(fmt::format("{} takes its own adapter from another experiment; name that one",
                       source_file.string()));
    keys.insert(stage_inputs("finetune", run).key());
  }
  if (keys.size() != 1)
    fail(
        fmt::format("the {} runs of {} (with experiment.seed = {}) fine-tune {} different adapters; name "
                    "an experiment whose runs share one fine-tuning",
                    runs.size(), source_file.string(), seed, keys.size()));
  std::map<std::string, std::string> here, there;
  flatten(model_resolved, "model.", here);
  flatten(*toml::parse(runs.front().resolved_toml)["model"].as_table(), "model.", there);
  here.erase("model.adapter_from");
  std::set<std::string> paths;  // both ways: a key only OTHER has (a PEFT adapter, say) differs too
  for (const auto* side : {&here, &there})
    for (const auto& entry : *side) paths.insert(entry.first);
  std::vector<std::string> differences;
  for (const auto& path : paths)
    if (here[path] != there[path])
      differences.push_back(fmt::format("{} is {} here and {} there", path,
                                        here[path].empty() ? "absent" : here[path],
                                        there[path].empty() ? "absent" : there[path]));
  if (!differences.empty())
    fail(fmt::format(
        "the adapter of {} is loaded into this experiment's model as it is, so the [model] sections "
        "must agree: {}",
        source_file.string(), fmt::join(differences, "; ")));
  model_resolved.insert_or_assign("adapter_key", *keys.begin());
  return std::make_shared<const ExperimentConfig>(runs.front());
}

// ---- one validator per section: each checks its section, records what the orchestrator needs in
// `config` and writes the section's resolved values (defaults filled) into `resolved` ----

void check_section_names(const Validator& v, const toml::table& root) {
  static const std::vector<std::string> sections{
      "experiment", "dataset",      "model",         "training", "task",  "estimator",  "queries",
      "evaluation", "ground_truth", "leave_one_out", "numerics", "sweep", "projection", "checkpoints"};
  for (auto&& [key, node] : root) {
    std::string name(key.str());
    if (std::find(sections.begin(), sections.end(), name) != sections.end()) continue;
    std::string suggestion = closest_match(name, sections);
    v.fail(key.source(),
           fmt::format("unknown section '{}'{}; valid sections: {}", name,
                       suggestion.empty() ? "" : fmt::format(" (did you mean '{}'?)", suggestion),
                       fmt::join(sections, ", ")));
  }
}

void validate_experiment(const Validator& v, const toml::table& root, const fs::path& file,
                         ExperimentConfig& config, toml::table& resolved) {
  Options experiment("[experiment]");
  const toml::table& table = v.section(root, "experiment", true);
  v.validate(table, "experiment", experiment_specs(), {}, experiment);
  config.name = experiment.get_string("name");
  // The name is a folder under --out: a plain name, never a path that could land elsewhere.
  if (const std::string problem = path_component_problem(config.name); !problem.empty())
    v.fail(table.get("name")->source(),
           fmt::format("key 'experiment.name': expected a plain folder name (letters, digits, '-', '_', '.'; "
                       "at most 100 characters), found \"{}\": {}",
                       config.name, problem),
           "experiment.name");
  config.seed = experiment.get_int("seed");
  for (const auto& p : experiment.get_string_list("plugin_paths"))
    config.plugin_paths.push_back(fs::absolute(file.parent_path() / p));
  resolved.insert("experiment", options_table(experiment));
}

// [numerics]: which kernels the process computes with (numerics.hpp). Not a stage input: the
// kernels actually in use are part of every stage key, whatever was asked for.
void validate_numerics(const Validator& v, const toml::table& root, ExperimentConfig& config) {
  Options numerics("[numerics]");
  const toml::table& table = v.section(root, "numerics", false);
  v.validate(table, "numerics", numerics_specs(), {}, numerics);
  if (!table.get("kernels")) return;
  config.kernels = numerics.get_string("kernels");
  try {
    parse_kernel_mode(config.kernels, "key 'numerics.kernels'");
  } catch (const Error& e) {
    v.fail(table.get("kernels")->source(), e.what(), "numerics.kernels");
  }
}

// The plugin a section names, found in the registry (its record gives the plugin's own options).
const PluginRecord& section_plugin(const Validator& v, const toml::table& table, const std::string& section,
                                   PluginKind kind, Registry& registry) {
  const toml::node* plugin = table.get("plugin");
  if (!plugin || !plugin->is_string())
    v.fail(table.source(), fmt::format("[{}] needs plugin = \"<name>\" (a string)", section));
  try {
    return registry.find(kind, plugin->as_string()->get());
  } catch (const Error& e) {
    v.fail(plugin->source(), fmt::format("key '{}.plugin': {}", section, e.what()), section + ".plugin");
  }
}

// A framework section's schema with a plugin's own options added (the plugin's keys sit beside it).
SectionSchema with_plugin_options(SectionSchema schema, const std::vector<OptionSpec>& plugin_specs) {
  schema.options.insert(schema.options.end(), plugin_specs.begin(), plugin_specs.end());
  return schema;
}

// The plugin's own options out of a section's values.
Options plugin_options(const std::string& who, const std::vector<OptionSpec>& plugin_specs,
                       const Options& all) {
  Options out(who);
  for (const auto& s : plugin_specs) out.set(s.name, all.values().at(s.name));
  return out;
}

// [dataset]: the framework's keys (dataset_section) plus the plugin's own options.
void validate_dataset(const Validator& v, const toml::table& root, Registry& registry,
                      ExperimentConfig& config, toml::table& resolved) {
  const toml::table& table = v.section(root, "dataset", true);
  const PluginRecord& record = section_plugin(v, table, "dataset", PluginKind::Dataset, registry);
  config.dataset.plugin = *table["plugin"].value<std::string>();
  const auto plugin_specs = record.info->options();
  Options all("dataset " + config.dataset.plugin);
  v.validate(table, with_plugin_options(dataset_section(), plugin_specs), all);
  config.dataset.options = plugin_options("dataset " + config.dataset.plugin, plugin_specs, all);
  resolved.insert("dataset", options_table(all));
}

// [model] with its plugin's options, [model.lora] (lora_section), and where a fine-tuned adapter
// comes from when not from this run: model.adapter (trained elsewhere) or model.adapter_from.
void validate_model(const Validator& v, const toml::table& root, const fs::path& file,
                    const std::vector<std::string>& overrides, Registry& registry, ExperimentConfig& config,
                    toml::table& resolved) {
  const toml::table& model = v.section(root, "model", true);
  const PluginRecord& record = section_plugin(v, model, "model", PluginKind::Model, registry);
  config.model.plugin = *model["plugin"].value<std::string>();
  const auto plugin_specs = record.info->options();
  Options all("model " + config.model.plugin);
  v.validate(model, with_plugin_options({"model", model_specs()}, plugin_specs), all, {"lora"});
  config.model.options = plugin_options("model " + config.model.plugin, plugin_specs, all);
  Options lora("[model.lora]");
  const toml::node* lora_node = model.get("lora");
  if (lora_node && !lora_node->is_table())
    v.fail(lora_node->source(),
           fmt::format("key 'model.lora': expected a table, found {}", describe(*lora_node)));
  static const toml::table no_lora;
  v.validate(lora_node ? *lora_node->as_table() : no_lora, lora_section(), lora);
  toml::table model_resolved = options_table(all);
  model_resolved.insert("lora", options_table(lora));
  // An adapter is resolved only when given, so configurations without one keep their keys.
  const fs::path adapter = all.get_string("adapter");
  if (adapter.empty()) {
    model_resolved.erase("adapter");
  } else if (!fs::is_regular_file(adapter / "adapter_config.json")) {
    v.fail(model.get("adapter")->source(),
           fmt::format(
               "key 'model.adapter': expected a PEFT adapter directory holding adapter_config.json, "
               "found '{}' ({})",
               adapter.string(),
               fs::is_directory(adapter) ? "a directory without adapter_config.json" : "no such directory"),
           "model.adapter");
  }
  // adapter_from: another experiment's fine-tuned adapter, found by that stage's key.
  // A run's own config.toml carries the key already: its adapter is the one cached under it.
  const std::string adapter_from = all.get_string("adapter_from"),
                    adapter_key = all.get_string("adapter_key");
  if (adapter_key.empty()) model_resolved.erase("adapter_key");
  if (adapter_from.empty()) {
    model_resolved.erase("adapter_from");
    if (!adapter_key.empty())
      v.fail(model.get("adapter_key")->source(),
             "key 'model.adapter_key': inflab writes it beside model.adapter_from (a run's config.toml); "
             "found without model.adapter_from",
             "model.adapter_key");
  } else if (adapter_key.empty()) {
    config.adapter_source = adapter_source(v, *model.get("adapter_from"), file, config.seed, overrides,
                                           adapter, model_resolved, registry);
  }
  resolved.insert("model", model_resolved);
}

// [training] (training_section): read by the base and fine-tuning stages alone.
void validate_training(const Validator& v, const toml::table& root, toml::table& resolved) {
  Options training("[training]");
  v.validate(v.section(root, "training", false), training_section(), training);
  resolved.insert("training", options_table(training));
}

// [[estimator]]: the framework's keys (plugin, name) plus each plugin's own options.
void validate_estimators(const Validator& v, const toml::table& root, Registry& registry,
                         ExperimentConfig& config, toml::table& resolved) {
  const toml::node* estimators = root.get("estimator");
  if (!estimators) v.fail(root.source(), "missing [[estimator]]: name at least one estimator plugin");
  if (!estimators->is_array_of_tables())
    v.fail(estimators->source(), "key 'estimator': expected an array of tables ([[estimator]] entries)");
  toml::array resolved_estimators;
  for (const auto& entry : *estimators->as_array()) {
    const toml::table& table = *entry.as_table();
    const PluginRecord& record = section_plugin(v, table, "estimator", PluginKind::Estimator, registry);
    PluginSpec estimator;
    estimator.plugin = *table["plugin"].value<std::string>();
    const auto plugin_specs = record.info->options();
    Options all("estimator " + estimator.plugin);
    v.validate(table, with_plugin_options({"estimator", estimator_framework_specs()}, plugin_specs), all);
    estimator.label = all.get_string("name").empty() ? estimator.plugin : all.get_string("name");
    all.set("name", estimator.label);
    estimator.normalise = all.get_string("normalise");
    if (estimator.normalise != "none" && estimator.normalise != "unit" && estimator.normalise != "relatif")
      v.fail(table.get("normalise")->source(),
             fmt::format("key 'estimator.normalise' (estimator '{}'): expected \"none\", \"unit\" or "
                         "\"relatif\", found \"{}\"",
                         estimator.label, estimator.normalise));
    estimator.options = plugin_options("estimator " + estimator.label, plugin_specs, all);
    for (const auto& other : config.estimators)
      if (other.label == estimator.label)
        v.fail(table.source(),
               fmt::format("two [[estimator]] entries are named '{}'; give one a distinct name = \"...\"",
                           estimator.label));
    config.estimators.push_back(std::move(estimator));
    resolved_estimators.push_back(options_table(all));
  }
  resolved.insert("estimator", std::move(resolved_estimators));
}

// [task]: what an example's loss is (inflab/task.hpp; each task checks its own options).
void validate_task(const Validator& v, const toml::table& root, ExperimentConfig& config,
                   toml::table& resolved) {
  Options task("[task]");
  const toml::table& table = v.section(root, "task", false);
  v.validate(table, "task", task_option_specs(), {}, task);
  config.task = task.get_string("name");
  const auto names = task_names();
  if (std::find(names.begin(), names.end(), config.task) == names.end()) {
    std::string suggestion = closest_match(config.task, names);
    v.fail(table.get("name")->source(),
           fmt::format("key 'task.name': unknown task \"{}\"{}; tasks: {}", config.task,
                       suggestion.empty() ? "" : fmt::format(" (did you mean \"{}\"?)", suggestion),
                       fmt::join(names, ", ")),
           "task.name");
  }
  const TaskDefinition& definition = *find_task(config.task);
  try {
    definition.make(task);  // the task checks its own choices (causal_lm's template, scored, ...)
  } catch (const Error& e) {
    const std::string what = e.what();
    // The message names its key ("key 'task.scored': ..."): point at that line when it has one.
    const auto named = what.find("'task.");
    const std::string key =
        named == std::string::npos ? "" : what.substr(named + 6, what.find('\'', named + 6) - named - 6);
    const toml::node* node = key.empty() ? nullptr : table.get(key);
    v.fail(node ? node->source() : table.source(), what, key.empty() ? "task" : "task." + key);
  }
  const toml::table& dataset = v.section(root, "dataset", true);
  if (resolved["dataset"]["label_noise"].value_or(0.0) > 0 && !definition.trains_on_class_labels)
    v.fail(
        dataset.get("label_noise")->source(),
        fmt::format("key 'dataset.label_noise': label noise flips class labels, which task \"{}\" does not "
                    "train on; set it to 0 or use task.name = \"classification\"",
                    config.task),
        "dataset.label_noise");
  resolved.insert("task", options_table(task));
}

// training.pretrain_condition_dropout drops a denoiser's condition: only for task denoising.
void validate_condition_dropout(const Validator& v, const toml::table& root, const ExperimentConfig& config,
                                const toml::table& resolved) {
  const double dropout = resolved.at_path("training.pretrain_condition_dropout").value_or(0.0);
  if (dropout == 0 || find_task(config.task)->generates_images) return;
  auto node = root.at_path("training.pretrain_condition_dropout");
  v.fail(node ? node.node()->source() : root.source(),
         fmt::format("drops a denoiser's condition in pretraining (task denoising), but the task is \"{}\"; "
                     "expected 0",
                     config.task),
         "training.pretrain_condition_dropout");
}

// [queries] (queries_section): images generated by the fine-tuned denoiser are the queries (the
// paper's diffusion study). Resolved only when present, like [ground_truth].
void validate_queries(const Validator& v, const toml::table& root, const ExperimentConfig& config,
                      toml::table& resolved) {
  const toml::node* node = root.get("queries");
  if (!node) return;
  Options queries("[queries]");
  v.validate(v.section(root, "queries", false), queries_section(), queries);
  if (!find_task(config.task)->generates_images)
    v.fail(
        node->source(),
        fmt::format("[queries] generates images with a denoiser: it needs task.name = \"denoising\", found "
                    "\"{}\"",
                    config.task));
  const double dropout = resolved.at_path("training.pretrain_condition_dropout").value_or(0.0);
  try {
    check_guidance(queries.get_double("guidance"), dropout, "key 'queries.guidance'");
  } catch (const Error& e) {
    v.fail(node->source(), e.what());
  }
  resolved.insert("queries", options_table(queries));
}

// [projection] (projection_section): only when written; it changes what the gradients are.
void validate_projection(const Validator& v, const toml::table& root, toml::table& resolved) {
  if (!root.get("projection")) return;
  Options projection("[projection]");
  v.validate(v.section(root, "projection", false), projection_section(), projection);
  if (projection.get_string("kind") != "none") resolved.insert("projection", options_table(projection));
}

// [checkpoints] (checkpoints_section): only when written (the finetune stage's key ignores it:
// the checkpoints are kept beside the adapter it trains). At most one checkpoint per epoch.
void validate_checkpoints(const Validator& v, const toml::table& root, ExperimentConfig& config,
                          toml::table& resolved) {
  if (!root.get("checkpoints")) return;
  Options checkpoints("[checkpoints]");
  v.validate(v.section(root, "checkpoints", false), checkpoints_section(), checkpoints);
  const auto count = checkpoints.get_int("count");
  const auto epochs = resolved["training"]["epochs"].value_or(std::int64_t{0});
  if (count > epochs)
    v.fail(
        root.get("checkpoints")->source(),
        fmt::format("key 'checkpoints.count': {} checkpoints need at least as many epochs (checkpoints are "
                    "kept at the end of epochs), found training.epochs = {}; keep at most {} (e.g. --set "
                    "checkpoints.count={}) or train longer",
                    count, epochs, epochs, std::max<std::int64_t>(epochs, 1)));
  config.checkpoints = count;
  resolved.insert("checkpoints", options_table(checkpoints));
}

// [evaluation] (evaluation_section); the reference must name one of the estimators.
void validate_evaluation(const Validator& v, const toml::table& root, ExperimentConfig& config,
                         toml::table& resolved) {
  Options evaluation("[evaluation]");
  const toml::table& table = v.section(root, "evaluation", false);
  v.validate(table, evaluation_section(), evaluation);
  config.evaluation = evaluation_config(evaluation);
  if (const std::string& reference = config.evaluation.reference; !reference.empty()) {
    std::vector<std::string> labels;
    for (const auto& e : config.estimators) labels.push_back(e.label);
    if (std::find(labels.begin(), labels.end(), reference) == labels.end())
      v.fail(table.get("reference")->source(),
             fmt::format("key 'evaluation.reference': no [[estimator]] is named \"{}\"; names: {}", reference,
                         fmt::join(labels, ", ")));
  }
  resolved.insert("evaluation", options_table(evaluation));
}

// A metric's own section ([ground_truth] for lds, [leave_one_out] for loo) is resolved only when the
// metric is asked for, so the configurations (and finished runs) of experiments without it stay
// as they were. A metric that fine-tunes again cannot judge an adapter this run did not train.
void validate_metric_sections(const Validator& v, const toml::table& root, const ExperimentConfig& config,
                              toml::table& resolved) {
  std::vector<std::string> retraining;  // the asked metrics that fine-tune again
  for (const auto& definition : metric_definitions()) {
    const bool wanted = std::find(config.evaluation.metrics.begin(), config.evaluation.metrics.end(),
                                  definition.name) != config.evaluation.metrics.end();
    if (wanted && definition.retrains) retraining.push_back("\"" + definition.name + "\"");
    if (definition.section.empty()) continue;
    const std::string section(definition.section);
    const toml::node* node = root.get(section);
    if (!node && !wanted) continue;
    Options options("[" + section + "]");
    v.validate(v.section(root, section, false), section, definition.options, {}, options);
    if (!wanted)
      v.fail(node->source(),
             fmt::format("[{}] is only used by metric \"{}\": add \"{}\" to evaluation.metrics or "
                         "remove it",
                         section, definition.name, definition.name));
    resolved.insert(section, options_table(options));
  }
  if (retraining.empty()) return;
  const toml::table& model = v.section(root, "model", true);
  if (resolved["model"]["adapter"])  // resolved only when given
    v.fail(model.get("adapter")->source(),
           fmt::format("key 'model.adapter': metric {} retrains the LoRA with inflab's fine-tuning, which "
                       "cannot reproduce an adapter trained elsewhere; remove it or the adapter",
                       fmt::join(retraining, " and ")),
           "model.adapter");
  if (resolved["model"]["adapter_from"])
    v.fail(model.get("adapter_from")->source(),
           fmt::format(
               "key 'model.adapter_from': metric {} retrains the LoRA on this experiment's training set, "
               "which did not train the adapter taken from the other experiment; remove it or the "
               "adapter_from",
               fmt::join(retraining, " and ")),
           "model.adapter_from");
}

ExperimentConfig validate_run(const toml::table& root, const fs::path& file, Registry& registry,
                              const std::string& run_name, const Origins& origins,
                              const std::vector<std::string>& overrides) {
  Validator v{file.string(), &origins};
  ExperimentConfig config;
  config.source = file;
  config.run_name = run_name;
  toml::table resolved;
  check_section_names(v, root);
  validate_experiment(v, root, file, config, resolved);
  validate_numerics(v, root, config);
  validate_dataset(v, root, registry, config, resolved);
  validate_model(v, root, file, overrides, registry, config, resolved);
  config.plugin_versions = plugin_versions(config, registry);
  validate_training(v, root, resolved);
  validate_estimators(v, root, registry, config, resolved);
  validate_task(v, root, config, resolved);
  validate_condition_dropout(v, root, config, resolved);
  validate_queries(v, root, config, resolved);
  validate_projection(v, root, resolved);
  validate_checkpoints(v, root, config, resolved);
  validate_evaluation(v, root, config, resolved);
  validate_metric_sections(v, root, config, resolved);
  config.resolved_toml = to_text(resolved);  // the stages' cache keys are computed from it
  return config;
}

}  // namespace

std::optional<SectionProblem> one_of(const Options& values, const std::string& section,
                                     const std::string& key, const std::vector<std::string>& words,
                                     const std::string& note) {
  const std::string value = values.get_string(key);
  if (std::find(words.begin(), words.end(), value) != words.end()) return std::nullopt;
  std::vector<std::string> quoted;
  for (const auto& w : words) quoted.push_back("\"" + w + "\"");
  const std::string expected =
      quoted.size() == 2 ? quoted[0] + " or " + quoted[1] : fmt::format("one of {}", fmt::join(quoted, ", "));
  return SectionProblem{
      key, fmt::format("key '{}.{}': expected {}{}, found \"{}\"", section, key, expected, note, value)};
}

Options options_from_assignments(const std::string& who, const std::vector<OptionSpec>& specs,
                                 const std::vector<std::string>& assignments) {
  Options options = default_options(who, specs);
  for (const auto& assignment : assignments) {
    // Named copies, not structured bindings: C++17 lambdas (the sanitizer build) cannot capture those.
    const auto parts = split_assignment(assignment, "key=value");
    const std::string key = parts.first, value = parts.second;
    auto spec = std::find_if(specs.begin(), specs.end(), [&](const OptionSpec& s) { return s.name == key; });
    if (spec == specs.end()) {
      std::vector<std::string> names;
      for (const auto& s : specs) names.push_back(s.name);
      std::string suggestion = closest_match(key, names);
      throw Error(fmt::format("--set {}: {} has no option '{}'{}; options: {}", assignment, who, key,
                              suggestion.empty() ? "" : fmt::format(" (did you mean '{}'?)", suggestion),
                              fmt::join(names, ", ")));
    }
    Value parsed = parse_value(value, spec->type, "--set " + assignment);
    if (const std::string expected = out_of_range(*spec, parsed); !expected.empty())
      throw Error(fmt::format("--set {}: {} option '{}': expected {}, found {}", assignment, who, key,
                              expected, format_value(parsed)));
    options.set(key, std::move(parsed));
  }
  for (const auto& s : specs)
    if (s.required && !options.has(s.name)) throw Error(fmt::format("{} needs --set {}=...", who, s.name));
  return options;
}

namespace {
// True when no two values of a sweep key have the same label (their run names differ).
bool distinct_labels(const SweepDimension& key) {
  std::set<std::string> labels;
  for (const auto* value : key.values)
    if (!labels.insert(label_of(*value)).second) return false;
  return true;
}
}  // namespace

std::vector<ExperimentConfig> load_experiment(const fs::path& file, const std::vector<std::string>& overrides,
                                              Registry& registry) {
  if (!fs::exists(file)) throw Error(fmt::format("{}: no such experiment file", file.string()));
  toml::table root;
  try {
    root = toml::parse_file(file.string());
  } catch (const toml::parse_error& e) {
    throw Error(fmt::format("{}: {}", where(e.source(), file.string()), e.description()));
  }
  Origins origins;
  for (const auto& assignment : overrides) apply_override(root, assignment, origins);

  Validator v{file.string(), &origins};
  const toml::table& experiment = v.section(root, "experiment", true);
  if (const toml::node* paths = experiment.get("plugin_paths")) {
    if (const toml::array* array = paths->as_array())
      for (const auto& p : *array)
        if (auto s = p.value_exact<std::string>()) {
          fs::path dir = fs::absolute(file.parent_path() / *s);
          try {
            registry.load_directory(dir);
          } catch (const Error& e) {
            v.fail(p.source(), fmt::format("key 'experiment.plugin_paths': {}", e.what()));
          }
        }
  }

  std::vector<SweepDimension> dims;
  if (const toml::node* sweep = root.get("sweep")) {
    if (!sweep->is_table()) v.fail(sweep->source(), "key 'sweep': expected a table ([sweep])");
    collect_sweep(*sweep->as_table(), "", dims, file.string());
    // "a.b" = [...] and a.b = [...] (or a --set of the other spelling) name one key: swept twice.
    std::map<std::string, const toml::node*> seen;
    for (const auto& d : dims) {
      std::vector<const SweepDimension*> keys{&d};
      for (const auto& t : d.tied) keys.push_back(&t);
      for (const auto* key : keys)
        if (auto [it, fresh] = seen.emplace(key->path, key->values[0]); !fresh)
          v.fail(
              key->values[0]->source(),
              fmt::format("sweep key '{}' is swept twice (also at {}); a quoted \"{}\" and a dotted {} are "
                          "one key: keep one",
                          key->path, where(it->second->source(), file.string()), key->path, key->path));
    }
  }
  // [experiment] repeats = k is a sweep over seed, seed+1, ..., seed+k-1.
  std::int64_t repeats = experiment.get("repeats") ? experiment.get("repeats")->value_or<std::int64_t>(1) : 1;
  toml::array seeds;
  constexpr std::int64_t kMaxRuns = 10000;  // a typo such as repeats = 1e9 must not hang the loader
  if (repeats > kMaxRuns)
    v.fail(experiment.get("repeats")->source(),
           fmt::format("key 'experiment.repeats': {} runs is over the limit of {}", repeats, kMaxRuns));
  if (repeats > 1) {
    for (const auto& d : dims)
      if (d.path == "experiment.seed" || std::any_of(d.tied.begin(), d.tied.end(), [](const auto& t) {
            return t.path == "experiment.seed";
          }))
        v.fail(experiment.source(),
               "use either [experiment] repeats or a [sweep] over experiment.seed, not both");
    std::int64_t seed = experiment.get("seed") ? experiment.get("seed")->value_or<std::int64_t>(0) : 0;
    for (std::int64_t k = 0; k < repeats; ++k) seeds.push_back(seed + k);
    SweepDimension dim{"experiment.seed", {}, {}};
    for (const auto& item : seeds) dim.values.push_back(&item);
    dims.push_back(std::move(dim));
  } else if (repeats < 1) {
    v.fail(experiment.get("repeats")->source(),
           fmt::format("key 'experiment.repeats': expected a positive integer, found {}", repeats));
  }

  double total_runs = 1;
  std::vector<std::string> factors;
  for (const auto& d : dims)
    total_runs *= static_cast<double>(d.values.size()), factors.push_back(std::to_string(d.values.size()));
  if (total_runs > static_cast<double>(kMaxRuns))
    throw Error(
        fmt::format("{}: the sweep has {:.0f} runs ({}), over the limit of {}; split it into several files",
                    file.string(), total_runs, fmt::join(factors, " x "), kMaxRuns));

  // Sweep points are substituted into the parsed tree in place (copies would lose every
  // source position); the [sweep] table itself is left alone and skipped by validation.
  std::vector<ExperimentConfig> runs;
  std::vector<std::size_t> index(dims.size(), 0);
  toml::table& point = root;
  while (true) {
    std::string run_name;
    for (std::size_t d = 0; d < dims.size(); ++d) {
      std::vector<const SweepDimension*> keys{&dims[d]};  // the axis's key and those zipped with it
      for (const auto& tied : dims[d].tied) keys.push_back(&tied);
      for (const SweepDimension* key : keys) {
        const toml::node* value = key->values[index[d]];
        if (key->path == "numerics.kernels" || key->path == "numerics")
          v.fail(value->source(),
                 "sweep key 'numerics.kernels': the kernels are chosen when the process starts, so one "
                 "command runs one choice; run the experiment once per choice (--kernels pinned|native)");
        if (!lookup(root, key->path) && key->path.rfind("estimator", 0) == 0)
          v.fail(
              value->source(),
              fmt::format("sweep key '{}': [[estimator]] options cannot be swept; list one [[estimator]] per "
                          "variant",
                          key->path));
        set_path(point, key->path, *value, where(value->source(), file.string()));
        origins[key->path] = where(value->source(), file.string());
      }
      // A zipped axis is named by its first key alone when that tells its points apart (seed and
      // dataset.seed: "seed1"); otherwise by every key of it ("scoredprompt_paddingnone").
      for (const SweepDimension* key : keys) {
        auto parts = split_path(key->path);
        run_name += (run_name.empty() ? "" : "_") + parts.back() + label_of(*key->values[index[d]]);
        if (distinct_labels(*keys.front())) break;
      }
    }
    runs.push_back(
        validate_run(point, file, registry, run_name.empty() ? "run" : run_name, origins, overrides));
    std::size_t d = 0;
    while (d < dims.size() && ++index[d] == dims[d].values.size()) index[d++] = 0;
    if (d == dims.size()) break;
  }
  // Two runs in one folder would overwrite each other (and the second refuse the first's results).
  std::set<std::string> names;
  for (const auto& run : runs)
    if (!names.insert(run.run_name).second)
      throw Error(
          fmt::format("{}: two sweep points would both be run '{}'; give the swept values distinct "
                      "labels",
                      file.string(), run.run_name));
  return runs;
}

}  // namespace inflab
