// UCI optical digits (8x8 grey images, 10 classes, 1797 examples) from the copy that Debian's
// python3-sklearn ships (sklearn/datasets/data/digits.csv.gz: 64 pixel values 0..16, then the
// label). `./inflab setup` extracts it into the data cache without installing scikit-learn.
#include <ATen/ops/empty.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <filesystem>
#include <inflab/dataset.hpp>
#include <inflab/error.hpp>
#include <inflab/readers.hpp>
#include <inflab/splits.hpp>
#include <sstream>

namespace {

std::string default_path() {
  return (std::filesystem::path(inflab::data_cache_root()) / "sklearn" / "digits.csv.gz").string();
}

class Digits : public inflab::Dataset {
 public:
  void configure(const inflab::Options& options) override { options_ = options; }

  inflab::DatasetSplits load() override {
    std::string path = options_.get_string("path");
    if (path.empty()) path = default_path();
    inflab::DigitsTable table = inflab::parse_digits_csv(
        inflab::read_gzip(path,
                          "run `./inflab setup` (it extracts digits.csv.gz from Debian's python3-sklearn "
                          "package into the data cache) or set the dataset's path"),
        path);
    const auto& images = table.images;
    const auto& labels = table.labels;
    if (options_.get_int("n_train") < 1 || options_.get_int("n_validation") < 1)
      throw inflab::Error("dataset digits: n_train and n_validation must be at least 1 (each split >= 1)");
    auto indices = inflab::shuffle_split("digits", static_cast<std::int64_t>(images.size()),
                                         options_.get_int("n_pretrain"), options_.get_int("n_train"),
                                         options_.get_int("n_validation"),
                                         static_cast<std::uint64_t>(options_.get_int("shuffle_seed")));
    auto make = [&](const std::vector<std::int64_t>& rows) {
      const auto count = static_cast<std::int64_t>(rows.size());
      inflab::Split split;
      split.inputs = at::empty({count, 64}, c10::kFloat);
      split.labels = at::empty({count}, c10::kLong);
      for (std::int64_t k = 0; k < count; ++k) {
        std::int64_t i = rows[k];
        std::copy(images[i].begin(), images[i].end(), split.inputs.data_ptr<float>() + k * 64);
        split.labels.data_ptr<std::int64_t>()[k] = labels[i];
        split.ids.push_back(i);
      }
      return split;
    };
    inflab::DatasetSplits splits;
    splits.pretrain = make(indices.pretrain);
    splits.train = make(indices.train);
    splits.validation = make(indices.validation);
    for (int c = 0; c < 10; ++c) splits.class_names.push_back(std::to_string(c));
    return splits;
  }

 private:
  inflab::Options options_;
};

std::vector<inflab::OptionSpec> options() {
  using inflab::OptionType;
  return {
      {"path", OptionType::String, std::string(),
       "digits.csv.gz (default: $INFLAB_DATA/sklearn/digits.csv.gz, prepared by ./inflab setup)"},
      {"n_train", OptionType::Int, std::int64_t{800}, "training examples (the ones scored)", false,
       inflab::between(1, 1797)},
      {"n_validation", OptionType::Int, std::int64_t{300}, "validation examples (queries)", false,
       inflab::between(1, 1797)},
      {"n_pretrain", OptionType::Int, std::int64_t{600},
       "examples for base pretraining, disjoint from the others", false, inflab::between(0, 1797)},
      {"shuffle_seed", OptionType::Int, std::int64_t{0}, "which examples go to which split"},
  };
}

}  // namespace

INFLAB_PLUGIN(Dataset, "digits", "1.0.0",
              "UCI 8x8 handwritten digits, 10 classes, 1797 images (from Debian python3-sklearn)", options,
              Digits)
