#include "inflab/options.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <sstream>

#include "inflab/error.hpp"

namespace inflab {

const char* to_string(OptionType type) {
  switch (type) {
    case OptionType::Bool:
      return "boolean";
    case OptionType::Int:
      return "integer";
    case OptionType::Double:
      return "number";
    case OptionType::String:
      return "string";
    case OptionType::IntList:
      return "array of integers";
    case OptionType::DoubleList:
      return "array of numbers";
    case OptionType::StringList:
      return "array of strings";
  }
  return "?";
}

std::string format_value(const Value& value) {
  struct Visitor {
    std::string operator()(bool v) const { return v ? "true" : "false"; }
    std::string operator()(std::int64_t v) const { return std::to_string(v); }
    std::string operator()(double v) const { return fmt::format("{}", v); }
    std::string operator()(const std::string& v) const { return fmt::format("\"{}\"", v); }
    std::string operator()(const std::vector<std::int64_t>& v) const {
      return fmt::format("[{}]", fmt::join(v, ", "));
    }
    std::string operator()(const std::vector<double>& v) const {
      return fmt::format("[{}]", fmt::join(v, ", "));
    }
    std::string operator()(const std::vector<std::string>& v) const {
      std::string out = "[";
      for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", \"" : "\"") + v[i] + "\"";
      return out + "]";
    }
  };
  return std::visit(Visitor{}, value);
}

const Value& Options::at(const std::string& name, const char* expected) const {
  auto it = values_.find(name);
  if (it == values_.end())
    throw Error(fmt::format("{}: option '{}' ({}) is not declared or was not set", owner_, name, expected));
  return it->second;
}

bool Options::get_bool(const std::string& name) const {
  const Value& v = at(name, "boolean");
  if (auto* b = std::get_if<bool>(&v)) return *b;
  throw Error(fmt::format("{}: option '{}' expected boolean, found {}", owner_, name, format_value(v)));
}

std::int64_t Options::get_int(const std::string& name) const {
  const Value& v = at(name, "integer");
  if (auto* i = std::get_if<std::int64_t>(&v)) return *i;
  throw Error(fmt::format("{}: option '{}' expected integer, found {}", owner_, name, format_value(v)));
}

double Options::get_double(const std::string& name) const {
  const Value& v = at(name, "number");
  if (auto* d = std::get_if<double>(&v)) return *d;
  if (auto* i = std::get_if<std::int64_t>(&v)) return static_cast<double>(*i);
  throw Error(fmt::format("{}: option '{}' expected number, found {}", owner_, name, format_value(v)));
}

const std::string& Options::get_string(const std::string& name) const {
  const Value& v = at(name, "string");
  if (auto* s = std::get_if<std::string>(&v)) return *s;
  throw Error(fmt::format("{}: option '{}' expected string, found {}", owner_, name, format_value(v)));
}

std::vector<std::int64_t> Options::get_int_list(const std::string& name) const {
  const Value& v = at(name, "array of integers");
  if (auto* l = std::get_if<std::vector<std::int64_t>>(&v)) return *l;
  throw Error(
      fmt::format("{}: option '{}' expected array of integers, found {}", owner_, name, format_value(v)));
}

std::vector<double> Options::get_double_list(const std::string& name) const {
  const Value& v = at(name, "array of numbers");
  if (auto* l = std::get_if<std::vector<double>>(&v)) return *l;
  if (auto* l = std::get_if<std::vector<std::int64_t>>(&v)) return std::vector<double>(l->begin(), l->end());
  throw Error(
      fmt::format("{}: option '{}' expected array of numbers, found {}", owner_, name, format_value(v)));
}

std::vector<std::string> Options::get_string_list(const std::string& name) const {
  const Value& v = at(name, "array of strings");
  if (auto* l = std::get_if<std::vector<std::string>>(&v)) return *l;
  throw Error(
      fmt::format("{}: option '{}' expected array of strings, found {}", owner_, name, format_value(v)));
}

bool Range::contains(double value) const {
  if (!std::isfinite(value)) return false;
  if (value < minimum || (minimum_excluded && value == minimum)) return false;
  if (value > maximum || (maximum_excluded && value == maximum)) return false;
  return true;
}

std::string Range::describe() const {
  const bool low = std::isfinite(minimum), high = std::isfinite(maximum);
  if (low && high)
    return fmt::format("in {}{}, {}{}", minimum_excluded ? "(" : "[", minimum, maximum,
                       maximum_excluded ? ")" : "]");
  if (low) return fmt::format("{} {}", minimum_excluded ? ">" : ">=", minimum);
  if (high) return fmt::format("{} {}", maximum_excluded ? "<" : "<=", maximum);
  return "finite";
}

std::string out_of_range(const OptionSpec& spec, const Value& value) {
  const bool integer = spec.type == OptionType::Int || spec.type == OptionType::IntList;
  const std::string expected =
      fmt::format("{} {}", integer ? "an integer" : "a finite number", spec.range.describe());
  auto check = [&](double v) { return spec.range.contains(v); };
  if (auto* i = std::get_if<std::int64_t>(&value)) return check(static_cast<double>(*i)) ? "" : expected;
  if (auto* d = std::get_if<double>(&value)) return check(*d) ? "" : expected;
  if (auto* l = std::get_if<std::vector<std::int64_t>>(&value)) {
    for (auto v : *l)
      if (!check(static_cast<double>(v))) return "every element " + expected;
  }
  if (auto* l = std::get_if<std::vector<double>>(&value)) {
    for (auto v : *l)
      if (!check(v)) return "every element " + expected;
  }
  return "";
}

Options default_options(const std::string& owner, const std::vector<OptionSpec>& specs) {
  Options options(owner);
  for (const auto& spec : specs)
    if (!spec.required) options.set(spec.name, spec.default_value);
  return options;
}

namespace {
std::vector<std::string> split_list(std::string text) {
  if (!text.empty() && text.front() == '[') text.erase(0, 1);
  if (!text.empty() && text.back() == ']') text.pop_back();
  std::vector<std::string> items;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) {
    auto first = item.find_first_not_of(" \t\"");
    auto last = item.find_last_not_of(" \t\"");
    if (first != std::string::npos) items.push_back(item.substr(first, last - first + 1));
  }
  return items;
}

template <class T, class Parse>
T parse_number(const std::string& text, Parse parse, const char* expected, const std::string& where) {
  std::size_t used = 0;
  try {
    T value = parse(text, &used);
    if (used == text.size()) return value;
  } catch (const std::exception&) {
  }
  throw Error(fmt::format("{}: expected {}, found '{}'", where, expected, text));
}
}  // namespace

Value parse_value(const std::string& text, OptionType type, const std::string& where) {
  auto to_int = [&](const std::string& t) {
    return parse_number<std::int64_t>(
        t, [](const std::string& s, std::size_t* n) { return std::stoll(s, n); }, "integer", where);
  };
  auto to_double = [&](const std::string& t) {
    return parse_number<double>(
        t, [](const std::string& s, std::size_t* n) { return std::stod(s, n); }, "number", where);
  };
  switch (type) {
    case OptionType::Bool:
      if (text == "true") return true;
      if (text == "false") return false;
      throw Error(fmt::format("{}: expected true or false, found '{}'", where, text));
    case OptionType::Int:
      return to_int(text);
    case OptionType::Double:
      return to_double(text);
    case OptionType::String: {
      std::string s = text;
      if (s.size() >= 2 && s.front() == '"' && s.back() == '"') s = s.substr(1, s.size() - 2);
      return s;
    }
    case OptionType::IntList: {
      std::vector<std::int64_t> out;
      for (const auto& item : split_list(text)) out.push_back(to_int(item));
      return out;
    }
    case OptionType::DoubleList: {
      std::vector<double> out;
      for (const auto& item : split_list(text)) out.push_back(to_double(item));
      return out;
    }
    case OptionType::StringList:
      return split_list(text);
  }
  throw Error(where + ": unknown option type");
}

}  // namespace inflab
