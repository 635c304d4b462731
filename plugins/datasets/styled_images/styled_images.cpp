#include "styled_images.hpp"

#include <ATen/ops/empty.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <inflab/error.hpp>
#include <utility>

namespace inflab::styled {

const std::vector<std::string>& style_names() {
  static const std::vector<std::string> names{"sketch", "posterize", "negative", "blur"};
  return names;
}

std::vector<float> stylise(const float* x, std::int64_t side, const std::string& style) {
  std::vector<float> y(static_cast<std::size_t>(side * side), 0.0f);
  auto at = [&](std::int64_t r, std::int64_t c) {
    return r < 0 || r >= side || c < 0 || c >= side ? 0.0f : x[r * side + c];
  };
  for (std::int64_t r = 0; r < side; ++r)
    for (std::int64_t c = 0; c < side; ++c) {
      const float v = x[r * side + c];
      float& out = y[static_cast<std::size_t>(r * side + c)];
      if (style == "negative") {
        out = 1 - v;
      } else if (style == "posterize") {
        out = v >= 0.5f ? 1.0f : 0.0f;
      } else if (style == "sketch") {  // the largest step to a 4-neighbour: outlines
        float edge = 0;
        for (auto [dr, dc] : std::array<std::pair<int, int>, 4>{{{-1, 0}, {1, 0}, {0, -1}, {0, 1}}})
          edge = std::max(edge, std::fabs(v - at(r + dr, c + dc)));
        out = std::min(1.0f, edge);
      } else if (style == "blur") {  // 3x3 box
        float sum = 0;
        for (int dr = -1; dr <= 1; ++dr)
          for (int dc = -1; dc <= 1; ++dc) sum += at(r + dr, c + dc);
        out = sum / 9;
      }
    }
  return y;
}

std::vector<OptionSpec> deal_options(std::int64_t pool, std::int64_t pretrain_default,
                                     const std::string& image_kind) {
  const double most = static_cast<double>(pool);
  return {
      {"mode", OptionType::String, std::string("style"),
       "style (classes = styles) or subject (held-out classes)"},
      {"styles", OptionType::StringList, std::vector<std::string>{"sketch", "posterize", "negative"},
       "styles of mode style: sketch, posterize, negative, blur"},
      {"subjects", OptionType::IntList, std::vector<std::int64_t>{7, 8, 9},
       "classes of mode subject, held out of the base's pretraining", false, between(0, 9)},
      {"train_per_class", OptionType::Int, std::int64_t{90}, "training images per style or subject", false,
       between(1, most)},
      {"test_per_class", OptionType::Int, std::int64_t{10}, "validation images per style or subject", false,
       between(1, most)},
      {"n_pretrain", OptionType::Int, pretrain_default,
       fmt::format("plain {} for the base (never a subject)", image_kind), false, between(0, 1e9)},
  };
}

Deal read_deal(const Options& options, const std::string& plugin, std::vector<std::string> class_names) {
  Deal deal;
  deal.plugin = plugin;
  deal.mode = options.get_string("mode");
  deal.styles = options.get_string_list("styles");
  deal.subjects = options.get_int_list("subjects");
  deal.train_per_class = options.get_int("train_per_class");
  deal.test_per_class = options.get_int("test_per_class");
  deal.n_pretrain = options.get_int("n_pretrain");
  deal.class_names = std::move(class_names);
  if (deal.mode != "style" && deal.mode != "subject")
    throw Error(fmt::format("dataset {}: mode must be \"style\" or \"subject\", found \"{}\"", deal.plugin,
                            deal.mode));
  for (const auto& s : deal.styles)
    if (std::find(style_names().begin(), style_names().end(), s) == style_names().end())
      throw Error(fmt::format("dataset {}: unknown style \"{}\"; styles: {}", deal.plugin, s,
                              fmt::join(style_names(), ", ")));
  for (auto d : deal.subjects)
    if (d < 0 || d > 9)
      throw Error(fmt::format("dataset {}: subject {} is not a class (0..9)", deal.plugin, d));
  if ((deal.mode == "style" ? deal.styles.size() : deal.subjects.size()) < 2)
    throw Error(fmt::format("dataset {}: mode \"{}\" needs at least two {}", deal.plugin, deal.mode,
                            deal.mode == "style" ? "styles" : "subjects"));
  return deal;
}

DatasetSplits deal(const Deal& deal, const SourceImages& finetune, const std::vector<std::int64_t>& order,
                   const SourceImages* pretrain_source) {
  const bool style = deal.mode == "style";
  const std::int64_t per_class = deal.train_per_class, test = deal.test_per_class;
  auto is_subject = [&](std::int64_t c) {
    return std::find(deal.subjects.begin(), deal.subjects.end(), c) != deal.subjects.end();
  };
  DatasetSplits splits;
  splits.class_names = deal.class_names;
  if (style) splits.class_names.insert(splits.class_names.end(), deal.styles.begin(), deal.styles.end());
  std::vector<std::pair<std::int64_t, std::int64_t>> pretrain, train, validation;  // (row, class)
  std::vector<std::int64_t> taken(style ? deal.styles.size() : 10, 0);
  for (auto row : order) {
    const std::int64_t c = finetune.labels[static_cast<std::size_t>(row)];
    // The class this image would serve: a style (round robin) or its own if it is a subject.
    std::int64_t group = -1;
    if (style) {
      auto fewest = std::min_element(taken.begin(), taken.end());
      if (*fewest < per_class + test) group = fewest - taken.begin();
    } else if (is_subject(c) && taken[static_cast<std::size_t>(c)] < per_class + test) {
      group = c;
    }
    if (group >= 0) {
      auto& count = taken[static_cast<std::size_t>(group)];
      const std::int64_t label = style ? 10 + group : group;
      (count < per_class ? train : validation).push_back({row, label});
      ++count;
    } else if (!pretrain_source && static_cast<std::int64_t>(pretrain.size()) < deal.n_pretrain &&
               (style || !is_subject(c))) {
      pretrain.push_back({row, c});  // plain images: all ten classes for styles, never a subject
    }
  }
  for (std::size_t g = 0; g < taken.size(); ++g)
    if ((style || is_subject(static_cast<std::int64_t>(g))) && taken[g] < per_class + test)
      throw Error(
          fmt::format("dataset {}: class {} has {} images, fewer than train_per_class + test_per_class = {}",
                      deal.plugin, splits.class_names[style ? 10 + g : g], taken[g], per_class + test));
  if (pretrain_source)
    for (std::int64_t row = 0; row < pretrain_source->count(); ++row) {
      if (static_cast<std::int64_t>(pretrain.size()) >= deal.n_pretrain) break;
      const std::int64_t c = pretrain_source->labels[static_cast<std::size_t>(row)];
      if (style || !is_subject(c)) pretrain.push_back({row, c});
    }
  auto make = [&](const SourceImages& source, const std::vector<std::pair<std::int64_t, std::int64_t>>& rows,
                  bool styled) {
    const auto count = static_cast<std::int64_t>(rows.size());
    const std::int64_t pixels = source.side * source.side;
    Split split;
    split.inputs = at::empty({count, pixels}, c10::kFloat);
    split.labels = at::empty({count}, c10::kLong);
    for (std::int64_t k = 0; k < count; ++k) {
      const auto [row, label] = rows[static_cast<std::size_t>(k)];
      const float* image = source.pixels.data() + row * pixels;
      std::vector<float> styled_image;
      if (styled && style) {
        styled_image = stylise(image, source.side, deal.styles[static_cast<std::size_t>(label - 10)]);
        image = styled_image.data();
      }
      float* out = split.inputs.data_ptr<float>() + k * pixels;
      for (std::int64_t p = 0; p < pixels; ++p) out[p] = 2 * image[p] - 1;
      split.labels.data_ptr<std::int64_t>()[k] = label;
      split.ids.push_back(source.id_offset + row);
    }
    return split;
  };
  splits.pretrain = make(pretrain_source ? *pretrain_source : finetune, pretrain, false);
  splits.train = make(finetune, train, true);
  splits.validation = make(finetune, validation, true);
  return splits;
}

}  // namespace inflab::styled
