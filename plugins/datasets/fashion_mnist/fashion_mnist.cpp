// Fashion-MNIST from Debian's dataset-fashion-mnist (gzip IDX files). The pretrain split is
// taken from the training file disjoint from the train split; validation from the test file.
#include <ATen/ops/empty.h>
#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <inflab/dataset.hpp>
#include <inflab/error.hpp>
#include <inflab/readers.hpp>
#include <numeric>
#include <random>

namespace {

const std::vector<std::string> kClassNames{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                           "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

const char* kMissing =
    "install it with `apt-get install dataset-fashion-mnist` (./inflab does this on first use) or set the "
    "dataset's data_dir";

class FashionMnist : public inflab::Dataset {
 public:
  void configure(const inflab::Options& options) override { options_ = options; }

  inflab::DatasetSplits load() override {
    std::filesystem::path dir = options_.get_string("data_dir");
    auto classes = options_.get_int_list("classes");
    if (classes.empty()) classes = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    for (auto c : classes)
      if (c < 0 || c > 9)
        throw inflab::Error(fmt::format("dataset fashion_mnist: classes must be in 0..9, found {}", c));
    std::vector<std::int64_t> remap(10, -1);
    inflab::DatasetSplits splits;
    for (std::size_t k = 0; k < classes.size(); ++k) {
      remap[classes[k]] = static_cast<std::int64_t>(k);
      splits.class_names.push_back(kClassNames[classes[k]]);
    }
    using inflab::IdxImages;
    IdxImages train_file =
        inflab::read_idx(dir / "train-images-idx3-ubyte.gz", dir / "train-labels-idx1-ubyte.gz", kMissing, 9);
    IdxImages test_file =
        inflab::read_idx(dir / "t10k-images-idx3-ubyte.gz", dir / "t10k-labels-idx1-ubyte.gz", kMissing, 9);
    std::mt19937_64 rng(static_cast<std::uint64_t>(options_.get_int("shuffle_seed")));
    auto eligible = [&](const IdxImages& idx) {
      std::vector<std::int64_t> out;
      for (std::size_t i = 0; i < idx.count; ++i)
        if (remap[idx.labels[i]] >= 0) out.push_back(static_cast<std::int64_t>(i));
      std::shuffle(out.begin(), out.end(), rng);
      return out;
    };
    auto from_train = eligible(train_file);
    auto from_test = eligible(test_file);
    const auto n_train = options_.get_int("n_train"), n_pretrain = options_.get_int("n_pretrain"),
               n_validation = options_.get_int("n_validation");
    if (n_train < 1 || n_validation < 1 || n_pretrain < 0)
      throw inflab::Error("dataset fashion_mnist: n_train and n_validation must be >= 1, n_pretrain >= 0");
    if (n_train + n_pretrain > static_cast<std::int64_t>(from_train.size()))
      throw inflab::Error(
          fmt::format("dataset fashion_mnist: n_train + n_pretrain = {} but the chosen classes have only {} "
                      "training images",
                      n_train + n_pretrain, from_train.size()));
    if (n_validation > static_cast<std::int64_t>(from_test.size()))
      throw inflab::Error(fmt::format(
          "dataset fashion_mnist: n_validation = {} but the chosen classes have only {} test images",
          n_validation, from_test.size()));
    auto make = [&](const IdxImages& idx, const std::vector<std::int64_t>& order, std::int64_t start,
                    std::int64_t count) {
      inflab::Split split;
      const std::size_t pixel_count = idx.rows * idx.cols;
      split.inputs = at::empty({count, static_cast<std::int64_t>(pixel_count)}, c10::kFloat);
      split.labels = at::empty({count}, c10::kLong);
      float* x = split.inputs.data_ptr<float>();
      std::int64_t* y = split.labels.data_ptr<std::int64_t>();
      for (std::int64_t k = 0; k < count; ++k) {
        std::int64_t i = order[start + k];
        const std::uint8_t* pixels = idx.pixels.data() + i * pixel_count;
        for (std::size_t p = 0; p < pixel_count; ++p) x[k * pixel_count + p] = pixels[p] / 255.0f;
        y[k] = remap[idx.labels[i]];
        split.ids.push_back(i);
      }
      return split;
    };
    splits.pretrain = make(train_file, from_train, 0, n_pretrain);
    splits.train = make(train_file, from_train, n_pretrain, n_train);
    splits.validation = make(test_file, from_test, 0, n_validation);
    return splits;
  }

 private:
  inflab::Options options_;
};

std::vector<inflab::OptionSpec> options() {
  using inflab::OptionType;
  return {
      {"data_dir", OptionType::String, std::string("/usr/share/datasets/fashion-mnist"),
       "directory of the gzip IDX files"},
      {"n_train", OptionType::Int, std::int64_t{1000}, "training examples (the ones scored)", false,
       inflab::between(1, 60000)},
      {"n_validation", OptionType::Int, std::int64_t{200},
       "validation examples (queries), from the test file", false, inflab::between(1, 10000)},
      {"n_pretrain", OptionType::Int, std::int64_t{5000},
       "examples for base pretraining, disjoint from train", false, inflab::between(0, 60000)},
      {"classes", OptionType::IntList, std::vector<std::int64_t>{},
       "class subset, e.g. [0, 6] (default: all 10)", false, inflab::between(0, 9)},
      {"shuffle_seed", OptionType::Int, std::int64_t{0}, "which examples are drawn"},
  };
}

}  // namespace

INFLAB_PLUGIN(Dataset, "fashion_mnist", "1.0.0",
              "Fashion-MNIST 28x28 clothing images, 10 classes (Debian dataset-fashion-mnist)", options,
              FashionMnist)
