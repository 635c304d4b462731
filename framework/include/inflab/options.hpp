// Typed plugin options: a plugin declares them (name, type, default, help) and the framework
// validates the experiment file against that declaration before the plugin ever sees a value.
#pragma once
#include <cstdint>
#include <limits>
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

// The values a numeric option (or each element of a numeric list) may take. NaN and infinities are
// never valid. Checked when an experiment is validated and for command-line assignments, so a
// value that would fail deep inside a run is refused before any work, with the key and the range.
struct Range {
  double minimum = -std::numeric_limits<double>::infinity();
  double maximum = std::numeric_limits<double>::infinity();
  bool minimum_excluded = false;
  bool maximum_excluded = false;
  bool contains(double value) const;
  std::string describe() const;  // "> 0", ">= 1", "in [0, 1)", "in 1..60000" (for integers: `integer`)
};
inline Range at_least(double minimum) { return {minimum}; }
inline Range greater_than(double minimum) { return {minimum, std::numeric_limits<double>::infinity(), true}; }
inline Range between(double minimum, double maximum) { return {minimum, maximum}; }

struct OptionSpec {
  std::string name;
  OptionType type;
  Value default_value;
  std::string help;
  bool required = false;  // when true default_value is ignored and the key must be given
  Range range = {};       // numeric types only
};

// "" when `value` fits `spec` (its range, finite numbers), else what was expected, e.g. "a number > 0".
std::string out_of_range(const OptionSpec& spec, const Value& value);

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
