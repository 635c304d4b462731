// Splitting helpers shared by dataset plugins.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "inflab/dataset.hpp"
#include "inflab/options.hpp"

namespace inflab {

// Shuffles 0..total-1 with `seed`; the first n_pretrain go to pretrain, the next n_train to train,
// the next n_validation to validation (a size may be 0). Throws, naming `dataset`, when they do not fit.
struct SplitIndices {
  std::vector<std::int64_t> pretrain, train, validation;
};
SplitIndices shuffle_split(const std::string& dataset, std::int64_t total, std::int64_t n_pretrain,
                           std::int64_t n_train, std::int64_t n_validation, std::uint64_t seed);

// Text classification from a training file and a test file: pretrain and train come from the
// training file (disjoint), validation from the test file. Options: text_split_option_specs().
struct LabeledTexts {
  std::vector<std::string> texts;
  std::vector<std::int64_t> labels;
  std::vector<std::string> responses;  // instruction data: the response to each text (else empty)
};
std::vector<OptionSpec> text_split_option_specs(std::int64_t n_train, std::int64_t n_validation,
                                                std::int64_t n_pretrain);
DatasetSplits text_splits(const std::string& dataset, const LabeledTexts& train_file,
                          const LabeledTexts& test_file, const Options& options,
                          std::vector<std::string> class_names);

// Text classification from a single file: pretrain, train and validation are disjoint draws.
DatasetSplits text_splits(const std::string& dataset, const LabeledTexts& all, const Options& options,
                          std::vector<std::string> class_names);

// A prepared two-column TSV: the header "<label column><TAB><text column>", then one row per
// example whose label is `negative` (0) or `positive` (1). Errors name the file and the line;
// a missing file names `restore`, the command that prepares it.
LabeledTexts read_labeled_tsv(const std::string& path, const std::string& label_column,
                              const std::string& text_column, const std::string& negative,
                              const std::string& positive, const std::string& restore);

// The data cache: $INFLAB_DATA, else ~/.cache/inflab/data (prepared by `./inflab setup`).
std::string data_cache_root();

}  // namespace inflab
