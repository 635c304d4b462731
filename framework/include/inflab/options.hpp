// Typed plugin options: a plugin declares them (name, type, default, help) and the framework
// validates the experiment file against that declaration before the plugin ever sees a value.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace inflab {

enum class OptionType { Bool, Int, Double, String, IntList, DoubleList, StringList };
const char* to_string(OptionType type);

using Value = std::variant<bool, std::int64_t, double, std::string, std::vector<std::int64_t>,
                           std::vector<double>, std::vector<std::string>>;
std::string format_value(const Value& value);

struct OptionSpec {
  std::string name;
  OptionType type;
  Value default_value;
  std::string help;
  bool required = false;  // when true default_value is ignored and the key must be given
};

// Validated option values of one plugin (every declared option present, defaults filled).
class Options {
 public:
  Options() = default;
  explicit Options(std::string owner) : owner_(std::move(owner)) {}

  bool has(const std::string& name) const { return values_.count(name) != 0; }
  void set(const std::string& name, Value value) { values_[name] = std::move(value); }
  const std::map<std::string, Value>& values() const { return values_; }
  const std::string& owner() const { return owner_; }

  bool get_bool(const std::string& name) const;
  std::int64_t get_int(const std::string& name) const;
  double get_double(const std::string& name) const;  // integers are widened
  const std::string& get_string(const std::string& name) const;
  std::vector<std::int64_t> get_int_list(const std::string& name) const;
  std::vector<double> get_double_list(const std::string& name) const;
  std::vector<std::string> get_string_list(const std::string& name) const;

 private:
  const Value& at(const std::string& name, const char* expected) const;
  std::string owner_;
  std::map<std::string, Value> values_;
};

// Options with all defaults (used by `inflab score --set` and by tests).
Options default_options(const std::string& owner, const std::vector<OptionSpec>& specs);

// Parses "text" as a value of `type` (used for --set on the command line).
Value parse_value(const std::string& text, OptionType type, const std::string& where);

}  // namespace inflab
