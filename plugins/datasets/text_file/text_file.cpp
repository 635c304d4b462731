// A user's own text file: JSON lines or CSV, the text and class label fields named in the TOML
// (text classification), or a prompt and a response (instruction data for task causal_lm). A
// validation file, or a share of the training file drawn with shuffle_seed. No code needed:
//   [dataset]
//   plugin = "text_file"
//   train = "examples/text_file/reviews_train.jsonl"
//   text_field = "review"
//   label_field = "rating"
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <inflab/dataset.hpp>
#include <inflab/error.hpp>
#include <inflab/splits.hpp>
#include <inflab/text_records.hpp>
#include <map>

namespace {

bool is_integer(const std::string& s) {
  if (s.empty()) return false;
  std::size_t i = s[0] == '-' ? 1 : 0;
  return i < s.size() && std::all_of(s.begin() + static_cast<std::ptrdiff_t>(i), s.end(),
                                     [](unsigned char c) { return std::isdigit(c); });
}

class TextFile : public inflab::Dataset {
 public:
  void configure(const inflab::Options& options) override { options_ = options; }

  inflab::DatasetSplits load() override {
    const std::string train_path = options_.get_string("train");
    if (train_path.empty())
      throw inflab::Error(
          "dataset text_file: key 'dataset.train' is required: the training file (.jsonl or .csv)");
    const std::string text_field = options_.get_string("text_field"),
                      label_field = options_.get_string("label_field"),
                      response_field = options_.get_string("response_field");
    if (text_field.empty())
      throw inflab::Error("dataset text_file: key 'dataset.text_field' must name a field");
    const std::vector<std::string> fields{text_field, label_field, response_field};
    const auto train = inflab::read_text_records(train_path, options_.get_string("format"), fields);
    if (train.values.empty()) throw inflab::Error(fmt::format("{}: no records", train_path));

    // The classes: the training file's labels, in numeric order when all are integers. Without a
    // label field every example is of one class ("all").
    std::vector<std::string> classes;
    for (const auto& record : train.values)
      if (std::find(classes.begin(), classes.end(), class_of(record)) == classes.end())
        classes.push_back(class_of(record));
    const bool numeric = std::all_of(classes.begin(), classes.end(), is_integer);
    std::sort(classes.begin(), classes.end(), [&](const std::string& a, const std::string& b) {
      return numeric ? std::stoll(a) < std::stoll(b) : a < b;
    });
    std::map<std::string, std::int64_t> index;
    for (std::size_t c = 0; c < classes.size(); ++c) index[classes[c]] = static_cast<std::int64_t>(c);

    auto texts_of = [&](const inflab::TextRecords& records, const std::string& path) {
      inflab::LabeledTexts out;
      for (std::size_t r = 0; r < records.values.size(); ++r) {
        const auto& record = records.values[r];
        if (record[0].empty())
          throw inflab::Error(fmt::format("{}:{}: field '{}' is empty", path, records.lines[r], text_field));
        auto found = index.find(class_of(record));
        if (found == index.end())
          throw inflab::Error(fmt::format(
              "{}:{}: field '{}': class '{}' does not occur in the training file {} "
              "(classes: {})",
              path, records.lines[r], label_field, class_of(record), train_path, fmt::join(classes, ", ")));
        out.texts.push_back(record[0]);
        out.labels.push_back(found->second);
        if (!response_field.empty()) out.responses.push_back(record[2]);
      }
      return out;
    };
    const inflab::LabeledTexts train_texts = texts_of(train, train_path);
    const std::string validation_path = options_.get_string("validation");
    inflab::Options sizes = options_;
    const auto total = static_cast<std::int64_t>(train_texts.texts.size());
    if (!validation_path.empty()) {
      const auto validation =
          inflab::read_text_records(validation_path, options_.get_string("format"), fields);
      const inflab::LabeledTexts validation_texts = texts_of(validation, validation_path);
      const auto available = static_cast<std::int64_t>(validation_texts.texts.size());
      if (sizes.get_int("n_validation") == 0) sizes.set("n_validation", available);
      if (sizes.get_int("n_train") == 0) sizes.set("n_train", total - sizes.get_int("n_pretrain"));
      return inflab::text_splits("text_file", train_texts, validation_texts, sizes, classes);
    }
    if (sizes.get_int("n_validation") == 0)
      sizes.set(
          "n_validation",
          std::max<std::int64_t>(1, std::llround(options_.get_double("validation_share") * double(total))));
    if (sizes.get_int("n_train") == 0)
      sizes.set("n_train", total - sizes.get_int("n_validation") - sizes.get_int("n_pretrain"));
    return inflab::text_splits("text_file", train_texts, sizes, classes);
  }

 private:
  std::string class_of(const std::vector<std::string>& record) const {
    return options_.get_string("label_field").empty() ? std::string("all") : record[1];
  }
  inflab::Options options_;
};

std::vector<inflab::OptionSpec> options() {
  using inflab::OptionType;
  auto specs = inflab::text_split_option_specs(0, 0, 0);
  for (auto& spec : specs) {
    if (spec.name == "n_train") spec.help = "training examples (the ones scored); 0: all that remain";
    if (spec.name == "n_validation")
      spec.help =
          "validation examples (queries); 0: all of the validation file, or validation_share of the training "
          "file";
    if (spec.name == "n_pretrain")
      spec.help =
          "examples that train a classifier head on a frozen encoder (minilm_lora needs some), disjoint "
          "from train";
  }
  specs.push_back({"train", OptionType::String, std::string(),
                   "the training file (.jsonl or .csv), from the working directory", true});
  specs.push_back({"validation", OptionType::String, std::string(),
                   "a validation file in the same format (default: a share of the training file)"});
  specs.push_back({"validation_share", OptionType::Double, 0.2,
                   "without a validation file: the share of the training file that becomes the queries",
                   false, inflab::Range{0, 1, true, true}});
  specs.push_back(
      {"format", OptionType::String, std::string("auto"), "\"jsonl\", \"csv\" or \"auto\" (by extension)"});
  specs.push_back(
      {"text_field", OptionType::String, std::string("text"), "the field (CSV: column) of the text"});
  specs.push_back({"label_field", OptionType::String, std::string("label"),
                   "the field of the class label (any string or number); \"\": one class"});
  specs.push_back({"response_field", OptionType::String, std::string(),
                   "instruction data (task causal_lm): the field of the response to the text"});
  return specs;
}

}  // namespace

INFLAB_PLUGIN(Dataset, "text_file", "1.0.0",
              "Your own text file (JSON lines or CSV): classification, or instructions with responses",
              options, TextFile)
