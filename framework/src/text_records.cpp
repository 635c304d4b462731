#include "inflab/text_records.hpp"

#include <csv.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "inflab/error.hpp"

namespace inflab {

namespace {

std::string resolve_format(const std::string& format, const std::string& name) {
  if (format == "jsonl" || format == "csv") return format;
  if (format != "auto")
    throw Error(fmt::format("{}: format '{}': expected \"jsonl\", \"csv\" or \"auto\"", name, format));
  auto ends = [&](const std::string& suffix) {
    return name.size() >= suffix.size() &&
           name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends(".jsonl") || ends(".json")) return "jsonl";
  if (ends(".csv")) return "csv";
  throw Error(
      fmt::format("{}: cannot tell the format from the name (expected .jsonl, .json or .csv); set the "
                  "dataset's format to \"jsonl\" or \"csv\"",
                  name));
}

TextRecords parse_jsonl(const std::string& content, const std::vector<std::string>& fields,
                        const std::string& name) {
  TextRecords out;
  out.fields = fields;
  std::stringstream lines(content);
  std::string line;
  for (std::int64_t number = 1; std::getline(lines, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for 9e324
      throw Error(fmt::format("{}:{}: not a JSON line ({})", name, number, e.what()));
    }
    if (!record.is_object())
      throw Error(
          fmt::format("{}:{}: expected a JSON object per line, found {}", name, number, record.type_name()));
    std::vector<std::string> values;
    for (const auto& field : fields) {
      if (field.empty()) {
        values.emplace_back();
        continue;
      }
      auto found = record.find(field);
      if (found == record.end())
        throw Error(fmt::format("{}:{}: field '{}' is missing", name, number, field));
      if (found->is_string())
        values.push_back(found->get<std::string>());
      else if (found->is_number() || found->is_boolean())
        values.push_back(found->dump());
      else
        throw Error(fmt::format("{}:{}: field '{}': expected a string, a number or a boolean, found {}", name,
                                number, field, found->type_name()));
    }
    out.values.push_back(std::move(values));
    out.lines.push_back(number);
  }
  return out;
}

// libcsv calls back per field and per record; the input is fed line by line, so the line a
// record ends on is known, and the next record starts on the line after it.
struct CsvState {
  std::vector<std::string> record;
  std::vector<std::vector<std::string>> records;
  std::vector<std::int64_t> starts;
  std::int64_t line = 0, next_start = 1;
};

void on_field(void* text, std::size_t length, void* data) {
  auto& record = static_cast<CsvState*>(data)->record;
  if (text)
    record.emplace_back(static_cast<const char*>(text), length);
  else
    record.emplace_back();
}

void on_record(int, void* data) {
  auto* state = static_cast<CsvState*>(data);
  state->records.push_back(std::move(state->record));
  state->record.clear();
  state->starts.push_back(state->next_start);
  state->next_start = state->line + 1;
}

TextRecords parse_csv(const std::string& content, const std::vector<std::string>& fields,
                      const std::string& name) {
  csv_parser parser;
  if (csv_init(&parser, CSV_STRICT | CSV_STRICT_FINI) != 0)
    throw Error(fmt::format("{}: cannot start the CSV parser", name));
  CsvState state;
  auto fail = [&](const std::string& what) {
    csv_free(&parser);
    throw Error(fmt::format("{}:{}: {}", name, state.line, what));
  };
  std::size_t begin = 0;
  while (begin < content.size()) {
    std::size_t end = content.find('\n', begin);
    end = end == std::string::npos ? content.size() : end + 1;
    ++state.line;
    if (csv_parse(&parser, content.data() + begin, end - begin, on_field, on_record, &state) != end - begin)
      fail(fmt::format("malformed CSV ({})", csv_strerror(csv_error(&parser))));
    begin = end;
  }
  if (csv_fini(&parser, on_field, on_record, &state) != 0)
    fail(fmt::format("malformed CSV at the end of the file ({})", csv_strerror(csv_error(&parser))));
  csv_free(&parser);

  if (state.records.empty()) throw Error(fmt::format("{}: empty: expected a header row, then records", name));
  const auto& header = state.records.front();
  std::vector<std::size_t> columns;
  for (const auto& field : fields) {
    if (field.empty()) {
      columns.push_back(header.size());  // not read
      continue;
    }
    auto at = std::find(header.begin(), header.end(), field);
    if (at == header.end())
      throw Error(fmt::format("{}:{}: no column '{}' in the header (columns: {})", name, state.starts.front(),
                              field, fmt::join(header, ", ")));
    columns.push_back(static_cast<std::size_t>(at - header.begin()));
  }
  TextRecords out;
  out.fields = fields;
  for (std::size_t r = 1; r < state.records.size(); ++r) {
    const auto& record = state.records[r];
    if (record.empty() || (record.size() == 1 && record[0].empty())) continue;  // a blank line
    if (record.size() != header.size())
      throw Error(fmt::format("{}:{}: {} fields, the header has {}", name, state.starts[r], record.size(),
                              header.size()));
    std::vector<std::string> values;
    for (auto column : columns) values.push_back(column < record.size() ? record[column] : std::string());
    out.values.push_back(std::move(values));
    out.lines.push_back(state.starts[r]);
  }
  return out;
}

}  // namespace

TextRecords parse_text_records(const std::string& content, const std::string& format,
                               const std::vector<std::string>& fields, const std::string& name) {
  const std::string resolved = resolve_format(format, name);
  std::string text = content;
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);  // a UTF-8 byte-order mark
  return resolved == "jsonl" ? parse_jsonl(text, fields, name) : parse_csv(text, fields, name);
}

TextRecords read_text_records(const std::string& path, const std::string& format,
                              const std::vector<std::string>& fields) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open the file", path));
  std::stringstream content;
  content << in.rdbuf();
  return parse_text_records(content.str(), format, fields, path);
}

}  // namespace inflab
