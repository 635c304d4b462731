// The DataInf paper's own text class-detection datasets (Table 2), verbatim: JSON lines converted
// row by row from its repository's Hugging Face arrow files, committed in
// data/datainf-generation-tasks/ (README.md there: source and checksums) and checked by SHA-256
// before use. 10 classes (`variation`), 90 training and 10 test examples each.
//   grammars             sentence transformations
//   math_without_reason  math word problems, "Answer: N"
//   math_with_reason     the same templates, "Reason: ... Answer: N"
// Each example's prompt is `prompt`; its response is the rest of `text` without Llama-2's "</s>",
// which the model's own end-of-sequence token replaces (task.template = "raw").
#include <ATen/ops/empty.h>
#include <fmt/format.h>
#include <openssl/evp.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <inflab/dataset.hpp>
#include <inflab/error.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

namespace fs = std::filesystem;

namespace {

// SHA-256 of the committed files (data/datainf-generation-tasks/README.md lists the same).
const std::map<std::string, std::string>& expected_digests() {
  static const std::map<std::string, std::string> digests{
      {"grammars_test.jsonl", "7e3e3b5b8d373c2db3fe311f3acc6f3c9406d883a9426192a59cd7a8a6231582"},
      {"grammars_train.jsonl", "1adfb66b8caed195fda8251c61f733ca9f8ccc5bf38ce80f5b302ea6621a726d"},
      {"math_with_reason_test.jsonl", "b4768177585631ee01ae6cd4218e06ee83c1b570311f55e0dcf7229250e0693f"},
      {"math_with_reason_train.jsonl", "0a514b84a25b032ad670af0232736da18461b7ee9dd526a6eed75e562c4261f1"},
      {"math_without_reason_test.jsonl", "6bdedef78ce595977a424638733860e79eab42a7709352c0e61fac6c0accddfe"},
      {"math_without_reason_train.jsonl",
       "6c8abfbfbf7884a30af257b8309ab7096e2fe2a55736b4e1e693a67a72c53657"}};
  return digests;
}

std::string sha256_hex(const std::string& bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr) != 1)
    throw inflab::Error("dataset paper_generation_tasks: OpenSSL could not compute a SHA-256");
  std::string out;
  for (unsigned int i = 0; i < length; ++i) out += fmt::format("{:02x}", digest[i]);
  return out;
}

// The file's bytes, after its checksum matched.
std::string read_checked(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in)
    throw inflab::Error(
        fmt::format("dataset paper_generation_tasks: cannot read {} (the repository's "
                    "data/datainf-generation-tasks/, or set dataset.data_dir)",
                    file.string()));
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string bytes = buffer.str();
  const std::string& expected = expected_digests().at(file.filename().string());
  if (std::string found = sha256_hex(bytes); found != expected)
    throw inflab::Error(
        fmt::format("dataset paper_generation_tasks: {} has SHA-256 {}, expected {} (the "
                    "paper's file, verbatim); restore it with git checkout",
                    file.string(), found, expected));
  return bytes;
}

struct Rows {
  std::vector<std::string> prompts, responses, classes;
};

Rows read_rows(const fs::path& file) {
  std::istringstream lines(read_checked(file));
  Rows out;
  std::size_t number = 0;
  for (std::string line; std::getline(lines, line);) {
    ++number;
    if (line.empty()) continue;
    const auto where = fmt::format("{}:{}", file.string(), number);
    nlohmann::json row;
    try {
      row = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      throw inflab::Error(fmt::format("{}: not JSON ({})", where, e.what()));
    }
    for (const char* key : {"prompt", "text", "variation"})
      if (!row.contains(key) || !row[key].is_string())
        throw inflab::Error(fmt::format("{}: expected a string field \"{}\"", where, key));
    const auto prompt = row["prompt"].get<std::string>(), text = row["text"].get<std::string>();
    const std::string end = "</s>";
    if (text.compare(0, prompt.size(), prompt) != 0 || text.size() < prompt.size() + end.size() ||
        text.compare(text.size() - end.size(), end.size(), end) != 0)
      throw inflab::Error(fmt::format("{}: \"text\" must be \"prompt\" + the answer + \"</s>\"", where));
    out.prompts.push_back(prompt);
    out.responses.push_back(text.substr(prompt.size(), text.size() - prompt.size() - end.size()));
    out.classes.push_back(row["variation"].get<std::string>());
  }
  return out;
}

class PaperGenerationTasks : public inflab::Dataset {
 public:
  void configure(const inflab::Options& options) override {
    task_ = options.get_string("task");
    if (task_ != "grammars" && task_ != "math_without_reason" && task_ != "math_with_reason")
      throw inflab::Error(
          fmt::format("key 'dataset.task': expected \"grammars\", \"math_without_reason\" or "
                      "\"math_with_reason\", found \"{}\"",
                      task_));
    train_ = options.get_int("train_per_class"), test_ = options.get_int("test_per_class");
    dir_ = options.get_string("data_dir");
    if (dir_.empty()) dir_ = INFLAB_PAPER_TASKS_DIR;
  }

  inflab::DatasetSplits load() override {
    Rows train = read_rows(fs::path(dir_) / (task_ + "_train.jsonl"));
    Rows test = read_rows(fs::path(dir_) / (task_ + "_test.jsonl"));
    inflab::DatasetSplits out;
    for (const auto& c : train.classes)  // classes in order of first appearance
      if (std::find(out.class_names.begin(), out.class_names.end(), c) == out.class_names.end())
        out.class_names.push_back(c);
    std::int64_t id = 0;
    fill(out.train, train, out.class_names, id, "training", train_);
    fill(out.validation, test, out.class_names, id, "test", test_);
    return out;
  }

 private:
  // The first `per_class` rows of each class, in file order; ids are row numbers (test rows after
  // the training file's), so a subset keeps the ids of the full set.
  void fill(inflab::Split& split, const Rows& rows, const std::vector<std::string>& classes, std::int64_t& id,
            const char* which, std::int64_t per_class) const {
    std::vector<std::int64_t> labels, taken(classes.size(), 0);
    for (std::size_t i = 0; i < rows.classes.size(); ++i, ++id) {
      auto found = std::find(classes.begin(), classes.end(), rows.classes[i]);
      if (found == classes.end())
        throw inflab::Error(
            fmt::format("dataset paper_generation_tasks: {} example {} of task {} has class "
                        "\"{}\", which no training example has",
                        which, i, task_, rows.classes[i]));
      const auto label = found - classes.begin();
      if (taken[static_cast<std::size_t>(label)]++ >= per_class) continue;
      split.texts.push_back(rows.prompts[i]);
      split.responses.push_back(rows.responses[i]);
      split.ids.push_back(id);
      labels.push_back(label);
    }
    split.labels = at::empty({static_cast<std::int64_t>(labels.size())}, c10::kLong);
    std::copy(labels.begin(), labels.end(), split.labels.data_ptr<std::int64_t>());
  }

  std::string task_, dir_;
  std::int64_t train_ = 90, test_ = 10;
};

std::vector<inflab::OptionSpec> options() {
  return {
      {"task", inflab::OptionType::String, std::string("math_without_reason"),
       "grammars (sentence transformations), math_without_reason or math_with_reason"},
      {"train_per_class", inflab::OptionType::Int, std::int64_t{90},
       "the first k training examples of each class (the paper: all 90)", false, inflab::between(1, 90)},
      {"test_per_class", inflab::OptionType::Int, std::int64_t{10},
       "the first k test examples of each class (the paper: all 10)", false, inflab::between(1, 10)},
      {"data_dir", inflab::OptionType::String, std::string(),
       "directory of the .jsonl files (default: the repository's data/datainf-generation-tasks)"},
  };
}

}  // namespace

INFLAB_PLUGIN(Dataset, "paper_generation_tasks", "1.0.0",
              "The DataInf paper's own text class-detection data, verbatim (sentence transformations, math "
              "without and with reasoning; 10 classes x 90 train / 10 test), checked by SHA-256",
              options, PaperGenerationTasks)
