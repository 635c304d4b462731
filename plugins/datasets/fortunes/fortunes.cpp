// Instruction data from real text: the fortune cookies of Debian's `fortunes` package (BSD), one
// category per file of /usr/share/games/fortunes (art, computers, food, people, science, ...).
// Each example names a category and answers with one of its fortunes:
//   prompt   "A fortune from the <category> collection:"
//   response the fortune, its whitespace (line breaks, the tabs before "-- author") collapsed to
//            single spaces
// The label is the category. Fortunes longer than `max_chars` are left out (a long one costs a
// gradient many short ones do) and a text met twice is kept once, in the files' sorted order;
// train and validation are disjoint draws with `shuffle_seed`. About 15,000 fortunes, 11,108 of
// at most 160 characters: enough for an index of 10^4 training examples.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <inflab/dataset.hpp>
#include <inflab/error.hpp>
#include <inflab/splits.hpp>
#include <set>
#include <sstream>

namespace {

std::string collapse_whitespace(const std::string& text) {
  std::istringstream in(text);
  std::string out;
  for (std::string word; in >> word;) out += (out.empty() ? "" : " ") + word;
  return out;
}

// The fortunes of one file: items separated by lines holding a single '%'.
std::vector<std::string> read_fortune_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw inflab::Error(fmt::format("dataset fortunes: cannot read {}", path.string()));
  std::vector<std::string> out;
  std::string item, line;
  auto flush = [&] {
    std::string text = collapse_whitespace(item);
    if (!text.empty()) out.push_back(text);
    item.clear();
  };
  while (std::getline(in, line)) {
    if (line == "%")
      flush();
    else
      item += line + "\n";
  }
  flush();
  return out;
}

class Fortunes : public inflab::Dataset {
 public:
  void configure(const inflab::Options& options) override { options_ = options; }

  inflab::DatasetSplits load() override {
    const std::filesystem::path dir = options_.get_string("directory");
    const auto max_chars = static_cast<std::size_t>(options_.get_int("max_chars"));
    if (!std::filesystem::is_directory(dir))
      throw inflab::Error(fmt::format(
          "dataset fortunes: {} is not a directory; install Debian's fortunes package (`./inflab setup` "
          "does, or `sudo apt-get install fortunes`) or set dataset.directory",
          dir.string()));
    // A category file is a plain file without an extension (the .dat are indexes, .u8 links).
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(dir))
      if (entry.is_regular_file() && !entry.is_symlink() && !entry.path().has_extension())
        files.push_back(entry.path());
    std::sort(files.begin(), files.end());
    inflab::LabeledTexts all;
    std::vector<std::string> class_names;
    std::set<std::string> seen;
    std::size_t longer = 0;
    for (const auto& file : files) {
      std::int64_t label = static_cast<std::int64_t>(class_names.size());
      bool any = false;
      for (std::string& fortune : read_fortune_file(file)) {
        if (fortune.size() > max_chars) {
          ++longer;
          continue;
        }
        if (!seen.insert(fortune).second) continue;
        all.texts.push_back(fmt::format("A fortune from the {} collection:", file.filename().string()));
        all.responses.push_back(std::move(fortune));
        all.labels.push_back(label);
        any = true;
      }
      if (any) class_names.push_back(file.filename().string());
    }
    if (all.texts.empty())
      throw inflab::Error(
          fmt::format("dataset fortunes: no fortune of at most {} characters in {} ({} longer)", max_chars,
                      dir.string(), longer));
    return inflab::text_splits("fortunes", all, options_, std::move(class_names));
  }

 private:
  inflab::Options options_;
};

std::vector<inflab::OptionSpec> options() {
  auto specs = inflab::text_split_option_specs(10000, 100, 0);
  specs.push_back({"directory", inflab::OptionType::String, std::string("/usr/share/games/fortunes"),
                   "the fortune files (Debian's fortunes package)"});
  specs.push_back({"max_chars", inflab::OptionType::Int, std::int64_t{160},
                   "fortunes longer than this (after collapsing whitespace) are left out", false,
                   inflab::between(1, 1e6)});
  return specs;
}

}  // namespace

INFLAB_PLUGIN(
    Dataset, "fortunes", "1.0.0",
    "Fortune cookies of Debian's fortunes package as instruction data: a category asked for, one of "
    "its fortunes answered; label = category",
    options, Fortunes)
