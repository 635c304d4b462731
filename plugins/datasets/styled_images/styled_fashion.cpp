// The paper's image-generation class-detection data (its Table 2, diffusion rows) on real 28x28
// Fashion-MNIST clothing (Debian's dataset-fashion-mnist), for a conditional denoiser (ddpm_lora).
// The styles and the style/subject modes are styled_images.hpp's. The base pretrains on the
// training file (all 60,000 images in mode style; those not of a subject in mode subject), in the
// file's order; the fine-tuning and query images come from the test file, shuffled by
// `finetune_seed`, so no image is in both. finetune_seed never changes the pretraining images, and
// the framework leaves it out of the base's cache key: seeds share one pretrained base.
// Conditions: the ten clothing classes, then the style names. Example ids: a training-file image's
// row, a test-file image's row + 60,000.
#include <fmt/format.h>

#include <algorithm>
#include <inflab/error.hpp>
#include <inflab/readers.hpp>
#include <numeric>
#include <random>

#include "styled_images.hpp"

namespace {

const std::vector<std::string> kClassNames{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                           "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

const char* kMissing =
    "install it with `apt-get install dataset-fashion-mnist` (./inflab does this on first use) or set the "
    "dataset's data_dir";

inflab::styled::SourceImages source(const inflab::IdxImages& idx, std::int64_t id_offset) {
  inflab::styled::SourceImages out;
  if (idx.rows != 28 || idx.cols != 28)
    throw inflab::Error(
        fmt::format("dataset styled_fashion: expected 28x28 images, found {}x{}", idx.rows, idx.cols));
  out.side = 28;
  out.id_offset = id_offset;
  out.pixels.resize(idx.pixels.size());
  std::transform(idx.pixels.begin(), idx.pixels.end(), out.pixels.begin(),
                 [](std::uint8_t v) { return static_cast<float>(v) / 255.0f; });
  out.labels.assign(idx.labels.begin(), idx.labels.end());
  return out;
}

class StyledFashion : public inflab::Dataset {
 public:
  void configure(const inflab::Options& options) override {
    options_ = options;
    deal_ = inflab::styled::read_deal(options, "styled_fashion", kClassNames);
  }

  inflab::DatasetSplits load() override {
    const std::filesystem::path dir = options_.get_string("data_dir");
    const auto pretrain = source(
        inflab::read_idx(dir / "train-images-idx3-ubyte.gz", dir / "train-labels-idx1-ubyte.gz", kMissing, 9),
        0);
    const auto finetune = source(
        inflab::read_idx(dir / "t10k-images-idx3-ubyte.gz", dir / "t10k-labels-idx1-ubyte.gz", kMissing, 9),
        static_cast<std::int64_t>(pretrain.count()));
    std::vector<std::int64_t> order(static_cast<std::size_t>(finetune.count()));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(),
                 std::mt19937_64(static_cast<std::uint64_t>(options_.get_int("finetune_seed"))));
    return inflab::styled::deal(deal_, finetune, order, &pretrain);
  }

 private:
  inflab::Options options_;
  inflab::styled::Deal deal_;
};

std::vector<inflab::OptionSpec> options() {
  auto out = inflab::styled::deal_options(10000, 60000, "training-file images");
  out.push_back({"finetune_seed", inflab::OptionType::Int, std::int64_t{0},
                 "which test-file images are styled, held out and queried (never the base's images)"});
  out.push_back({"data_dir", inflab::OptionType::String, std::string("/usr/share/datasets/fashion-mnist"),
                 "folder of the gzip IDX files"});
  return out;
}

}  // namespace

INFLAB_PLUGIN(Dataset, "styled_fashion", "0.1.0",
              "Real 28x28 Fashion-MNIST clothing rendered in styles (or held-out subjects) for conditional "
              "diffusion class detection",
              options, StyledFashion)
