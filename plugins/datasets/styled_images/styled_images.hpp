// What the styled_digits and styled_fashion datasets share: the styles and how images are dealt
// to the base's pretraining and to the fine-tuning classes (plugin-side code, not a plugin).
//   mode "style":   fine-tuning images are rendered in one of a few styles by deterministic
//                   transforms (sketch = edge magnitude, posterize = two grey levels, negative,
//                   blur); the condition and class is the style. The base is pretrained on plain
//                   images conditioned on their class, so it has never seen a style.
//   mode "subject": fine-tuning images are plain images of `subjects`, classes the base's
//                   pretraining never saw, conditioned on their class.
// Pixels are in [-1, 1] (the DDPM convention). Conditions: the source's ten classes, then the styles.
#pragma once
#include <cstdint>
#include <inflab/dataset.hpp>
#include <inflab/options.hpp>
#include <string>
#include <vector>

namespace inflab::styled {

// Real grey images of ten classes, values in [0, 1].
struct SourceImages {
  std::int64_t side = 0;
  std::vector<float> pixels;  // count x side x side
  std::vector<std::int64_t> labels;
  std::int64_t id_offset = 0;  // an image's example id is id_offset + its row
  std::int64_t count() const { return static_cast<std::int64_t>(labels.size()); }
};

struct Deal {
  std::string plugin;  // in errors
  std::string mode;    // "style" or "subject"
  std::vector<std::string> styles;
  std::vector<std::int64_t> subjects;
  std::int64_t train_per_class = 0, test_per_class = 0, n_pretrain = 0;
  std::vector<std::string> class_names;  // the source's ten
};

const std::vector<std::string>& style_names();
// `image`: side x side values in [0, 1]; zero outside the frame.
std::vector<float> stylise(const float* image, std::int64_t side, const std::string& style);

// The options both datasets take (mode, styles, subjects, per-class counts, n_pretrain), with
// `pool` images to deal from and `pretrain_default` pretraining images by default.
std::vector<OptionSpec> deal_options(std::int64_t pool, std::int64_t pretrain_default,
                                     const std::string& image_kind);
// Reads and checks them (configure time).
Deal read_deal(const Options& options, const std::string& plugin, std::vector<std::string> class_names);

// Walks `finetune` in `order`, giving each image to a style (round robin) or its subject until
// every class has train_per_class + test_per_class. With `pretrain` null, the images left over
// (never a subject's) are pretrained on, up to n_pretrain, in the same order; otherwise the first
// n_pretrain eligible images of `pretrain` in its own order are.
DatasetSplits deal(const Deal& deal, const SourceImages& finetune, const std::vector<std::int64_t>& order,
                   const SourceImages* pretrain);

}  // namespace inflab::styled
