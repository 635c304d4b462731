// Dataset plugins on the real files, checked against values read independently (od, zcat).
#include <torch/torch.h>

#include <catch2/catch.hpp>
#include <set>

#include "helpers.hpp"
#include "inflab/dataset.hpp"
#include "inflab/error.hpp"
#include "inflab/registry.hpp"

using Catch::Matchers::Contains;

namespace {
std::unique_ptr<inflab::Dataset> dataset(inflab::Registry& registry, const std::string& name,
                                         std::map<std::string, inflab::Value> set = {}) {
  auto options =
      inflab::default_options(name, registry.find(inflab::PluginKind::Dataset, name).info->options());
  for (auto& [k, v] : set) options.set(k, v);
  return registry.create_as<inflab::Dataset>(inflab::PluginKind::Dataset, name, options);
}

const inflab::Split* find_id(const inflab::DatasetSplits& s, std::int64_t id, std::int64_t* row) {
  for (const inflab::Split* split : {&s.pretrain, &s.train})
    for (std::size_t k = 0; k < split->ids.size(); ++k)
      if (split->ids[k] == id) return *row = static_cast<std::int64_t>(k), split;
  return nullptr;
}
}  // namespace

TEST_CASE("fashion_mnist reads the Debian IDX files exactly", "[datasets]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  // All 60,000 training images across pretrain + train, so image 0 is present.
  auto splits = dataset(registry, "fashion_mnist",
                        {{"n_train", std::int64_t{10000}}, {"n_pretrain", std::int64_t{50000}}})
                    ->load();
  CHECK(splits.train.inputs.sizes() == at::IntArrayRef({10000, 784}));
  CHECK(splits.num_classes() == 10);
  std::int64_t row = -1;
  const inflab::Split* split = find_id(splits, 0, &row);
  REQUIRE(split);
  // od of train-labels-idx1-ubyte: the first label is 9 (ankle boot); pixel (14, 12) of image 0 is 237.
  CHECK(split->labels[row].item<std::int64_t>() == 9);
  CHECK(split->inputs[row][14 * 28 + 12].item<float>() == Approx(237.0 / 255));
  // Splits are disjoint.
  std::set<std::int64_t> seen(splits.train.ids.begin(), splits.train.ids.end());
  seen.insert(splits.pretrain.ids.begin(), splits.pretrain.ids.end());
  CHECK(seen.size() == 60000);  // 10,000 + 50,000 distinct ids
}

TEST_CASE("fashion_mnist class subsets are remapped and bad sizes are refused", "[datasets]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  auto splits = dataset(registry, "fashion_mnist",
                        {{"classes", std::vector<std::int64_t>{0, 6}},
                         {"n_train", std::int64_t{200}},
                         {"n_pretrain", std::int64_t{100}}})
                    ->load();
  CHECK(splits.class_names == std::vector<std::string>{"T-shirt/top", "Shirt"});
  CHECK(splits.train.labels.max().item<std::int64_t>() == 1);
  REQUIRE_THROWS_WITH(dataset(registry, "fashion_mnist",
                              {{"classes", std::vector<std::int64_t>{0}}, {"n_train", std::int64_t{7000}}})
                          ->load(),
                      Contains("only 6000 training images"));
  REQUIRE_THROWS_WITH(dataset(registry, "fashion_mnist", {{"data_dir", std::string("/nonexistent")}})->load(),
                      Contains("dataset-fashion-mnist"));
}

TEST_CASE("digits reads sklearn's digits.csv.gz exactly", "[datasets]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  auto splits = dataset(registry, "digits",
                        {{"n_train", std::int64_t{1000}},
                         {"n_pretrain", std::int64_t{797}},
                         {"n_validation", std::int64_t{0}}});
  REQUIRE_THROWS_WITH(splits->load(), Contains("each split >= 1"));
  auto all = dataset(registry, "digits",
                     {{"n_train", std::int64_t{1000}},
                      {"n_pretrain", std::int64_t{796}},
                      {"n_validation", std::int64_t{1}}})
                 ->load();
  std::int64_t row = -1;
  const inflab::Split* split = find_id(all, 2, &row);
  if (!split) {  // example 2 may have landed in the one-example validation split
    REQUIRE(all.validation.ids[0] == 2);
    split = &all.validation, row = 0;
  }
  // zcat digits.csv.gz | sed -n 3p: "0,0,0,4,15,12,..." (example 2, a "2").
  CHECK(split->inputs[row][3].item<float>() == Approx(4.0 / 16));
  CHECK(split->inputs[row][4].item<float>() == Approx(15.0 / 16));
  CHECK(split->labels[row].item<std::int64_t>() == 2);
  REQUIRE_THROWS_WITH(
      dataset(registry, "digits", {{"path", std::string("/nonexistent/digits.csv.gz")}})->load(),
      Contains("./inflab setup"));
}

TEST_CASE("styled_digits renders real digits in styles; subjects stay out of the base's split",
          "[datasets]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  // The plain digits by id, as the digits plugin reads them (values in [0, 1]).
  auto plain = dataset(registry, "digits",
                       {{"n_train", std::int64_t{1000}},
                        {"n_pretrain", std::int64_t{796}},
                        {"n_validation", std::int64_t{1}}})
                   ->load();
  std::map<std::int64_t, torch::Tensor> by_id;
  std::map<std::int64_t, std::int64_t> digit_of;
  for (const inflab::Split* split : {&plain.pretrain, &plain.train, &plain.validation})
    for (std::size_t k = 0; k < split->ids.size(); ++k) {
      by_id[split->ids[k]] = split->inputs[static_cast<std::int64_t>(k)].reshape({8, 8});
      digit_of[split->ids[k]] = split->labels[static_cast<std::int64_t>(k)].item<std::int64_t>();
    }
  REQUIRE(by_id.size() == 1797);

  auto styled = dataset(registry, "styled_digits",
                        {{"styles", std::vector<std::string>{"sketch", "posterize", "negative", "blur"}},
                         {"train_per_class", std::int64_t{6}},
                         {"test_per_class", std::int64_t{2}},
                         {"n_pretrain", std::int64_t{50}}})
                    ->load();
  REQUIRE(styled.train.size() == 24);
  REQUIRE(styled.validation.size() == 8);
  CHECK(styled.class_names.at(10) == "sketch");
  CHECK(styled.class_names.at(13) == "blur");
  // Each style by hand, from the plain image (zero outside the 8 x 8 frame), mapped to [-1, 1].
  auto by_hand = [](const torch::Tensor& x, std::int64_t style) {
    auto padded = torch::constant_pad_nd(x, {1, 1, 1, 1}, 0);
    torch::Tensor y;
    if (style == 10) {  // sketch: the largest step to a 4-neighbour
      y = torch::zeros({8, 8});
      for (auto [dr, dc] : std::vector<std::pair<int, int>>{{-1, 0}, {1, 0}, {0, -1}, {0, 1}})
        y = torch::maximum(y, (x - padded.narrow(0, 1 + dr, 8).narrow(1, 1 + dc, 8)).abs());
      y = y.clamp_max(1);
    } else if (style == 11) {
      y = (x >= 0.5).to(torch::kFloat);
    } else if (style == 12) {
      y = 1 - x;
    } else {
      y = torch::avg_pool2d(padded.unsqueeze(0).unsqueeze(0), 3, 1).squeeze();
    }
    return 2 * y - 1;
  };
  std::set<std::int64_t> used;
  for (const inflab::Split* split : {&styled.train, &styled.validation})
    for (std::size_t k = 0; k < split->ids.size(); ++k) {
      const auto label = split->labels[static_cast<std::int64_t>(k)].item<std::int64_t>();
      INFO("id " << split->ids[k] << ", style " << label);
      REQUIRE(label >= 10);
      CHECK(split->inputs[static_cast<std::int64_t>(k)].reshape({8, 8}).allclose(
          by_hand(by_id[split->ids[k]], label), 1e-6, 1e-6));
      CHECK(used.insert(split->ids[k]).second);  // every image used once
    }
  std::set<std::int64_t> pretrained_digits;
  for (std::size_t k = 0; k < styled.pretrain.ids.size(); ++k) {  // the base sees plain digits only
    pretrained_digits.insert(digit_of[styled.pretrain.ids[k]]);
    CHECK(styled.pretrain.inputs[static_cast<std::int64_t>(k)].reshape({8, 8}).allclose(
        2 * by_id[styled.pretrain.ids[k]] - 1, 1e-6, 1e-6));
    CHECK(styled.pretrain.labels[static_cast<std::int64_t>(k)].item<std::int64_t>() ==
          digit_of[styled.pretrain.ids[k]]);
    CHECK(used.count(styled.pretrain.ids[k]) == 0);
  }
  CHECK(pretrained_digits.size() == 10);  // every digit (subjects matter only in mode subject)

  auto subjects = dataset(registry, "styled_digits",
                          {{"mode", std::string("subject")},
                           {"subjects", std::vector<std::int64_t>{3, 8}},
                           {"train_per_class", std::int64_t{5}},
                           {"test_per_class", std::int64_t{1}}})
                      ->load();
  CHECK(subjects.train.size() == 10);
  for (std::size_t k = 0; k < subjects.train.ids.size(); ++k) {
    const auto label = subjects.train.labels[static_cast<std::int64_t>(k)].item<std::int64_t>();
    CHECK((label == 3 || label == 8));
    CHECK(digit_of[subjects.train.ids[k]] == label);
  }
  CHECK(subjects.pretrain.size() == 1000);
  for (std::size_t k = 0; k < subjects.pretrain.ids.size(); ++k) {
    const auto digit = digit_of[subjects.pretrain.ids[k]];
    CHECK((digit != 3 && digit != 8));
  }
  REQUIRE_THROWS_WITH(
      dataset(registry, "styled_digits", {{"styles", std::vector<std::string>{"sepia", "blur"}}}),
      Contains("unknown style \"sepia\""));
  REQUIRE_THROWS_WITH(dataset(registry, "styled_digits", {{"train_per_class", std::int64_t{900}}})->load(),
                      Contains("fewer than train_per_class"));
}
