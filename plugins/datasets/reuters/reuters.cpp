// Reuters-21578 topic detection (ModApte split) as shipped in Debian's weka package:
// ReutersGrain-{train,test}.arff and ReutersCorn-{train,test}.arff, 1554 train / 604 test news
// stories, binary label "is about the topic". `./inflab setup` extracts the files from the .deb
// (weka itself, a Java program, is not installed).
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <inflab/dataset.hpp>
#include <inflab/error.hpp>
#include <inflab/splits.hpp>
#include <sstream>

namespace {

// One ARFF data line: 'quoted text with \n \' \\ escapes',label
bool parse_line(const std::string& line, std::string& text, std::int64_t& label) {
  if (line.empty() || line[0] != '\'') return false;
  text.clear();
  std::size_t i = 1;
  for (; i < line.size() && line[i] != '\''; ++i) {
    if (line[i] == '\\' && i + 1 < line.size()) {
      char next = line[++i];
      text += next == 'n' ? '\n' : next == 't' ? '\t' : next == 'r' ? '\r' : next;
    } else {
      text += line[i];
    }
  }
  if (i >= line.size() || i + 2 >= line.size() || line[i + 1] != ',') return false;
  std::string value = line.substr(i + 2);
  while (!value.empty() && (value.back() == '\r' || value.back() == ' ')) value.pop_back();
  if (value != "0" && value != "1") return false;
  label = value == "1";
  return true;
}

inflab::LabeledTexts read_arff(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in)
    throw inflab::Error(
        fmt::format("{}: missing; run `./inflab setup` (it extracts the Reuters ARFF files from Debian's "
                    "weka package into the data cache)",
                    path.string()));
  inflab::LabeledTexts out;
  std::string line, text;
  bool data = false;
  for (int number = 1; std::getline(in, line); ++number) {
    if (!data) {
      data = line.rfind("@data", 0) == 0;
      continue;
    }
    if (line.empty()) continue;
    std::int64_t label = 0;
    if (!parse_line(line, text, label))
      throw inflab::Error(fmt::format("{}:{}: expected 'text',0 or 'text',1, found '{}'", path.string(),
                                      number, line.substr(0, 60)));
    out.texts.push_back(text);
    out.labels.push_back(label);
  }
  if (out.texts.empty()) throw inflab::Error(fmt::format("{}: no @data rows", path.string()));
  return out;
}

class Reuters : public inflab::Dataset {
 public:
  void configure(const inflab::Options& options) override {
    options_ = options;
    topic_ = options.get_string("topic");
    if (topic_ != "grain" && topic_ != "corn")
      throw inflab::Error(
          fmt::format("dataset reuters: topic must be \"grain\" or \"corn\", found \"{}\"", topic_));
  }

  inflab::DatasetSplits load() override {
    std::filesystem::path dir = options_.get_string("data_dir");
    if (dir.empty()) dir = std::filesystem::path(inflab::data_cache_root()) / "weka";
    std::string stem = topic_ == "grain" ? "ReutersGrain" : "ReutersCorn";
    return inflab::text_splits("reuters", read_arff(dir / (stem + "-train.arff")),
                               read_arff(dir / (stem + "-test.arff")), options_, {"other", topic_});
  }

 private:
  inflab::Options options_;
  std::string topic_;
};

std::vector<inflab::OptionSpec> options() {
  auto specs = inflab::text_split_option_specs(1000, 300, 300);
  specs.push_back({"topic", inflab::OptionType::String, std::string("grain"), "grain or corn"});
  specs.push_back({"data_dir", inflab::OptionType::String, std::string(),
                   "directory of the ARFF files (default: the data cache)"});
  return specs;
}

}  // namespace

INFLAB_PLUGIN(Dataset, "reuters", "1.0.0",
              "Reuters-21578 grain/corn topic detection, news stories (Debian weka examples)", options,
              Reuters)
