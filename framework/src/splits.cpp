#include "inflab/splits.hpp"

#include <ATen/ops/empty.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "inflab/error.hpp"

namespace inflab {

SplitIndices shuffle_split(const std::string& dataset, std::int64_t total, std::int64_t n_pretrain,
                           std::int64_t n_train, std::int64_t n_validation, std::uint64_t seed) {
  if (n_pretrain < 0 || n_train < 0 || n_validation < 0 || n_pretrain + n_train + n_validation > total)
    throw Error(
        fmt::format("dataset {}: n_pretrain + n_train + n_validation = {} + {} + {} must fit in the {} "
                    "examples available",
                    dataset, n_pretrain, n_train, n_validation, total));
  std::vector<std::int64_t> order(static_cast<std::size_t>(total));
  for (std::int64_t i = 0; i < total; ++i) order[i] = i;
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  SplitIndices out;
  auto take = [&](std::int64_t start, std::int64_t count) {
    return std::vector<std::int64_t>(order.begin() + start, order.begin() + start + count);
  };
  out.pretrain = take(0, n_pretrain);
  out.train = take(n_pretrain, n_train);
  out.validation = take(n_pretrain + n_train, n_validation);
  return out;
}

std::vector<OptionSpec> text_split_option_specs(std::int64_t n_train, std::int64_t n_validation,
                                                std::int64_t n_pretrain) {
  return {
      {"n_train", OptionType::Int, n_train, "training examples (the ones scored)"},
      {"n_validation", OptionType::Int, n_validation,
       "validation examples (queries; from the test file where there is one)"},
      {"n_pretrain", OptionType::Int, n_pretrain,
       "examples that train the classifier head on the frozen encoder, disjoint from train"},
      {"shuffle_seed", OptionType::Int, std::int64_t{0}, "which examples are drawn"},
  };
}

namespace {
Split text_split(const LabeledTexts& source, const std::vector<std::int64_t>& rows) {
  Split split;
  split.labels = at::empty({static_cast<std::int64_t>(rows.size())}, c10::kLong);
  for (std::size_t k = 0; k < rows.size(); ++k) {
    split.texts.push_back(source.texts[rows[k]]);
    if (!source.responses.empty()) split.responses.push_back(source.responses[rows[k]]);
    split.labels.data_ptr<std::int64_t>()[k] = source.labels[rows[k]];
    split.ids.push_back(rows[k]);
  }
  return split;
}
}  // namespace

namespace {
void check_text_sizes(const std::string& dataset, const Options& options) {
  if (options.get_int("n_train") < 1 || options.get_int("n_validation") < 1)
    throw Error(fmt::format("dataset {}: n_train and n_validation must be at least 1", dataset));
}

DatasetSplits assemble(const LabeledTexts& train_source, const SplitIndices& from_train,
                       const LabeledTexts& validation_source, const std::vector<std::int64_t>& validation,
                       std::vector<std::string> class_names) {
  DatasetSplits splits;
  splits.pretrain = text_split(train_source, from_train.pretrain);
  splits.train = text_split(train_source, from_train.train);
  splits.validation = text_split(validation_source, validation);
  splits.class_names = std::move(class_names);
  return splits;
}
}  // namespace

DatasetSplits text_splits(const std::string& dataset, const LabeledTexts& train_file,
                          const LabeledTexts& test_file, const Options& options,
                          std::vector<std::string> class_names) {
  check_text_sizes(dataset, options);
  const auto seed = static_cast<std::uint64_t>(options.get_int("shuffle_seed"));
  SplitIndices from_train = shuffle_split(dataset, static_cast<std::int64_t>(train_file.texts.size()),
                                          options.get_int("n_pretrain"), options.get_int("n_train"), 0, seed);
  SplitIndices from_test = shuffle_split(dataset, static_cast<std::int64_t>(test_file.texts.size()), 0, 0,
                                         options.get_int("n_validation"), seed + 1);
  return assemble(train_file, from_train, test_file, from_test.validation, std::move(class_names));
}

DatasetSplits text_splits(const std::string& dataset, const LabeledTexts& all, const Options& options,
                          std::vector<std::string> class_names) {
  check_text_sizes(dataset, options);
  SplitIndices indices =
      shuffle_split(dataset, static_cast<std::int64_t>(all.texts.size()), options.get_int("n_pretrain"),
                    options.get_int("n_train"), options.get_int("n_validation"),
                    static_cast<std::uint64_t>(options.get_int("shuffle_seed")));
  return assemble(all, indices, all, indices.validation, std::move(class_names));
}

LabeledTexts read_labeled_tsv(const std::string& path, const std::string& label_column,
                              const std::string& text_column, const std::string& negative,
                              const std::string& positive, const std::string& restore) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("{}: missing; run {}", path, restore));
  LabeledTexts out;
  std::string line;
  std::getline(in, line);
  if (line != label_column + "\t" + text_column)
    throw Error(fmt::format("{}:1: expected the header '{}<TAB>{}', found '{}'", path, label_column,
                            text_column, line));
  for (int number = 2; std::getline(in, line); ++number) {
    auto tab = line.find('\t');
    std::string label = line.substr(0, tab);
    if (tab == std::string::npos || (label != negative && label != positive))
      throw Error(fmt::format("{}:{}: expected {} or {}, a tab, then the {}", path, number, positive,
                              negative, text_column));
    out.labels.push_back(label == positive);
    out.texts.push_back(line.substr(tab + 1));
  }
  return out;
}

std::string data_cache_root() {
  if (const char* data = std::getenv("INFLAB_DATA"); data && *data) return data;
  if (const char* home = std::getenv("HOME"); home && *home)
    return (std::filesystem::path(home) / ".cache" / "inflab" / "data").string();
  return "/tmp/inflab-data";
}

}  // namespace inflab
