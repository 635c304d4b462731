// Records of a user's own text file, JSON lines or CSV with a header row: each record's named
// fields as strings. Read by the file dataset plugins (text_file) and fuzzed
// (tests/fuzz/fuzz_csv.cpp). No LibTorch here.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace inflab {

struct TextRecords {
  std::vector<std::string> fields;               // the names asked for ("" = not read)
  std::vector<std::vector<std::string>> values;  // [record][field]; "" for a field not read
  std::vector<std::int64_t> lines;               // the line each record starts on (1-based)
};

// `format`: "jsonl", "csv", or "auto" (by the name's extension: .jsonl/.json or .csv). JSON lines:
// one object per non-blank line, a field a string, a number or a boolean. CSV (RFC 4180, quoted
// fields may hold commas, quotes and newlines): the first record names the columns. Errors name
// `name`, the line and the field: a missing field, a value of another type, a malformed line or
// record, a record with a different number of columns than the header.
TextRecords parse_text_records(const std::string& content, const std::string& format,
                               const std::vector<std::string>& fields, const std::string& name);
TextRecords read_text_records(const std::string& path, const std::string& format,
                              const std::vector<std::string>& fields);

}  // namespace inflab
