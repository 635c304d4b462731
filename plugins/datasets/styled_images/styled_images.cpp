// The paper's image-generation class-detection data (its Table 2, diffusion rows) on real 8x8
// digits (Debian's python3-sklearn copy), for a conditional denoiser (ddpm_lora):
//   mode "style":   training images are digits rendered in one of a few styles by deterministic
//                   transforms (sketch = edge magnitude, posterize = two grey levels, negative,
//                   blur); the condition and class is the style. The base is pretrained on plain
//                   digits conditioned on their digit, so it has never seen a style.
//   mode "subject": training images are plain digits of `subjects`, classes the base's pretraining
//                   never saw (held out of its split), conditioned on their digit.
// Pixels are in [-1, 1] (the DDPM convention). Conditions: "0".."9", then the style names.
#include <ATen/ops/empty.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <inflab/dataset.hpp>
#include <inflab/error.hpp>
#include <inflab/readers.hpp>
#include <inflab/splits.hpp>
#include <numeric>
#include <random>

namespace {

using Image = std::array<float, 64>;  // 8 x 8, values in [0, 1]

Image stylise(const Image& x, const std::string& style) {
  Image y{};
  auto at = [&](int r, int c) { return r < 0 || r > 7 || c < 0 || c > 7 ? 0.0f : x[r * 8 + c]; };
  for (int r = 0; r < 8; ++r)
    for (int c = 0; c < 8; ++c) {
      const float v = x[r * 8 + c];
      if (style == "negative") {
        y[r * 8 + c] = 1 - v;
      } else if (style == "posterize") {
        y[r * 8 + c] = v >= 0.5f ? 1.0f : 0.0f;
      } else if (style == "sketch") {  // the largest step to a 4-neighbour: outlines
        float edge = 0;
        for (auto [dr, dc] : std::array<std::pair<int, int>, 4>{{{-1, 0}, {1, 0}, {0, -1}, {0, 1}}})
          edge = std::max(edge, std::fabs(v - at(r + dr, c + dc)));
        y[r * 8 + c] = std::min(1.0f, edge);
      } else if (style == "blur") {  // 3x3 box
        float sum = 0;
        for (int dr = -1; dr <= 1; ++dr)
          for (int dc = -1; dc <= 1; ++dc) sum += at(r + dr, c + dc);
        y[r * 8 + c] = sum / 9;
      }
    }
  return y;
}

const std::vector<std::string> kStyles{"sketch", "posterize", "negative", "blur"};

class StyledDigits : public inflab::Dataset {
 public:
  void configure(const inflab::Options& options) override {
    options_ = options;
    mode_ = options.get_string("mode");
    if (mode_ != "style" && mode_ != "subject")
      throw inflab::Error(
          fmt::format("dataset styled_digits: mode must be \"style\" or \"subject\", found \"{}\"", mode_));
    styles_ = options.get_string_list("styles");
    for (const auto& s : styles_)
      if (std::find(kStyles.begin(), kStyles.end(), s) == kStyles.end())
        throw inflab::Error(fmt::format("dataset styled_digits: unknown style \"{}\"; styles: {}", s,
                                        fmt::join(kStyles, ", ")));
    subjects_ = options.get_int_list("subjects");
    for (auto d : subjects_)
      if (d < 0 || d > 9)
        throw inflab::Error(fmt::format("dataset styled_digits: subject {} is not a digit", d));
    if ((mode_ == "style" ? styles_.size() : subjects_.size()) < 2)
      throw inflab::Error(fmt::format("dataset styled_digits: mode \"{}\" needs at least two {}", mode_,
                                      mode_ == "style" ? "styles" : "subjects"));
  }

  inflab::DatasetSplits load() override {
    std::string path = options_.get_string("path");
    if (path.empty())
      path = (std::filesystem::path(inflab::data_cache_root()) / "sklearn" / "digits.csv.gz").string();
    const inflab::DigitsTable table = inflab::parse_digits_csv(
        inflab::read_gzip(path,
                          "run `./inflab setup` (it extracts digits.csv.gz from Debian's python3-sklearn)"),
        path);
    std::vector<std::int64_t> order(table.images.size());
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(),
                 std::mt19937_64(static_cast<std::uint64_t>(options_.get_int("seed"))));
    const std::int64_t per_class = options_.get_int("train_per_class"),
                       test = options_.get_int("test_per_class");
    const std::int64_t n_pretrain = options_.get_int("n_pretrain");
    auto is_subject = [&](std::int64_t digit) {
      return std::find(subjects_.begin(), subjects_.end(), digit) != subjects_.end();
    };

    inflab::DatasetSplits splits;
    for (int c = 0; c < 10; ++c) splits.class_names.push_back(std::to_string(c));
    if (mode_ == "style") splits.class_names.insert(splits.class_names.end(), styles_.begin(), styles_.end());
    std::vector<std::pair<std::int64_t, std::int64_t>> pretrain, train, validation;  // (row, class)
    std::vector<std::int64_t> taken(mode_ == "style" ? styles_.size() : 10, 0);
    for (auto row : order) {
      const std::int64_t digit = table.labels[static_cast<std::size_t>(row)];
      // The class this image would serve: a style (round robin) or its digit if it is a subject.
      std::int64_t group = -1;
      if (mode_ == "style") {
        auto fewest = std::min_element(taken.begin(), taken.end());
        if (*fewest < per_class + test) group = fewest - taken.begin();
      } else if (is_subject(digit) && taken[static_cast<std::size_t>(digit)] < per_class + test) {
        group = digit;
      }
      if (group >= 0) {
        auto& count = taken[static_cast<std::size_t>(group)];
        const std::int64_t label = mode_ == "style" ? 10 + group : group;
        (count < per_class ? train : validation).push_back({row, label});
        ++count;
      } else if (static_cast<std::int64_t>(pretrain.size()) < n_pretrain &&
                 (mode_ == "style" || !is_subject(digit))) {
        pretrain.push_back({row, digit});  // plain digits: all ten for styles, never a subject
      }
    }
    for (std::size_t g = 0; g < taken.size(); ++g)
      if ((mode_ == "style" || is_subject(static_cast<std::int64_t>(g))) && taken[g] < per_class + test)
        throw inflab::Error(fmt::format(
            "dataset styled_digits: class {} has {} images, fewer than train_per_class + test_per_class = {}",
            splits.class_names[mode_ == "style" ? 10 + g : g], taken[g], per_class + test));
    auto make = [&](const std::vector<std::pair<std::int64_t, std::int64_t>>& rows, bool styled) {
      const auto count = static_cast<std::int64_t>(rows.size());
      inflab::Split split;
      split.inputs = at::empty({count, 64}, c10::kFloat);
      split.labels = at::empty({count}, c10::kLong);
      for (std::int64_t k = 0; k < count; ++k) {
        const auto [row, label] = rows[static_cast<std::size_t>(k)];
        Image image = table.images[static_cast<std::size_t>(row)];
        if (styled && mode_ == "style") image = stylise(image, styles_[static_cast<std::size_t>(label - 10)]);
        float* out = split.inputs.data_ptr<float>() + k * 64;
        for (int p = 0; p < 64; ++p) out[p] = 2 * image[static_cast<std::size_t>(p)] - 1;
        split.labels.data_ptr<std::int64_t>()[k] = label;
        split.ids.push_back(row);
      }
      return split;
    };
    splits.pretrain = make(pretrain, false);
    splits.train = make(train, true);
    splits.validation = make(validation, true);
    return splits;
  }

 private:
  inflab::Options options_;
  std::string mode_;
  std::vector<std::string> styles_;
  std::vector<std::int64_t> subjects_;
};

std::vector<inflab::OptionSpec> options() {
  using inflab::OptionType;
  return {
      {"mode", OptionType::String, std::string("style"),
       "style (classes = styles) or subject (held-out digits)"},
      {"styles", OptionType::StringList, std::vector<std::string>{"sketch", "posterize", "negative"},
       "styles of mode style: sketch, posterize, negative, blur"},
      {"subjects", OptionType::IntList, std::vector<std::int64_t>{7, 8, 9},
       "digits of mode subject, held out of the base's pretraining", false, inflab::between(0, 9)},
      {"train_per_class", OptionType::Int, std::int64_t{90}, "training images per style or subject", false,
       inflab::between(1, 1797)},
      {"test_per_class", OptionType::Int, std::int64_t{10}, "validation images per style or subject", false,
       inflab::between(1, 1797)},
      {"n_pretrain", OptionType::Int, std::int64_t{1000}, "plain digits for the base (never a subject)",
       false, inflab::between(0, 1797)},
      {"seed", OptionType::Int, std::int64_t{0}, "which digits go where"},
      {"path", OptionType::String, std::string(), "digits.csv.gz (default: the data cache)"},
  };
}

}  // namespace

INFLAB_PLUGIN(Dataset, "styled_digits", "0.2.0",  // 0.2: style mode pretrains on all ten digits
              "Real 8x8 digits rendered in styles (or held-out subjects) for conditional diffusion class "
              "detection",
              options, StyledDigits)
