// The framework's tables of named rows (the metric table, the task table): one row by its name,
// and every name in the table's order.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace inflab {

template <class Row>
const Row* find_named(const std::vector<Row>& rows, std::string_view name) {
  for (const auto& row : rows)
    if (row.name == name) return &row;
  return nullptr;
}

template <class Row>
std::vector<std::string> names_of(const std::vector<Row>& rows) {
  std::vector<std::string> names;
  for (const auto& row : rows) names.emplace_back(row.name);
  return names;
}

}  // namespace inflab
