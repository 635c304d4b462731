// Dataset plugins on the real files, checked against values read independently (od, zcat).
#include <fmt/format.h>
#include <torch/torch.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "helpers.hpp"
#include "inflab/config.hpp"
#include "inflab/dataset.hpp"
#include "inflab/error.hpp"
#include "inflab/pipeline.hpp"
#include "inflab/readers.hpp"
#include "inflab/registry.hpp"
#include "inflab/sampling.hpp"
#include "inflab/splits.hpp"

using Catch::Matchers::Contains;
namespace fs = std::filesystem;

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

// A style by hand from a plain side x side image in [0, 1] (zero outside the frame), mapped to
// [-1, 1]: styles 10 sketch (the largest step to a 4-neighbour), 11 posterize, 12 negative, 13 blur.
torch::Tensor styled_by_hand(const torch::Tensor& x, std::int64_t style) {
  const std::int64_t side = x.size(0);
  auto padded = torch::constant_pad_nd(x, {1, 1, 1, 1}, 0);
  torch::Tensor y;
  if (style == 10) {
    y = torch::zeros({side, side});
    for (auto [dr, dc] : std::vector<std::pair<int, int>>{{-1, 0}, {1, 0}, {0, -1}, {0, 1}})
      y = torch::maximum(y, (x - padded.narrow(0, 1 + dr, side).narrow(1, 1 + dc, side)).abs());
    y = y.clamp_max(1);
  } else if (style == 11) {
    y = (x >= 0.5).to(torch::kFloat);
  } else if (style == 12) {
    y = 1 - x;
  } else {
    y = torch::avg_pool2d(padded.unsqueeze(0).unsqueeze(0), 3, 1).squeeze();
  }
  return 2 * y - 1;
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

TEST_CASE(
    "styled_fashion styles test-file clothing, the base pretrains on the training file whatever the seed",
    "[datasets]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  const fs::path dir = "/usr/share/datasets/fashion-mnist";
  const char* hint = "apt-get install dataset-fashion-mnist";
  const auto train_file =
      inflab::read_idx(dir / "train-images-idx3-ubyte.gz", dir / "train-labels-idx1-ubyte.gz", hint, 9);
  const auto test_file =
      inflab::read_idx(dir / "t10k-images-idx3-ubyte.gz", dir / "t10k-labels-idx1-ubyte.gz", hint, 9);
  REQUIRE(train_file.count == 60000);
  REQUIRE(test_file.count == 10000);
  auto image = [](const inflab::IdxImages& file, std::int64_t row) {  // [0, 1], 28 x 28
    std::vector<float> v(784);
    for (int p = 0; p < 784; ++p) v[p] = file.pixels[static_cast<std::size_t>(row * 784 + p)] / 255.0f;
    return torch::tensor(v).reshape({28, 28});
  };
  auto load = [&](std::map<std::string, inflab::Value> set) {
    return dataset(registry, "styled_fashion", set)->load();
  };
  const std::vector<std::string> four{"sketch", "posterize", "negative", "blur"};
  auto styled = load({{"styles", four},
                      {"train_per_class", std::int64_t{5}},
                      {"test_per_class", std::int64_t{2}},
                      {"n_pretrain", std::int64_t{300}}});
  REQUIRE(styled.train.size() == 20);
  REQUIRE(styled.validation.size() == 8);
  CHECK(styled.class_names.at(0) == "T-shirt/top");
  CHECK(styled.class_names.at(13) == "blur");
  std::set<std::int64_t> used;
  for (const inflab::Split* split : {&styled.train, &styled.validation})
    for (std::size_t k = 0; k < split->ids.size(); ++k) {
      const auto label = split->labels[static_cast<std::int64_t>(k)].item<std::int64_t>();
      const std::int64_t id = split->ids[k];
      INFO("id " << id << ", style " << label);
      REQUIRE(label >= 10);
      REQUIRE((id >= 60000 && id < 70000));  // a test-file image
      CHECK(split->inputs[static_cast<std::int64_t>(k)].reshape({28, 28}).allclose(
          styled_by_hand(image(test_file, id - 60000), label), 1e-6, 1e-6));
      CHECK(used.insert(id).second);
    }
  // The base: the training file's first n_pretrain images, plain, labelled with their class.
  REQUIRE(styled.pretrain.size() == 300);
  for (std::int64_t k = 0; k < 300; k += 37) {
    CHECK(styled.pretrain.ids[static_cast<std::size_t>(k)] == k);
    CHECK(styled.pretrain.labels[k].item<std::int64_t>() == train_file.labels[static_cast<std::size_t>(k)]);
    CHECK(styled.pretrain.inputs[k].reshape({28, 28}).allclose(2 * image(train_file, k) - 1, 1e-6, 1e-6));
  }
  // Another finetune_seed draws other images to style, and the same base images.
  auto reseeded = load({{"styles", four},
                        {"train_per_class", std::int64_t{5}},
                        {"test_per_class", std::int64_t{2}},
                        {"n_pretrain", std::int64_t{300}},
                        {"finetune_seed", std::int64_t{1}}});
  CHECK(reseeded.train.ids != styled.train.ids);
  CHECK(reseeded.pretrain.ids == styled.pretrain.ids);
  CHECK(reseeded.pretrain.inputs.equal(styled.pretrain.inputs));

  auto subjects = load({{"mode", std::string("subject")},
                        {"subjects", std::vector<std::int64_t>{5, 9}},
                        {"train_per_class", std::int64_t{4}},
                        {"test_per_class", std::int64_t{1}},
                        {"n_pretrain", std::int64_t{500}}});
  CHECK(subjects.train.size() == 8);
  for (std::size_t k = 0; k < subjects.train.ids.size(); ++k) {
    const auto label = subjects.train.labels[static_cast<std::int64_t>(k)].item<std::int64_t>();
    CHECK((label == 5 || label == 9));
    CHECK(test_file.labels[static_cast<std::size_t>(subjects.train.ids[k] - 60000)] == label);
  }
  REQUIRE(subjects.pretrain.size() == 500);
  for (std::size_t k = 0; k < subjects.pretrain.ids.size(); ++k) {
    const auto c = train_file.labels[static_cast<std::size_t>(subjects.pretrain.ids[k])];
    CHECK((c != 5 && c != 9));                                              // never a subject
    if (k) CHECK(subjects.pretrain.ids[k] > subjects.pretrain.ids[k - 1]);  // the file's order
  }
  REQUIRE_THROWS_WITH(dataset(registry, "styled_fashion", {{"subjects", std::vector<std::int64_t>{3, 12}}}),
                      Contains("subject 12 is not a class"));
  REQUIRE_THROWS_WITH(load({{"train_per_class", std::int64_t{5000}}}),
                      Contains("fewer than train_per_class"));

  // finetune_seed stays out of the base's cache key (the seeds share one base), not the finetune's.
  test::TempDir tmp;
  const std::string experiment = R"([experiment]
name = "k"
[dataset]
plugin = "styled_fashion"
[model]
plugin = "ddpm_lora"
channels = [16, 32, 64]
[task]
name = "denoising"
[[estimator]]
plugin = "hessian_free"
[evaluation]
mode = "pairwise"
metrics = ["class_detection"]
)";
  auto at = [&](const char* seed) {
    return inflab::load_experiment(tmp.write("k.toml", experiment),
                                   {std::string("dataset.finetune_seed=") + seed}, registry)
        .at(0);
  };
  CHECK(inflab::stage_key("base", at("0")) == inflab::stage_key("base", at("1")));
  CHECK(inflab::stage_key("finetune", at("0")) != inflab::stage_key("finetune", at("1")));
}

TEST_CASE("styled_digits renders real digits in styles, subjects stay out of the base's split",
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
  std::set<std::int64_t> used;
  for (const inflab::Split* split : {&styled.train, &styled.validation})
    for (std::size_t k = 0; k < split->ids.size(); ++k) {
      const auto label = split->labels[static_cast<std::int64_t>(k)].item<std::int64_t>();
      INFO("id " << split->ids[k] << ", style " << label);
      REQUIRE(label >= 10);
      CHECK(split->inputs[static_cast<std::int64_t>(k)].reshape({8, 8}).allclose(
          styled_by_hand(by_id[split->ids[k]], label), 1e-6, 1e-6));
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

TEST_CASE("text_file reads a user's JSON lines or CSV, bad files are errors naming file, line and field",
          "[datasets][text_file]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  test::TempDir dir;
  // The same six records as JSON lines and as CSV (a quoted comma, an escaped quote and a
  // newline inside a field), labels that sort as numbers (2 before 10).
  const std::vector<std::pair<std::string, std::string>> records{{"good, really", "10"}, {"say \"hi\"", "2"},
                                                                 {"two\nlines", "10"},   {"plain", "2"},
                                                                 {"more", "10"},         {"last one", "2"}};
  std::string jsonl, csv = "id,review,stars\n";
  for (std::size_t i = 0; i < records.size(); ++i) {
    jsonl +=
        nlohmann::json{{"review", records[i].first}, {"stars", std::stoi(records[i].second)}}.dump() + "\n";
    std::string quoted = records[i].first;
    for (std::size_t at = quoted.find('"'); at != std::string::npos; at = quoted.find('"', at + 2))
      quoted.insert(at, "\"");
    csv += fmt::format("{},\"{}\",{}\n", i, quoted, records[i].second);
  }
  auto load = [&](const std::string& file, std::map<std::string, inflab::Value> extra = {}) {
    std::map<std::string, inflab::Value> set{{"train", file},
                                             {"text_field", std::string("review")},
                                             {"label_field", std::string("stars")},
                                             {"n_validation", std::int64_t{2}}};
    for (auto& [k, v] : extra) set[k] = v;
    return dataset(registry, "text_file", set)->load();
  };
  const auto from_jsonl = load(dir.write("r.jsonl", jsonl).string());
  const auto from_csv = load(dir.write("r.csv", csv).string());
  CHECK(from_jsonl.class_names == std::vector<std::string>{"2", "10"});
  CHECK(from_csv.class_names == from_jsonl.class_names);
  CHECK(from_jsonl.train.size() == 4);
  CHECK(from_jsonl.validation.size() == 2);
  for (auto split : {&inflab::DatasetSplits::train, &inflab::DatasetSplits::validation}) {
    const inflab::Split& a = from_jsonl.*split;
    const inflab::Split& b = from_csv.*split;
    CHECK(a.texts == b.texts);
    CHECK(a.ids == b.ids);
    CHECK(at::equal(a.labels, b.labels));
    for (std::size_t k = 0; k < a.ids.size(); ++k) {  // each text with its own label, by id
      const auto& record = records[static_cast<std::size_t>(a.ids[k])];
      CHECK(a.texts[k] == record.first);
      const std::int64_t label = a.labels[static_cast<std::int64_t>(k)].item().toLong();
      CHECK(label == (record.second == "2" ? 0 : 1));
    }
  }
  // A validation file; a class it has that training lacks is an error naming file, line, field.
  const auto validation =
      dir.write("v.jsonl", "{\"review\": \"fine\", \"stars\": 2}\n\n{\"review\": \"odd\", \"stars\": 7}\n");
  CHECK_THROWS_WITH(load(dir.path.string() + "/r.jsonl", {{"validation", validation.string()}}),
                    Contains("v.jsonl:3: field 'stars': class '7' does not occur in the training file") &&
                        Contains("classes: 2, 10"));
  // Instruction data: prompt and response, one class when there is no label field.
  const auto instructions = dir.write("i.jsonl",
                                      "{\"q\": \"2+2?\", \"a\": \"4\"}\n{\"q\": \"3+3?\", \"a\": \"6\"}\n"
                                      "{\"q\": \"1+1?\", \"a\": \"2\"}\n");
  auto tasks = dataset(registry, "text_file",
                       {{"train", instructions.string()},
                        {"text_field", std::string("q")},
                        {"label_field", std::string()},
                        {"response_field", std::string("a")},
                        {"n_validation", std::int64_t{1}}})
                   ->load();
  CHECK(tasks.class_names == std::vector<std::string>{"all"});
  REQUIRE(tasks.train.responses.size() == 2);
  for (std::size_t k = 0; k < 2; ++k)
    CHECK(std::to_string(std::stoi(tasks.train.texts[k].substr(0, 1)) * 2) == tasks.train.responses[k]);
  // Bad files.
  auto error_of = [&](const std::string& name, const std::string& text) {
    try {
      load(dir.write(name, text).string());
    } catch (const inflab::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK_THAT(error_of("a.jsonl", "{\"review\": \"x\", \"stars\": 1}\n{\"review\": \"y\"}\n"),
             Contains("a.jsonl:2: field 'stars' is missing"));
  CHECK_THAT(error_of("b.jsonl", "{\"review\": \"x\", \"stars\": 1}\n{\"review\": [1], \"stars\": 1}\n"),
             Contains("b.jsonl:2: field 'review': expected a string, a number or a boolean, found array"));
  CHECK_THAT(error_of("c.jsonl", "{\"review\": \"x\", \"stars\": 1}\nnot json\n"),
             Contains("c.jsonl:2: not a JSON line"));
  // A number beyond double's range is nlohmann's out_of_range, not a parse_error (found by fuzz_csv).
  CHECK_THAT(error_of("c2.jsonl", "{\"review\": \"x\", \"stars\": 9e324}\n"),
             Contains("c2.jsonl:1: not a JSON line") && Contains("number overflow"));
  CHECK_THAT(error_of("d.csv", "id,text,stars\n1,a,2\n"),
             Contains("d.csv:1: no column 'review' in the header (columns: id, text, stars)"));
  // The record after a quoted two-line field starts on line 4, and has a column too many.
  CHECK_THAT(error_of("e.csv", "review,stars\n\"two\nlines\",2\nx,2,extra\n"),
             Contains("e.csv:4: 3 fields, the header has 2"));
  CHECK_THAT(error_of("f.csv", "review,stars\n\"open,2\n"), Contains("f.csv:") && Contains("malformed CSV"));
  CHECK_THAT(error_of("g.jsonl", "{\"review\": \"\", \"stars\": 1}\n"),
             Contains("g.jsonl:1: field 'review' is empty"));
  CHECK_THAT(error_of("h.txt", "review\n"), Contains("h.txt: cannot tell the format"));
  CHECK_THROWS_WITH(load((dir.path / "missing.jsonl").string()),
                    Contains("missing.jsonl: cannot open the file"));
}

TEST_CASE("a dataset file's content, not only its name, is in the stage keys",
          "[datasets][text_file][stages]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  test::TempDir dir;
  const auto data =
      dir.write("d.jsonl", "{\"text\": \"a\", \"label\": 0}\n{\"text\": \"b\", \"label\": 1}\n");
  const auto file = dir.write("e.toml", fmt::format(R"([experiment]
name = "e"
[dataset]
plugin = "text_file"
train = "{}"
[model]
plugin = "minilm_lora"
[[estimator]]
plugin = "datainf"
)",
                                                    data.string()));
  auto key = [&](const std::string& stage) {
    return inflab::stage_key(stage, inflab::load_experiment(file, {}, registry).at(0));
  };
  const auto base = key("base"), gradients = key("gradients");
  CHECK(key("base") == base);  // stable while the file is unchanged
  const auto written = std::filesystem::last_write_time(data);
  dir.write("d.jsonl", "{\"text\": \"a\", \"label\": 0}\n{\"text\": \"c\", \"label\": 1}\n");
  std::filesystem::last_write_time(data,
                                   written + std::chrono::seconds(2));  // a coarse clock must not hide it
  CHECK(key("base") != base);
  CHECK(key("gradients") != gradients);
}

TEST_CASE("the committed text_file example reads as its experiment says", "[datasets][text_file]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  const std::filesystem::path example = std::filesystem::path(INFLAB_SOURCE_DIR) / "examples" / "text_file";
  auto config = inflab::load_experiment(example / "experiment.toml", {}, registry).at(0);
  // Its paths are from the repository's root, where a user runs it.
  config.dataset.options.set("train", (example / "reviews_train.csv").string());
  config.dataset.options.set("validation", (example / "reviews_test.jsonl").string());
  auto splits =
      registry.create_as<inflab::Dataset>(inflab::PluginKind::Dataset, "text_file", config.dataset.options)
          ->load();
  CHECK(splits.class_names == std::vector<std::string>{"great", "other"});
  CHECK(splits.pretrain.size() == 100);
  CHECK(splits.train.size() == 200);
  CHECK(splits.validation.size() == 100);
}

TEST_CASE("image_folder decodes PNG and JPEG class folders to the digits they were written from",
          "[datasets][image_folder]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  const fs::path example = fs::path(INFLAB_SOURCE_DIR) / "examples" / "image_folder";
  // The oracle: digits.csv.gz read with zcat, each file named after its row (make_example.py).
  const fs::path csv = fs::path(inflab::data_cache_root()) / "sklearn" / "digits.csv.gz";
  const auto zcat = test::run_command("zcat '" + csv.string() + "'");
  REQUIRE(zcat.exit_code == 0);
  std::vector<std::vector<int>> rows;
  std::istringstream lines(zcat.output);
  for (std::string line; std::getline(lines, line);) {
    rows.emplace_back();
    std::istringstream cells(line);
    for (std::string cell; std::getline(cells, cell, ',');) rows.back().push_back(std::stoi(cell));
  }
  REQUIRE(rows.size() == 1797);
  // The listing an example id points into: class folders sorted, files sorted within each.
  auto listing = [](const fs::path& root) {
    std::vector<fs::path> files;
    for (const char* c : {"0", "1", "7"}) {
      std::vector<fs::path> in_class;
      for (const auto& e : fs::directory_iterator(root / c)) in_class.push_back(e.path());
      std::sort(in_class.begin(), in_class.end());
      files.insert(files.end(), in_class.begin(), in_class.end());
    }
    return files;
  };
  const auto train_files = listing(example / "train"), validation_files = listing(example / "validation");
  auto splits = dataset(registry, "image_folder",
                        {{"train", (example / "train").string()},
                         {"validation", (example / "validation").string()},
                         {"n_pretrain", std::int64_t{60}}})
                    ->load();
  CHECK(splits.class_names == std::vector<std::string>{"0", "1", "7"});
  CHECK(splits.pretrain.size() == 60);
  CHECK(splits.train.size() == 120);  // n_train = 0: all that remain
  CHECK(splits.validation.size() == 60);
  std::int64_t png = 0, jpeg = 0;
  for (const inflab::Split* split : {&splits.pretrain, &splits.train, &splits.validation}) {
    REQUIRE(split->inputs.sizes() == at::IntArrayRef({split->size(), 64}));
    for (std::int64_t k = 0; k < split->size(); ++k) {
      const std::int64_t id = split->ids[k];
      const fs::path file = split == &splits.validation ? validation_files.at(id - 180)
                                                        : train_files.at(static_cast<std::size_t>(id));
      const auto& row = rows.at(std::stoul(file.stem().string().substr(3)));
      CHECK(split->labels[k].item<std::int64_t>() == (row[64] == 0 ? 0 : row[64] == 1 ? 1 : 2));
      double worst = 0;
      for (int p = 0; p < 64; ++p)
        worst = std::max(
            worst, std::abs(split->inputs[k][p].item<double>() - std::round(row[p] * 255.0 / 16) / 255));
      if (file.extension() == ".png") {
        CHECK(worst < 1e-6);  // lossless
        ++png;
      } else {
        CHECK(worst < 40.0 / 255);  // JPEG at quality 95 on 8 x 8 pixels: lossy, but the same digit
        ++jpeg;
      }
    }
  }
  CHECK(png == 144);
  CHECK(jpeg == 96);

  // Without a validation folder: a share of the training folder; resizing keeps a flat image flat.
  test::TempDir dir;
  for (const char* c : {"a", "b"}) {
    fs::create_directories(dir.path / c);
    for (int i = 0; i < 5; ++i)
      inflab::save_png_grid(dir.path / c / fmt::format("{}.png", i), at::full({1, 16}, 255.0), 1, 0, 255);
  }
  auto shared = [&](std::map<std::string, inflab::Value> extra = {}) {
    std::map<std::string, inflab::Value> set{{"train", dir.path.string()}, {"validation_share", 0.2}};
    for (auto& [k, v] : extra) set[k] = v;
    return dataset(registry, "image_folder", set)->load();
  };
  auto flat = shared({{"size", std::int64_t{9}}, {"channels", std::int64_t{3}}});
  CHECK(flat.train.size() == 8);
  CHECK(flat.validation.size() == 2);
  CHECK(flat.train.inputs.sizes() == at::IntArrayRef({8, 3 * 9 * 9}));
  CHECK(flat.train.inputs.min().item<float>() == Approx(1.0));  // 6 x 6 white PNGs, resized to 9 x 9

  // Errors name the file (or folder) and what was expected.
  inflab::save_png_grid(dir.path / "a" / "small.png", at::full({1, 4}, 255.0), 1, 0,
                        255);  // 4 x 4 -> 4 x 4 grid
  CHECK_THROWS_WITH(shared(), Contains("but") && Contains("set the dataset's size"));
  fs::remove(dir.path / "a" / "small.png");
  dir.write("a/broken.png", "not a png at all");
  CHECK_THROWS_WITH(shared(), Contains("broken.png: not a readable PNG image"));
  fs::remove(dir.path / "a" / "broken.png");
  dir.write("b/broken.jpg", std::string("\xff\xd8\xff\xe0 truncated", 15));
  CHECK_THROWS_WITH(shared(), Contains("broken.jpg: the JPEG image could not be decoded"));
  // A JPEG cut short decodes with made-up rows in libjpeg's default: here it is an error.
  std::ifstream whole(example / "validation" / "7" / validation_files.back().filename(), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(whole)), std::istreambuf_iterator<char>());
  dir.write("b/broken.jpg", bytes.substr(0, bytes.size() / 2));
  CHECK_THROWS_WITH(shared(),
                    Contains("broken.jpg: the JPEG image could not be decoded (Premature end of JPEG file)"));
  fs::remove(dir.path / "b" / "broken.jpg");
  fs::create_directories(dir.path / "c");
  CHECK_THROWS_WITH(shared(), Contains("/c: no images (.png, .jpg, .jpeg) in this class folder"));
  test::TempDir other;
  fs::create_directories(other.path / "z");
  inflab::save_png_grid(other.path / "z" / "0.png", at::full({1, 16}, 255.0), 1, 0, 255);
  fs::remove_all(dir.path / "c");
  CHECK_THROWS_WITH(shared({{"validation", other.path.string()}}),
                    Contains("/z: class 'z' does not occur in the training folder (classes: a, b)"));
  CHECK_THROWS_WITH(shared({{"train", (dir.path / "nothing").string()}}), Contains("is not a directory"));
  CHECK_THROWS_WITH(shared({{"validation", (dir.path / "nothing").string()}}),
                    Contains("key 'dataset.validation'") && Contains("is not a directory"));
}

TEST_CASE("an image folder's stage keys follow the images it holds", "[datasets][image_folder][stages]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  test::TempDir dir;
  for (const char* c : {"a", "b"}) {
    fs::create_directories(dir.path / "images" / c);
    inflab::save_png_grid(dir.path / "images" / c / "0.png", at::full({1, 16}, 255.0), 1, 0, 255);
  }
  const auto file = dir.write("e.toml", fmt::format(R"([experiment]
name = "e"
[dataset]
plugin = "image_folder"
train = "{}"
[model]
plugin = "mlp_lora"
[[estimator]]
plugin = "datainf"
)",
                                                    (dir.path / "images").string()));
  auto key = [&]() { return inflab::stage_key("base", inflab::load_experiment(file, {}, registry).at(0)); };
  const auto base = key();
  CHECK(key() == base);  // stable while the folder is unchanged
  inflab::save_png_grid(dir.path / "images" / "b" / "1.png", at::full({1, 16}, 0.0), 1, 0, 255);
  const auto added = key();
  CHECK(added != base);  // a new image
  inflab::save_png_grid(dir.path / "images" / "b" / "1.png", at::full({1, 16}, 255.0), 1, 0, 255);
  fs::last_write_time(dir.path / "images" / "b" / "1.png",
                      fs::last_write_time(dir.path / "images" / "b" / "1.png") + std::chrono::seconds(2));
  CHECK(key() != added);  // an image's content
}

TEST_CASE("paper_generation_tasks reads the paper's files verbatim and refuses a changed byte",
          "[datasets][paper_generation_tasks]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  const fs::path dir = fs::path(INFLAB_SOURCE_DIR) / "data" / "datainf-generation-tasks";
  for (const std::string task : {"grammars", "math_without_reason", "math_with_reason"}) {
    INFO(task);
    auto splits = dataset(registry, "paper_generation_tasks", {{"task", task}})->load();
    REQUIRE(splits.train.size() == 900);
    REQUIRE(splits.validation.size() == 100);
    REQUIRE(splits.class_names.size() == 10);
    // Oracle: the file read here line by line; text = prompt + response + "</s>", class = variation.
    std::ifstream in(dir / (task + "_train.jsonl"));
    std::int64_t row = 0;
    std::vector<std::int64_t> per_class(10, 0);
    for (std::string line; std::getline(in, line); ++row) {
      const auto record = nlohmann::json::parse(line);
      CHECK(splits.train.texts[row] == record["prompt"].get<std::string>());
      CHECK(splits.train.texts[row] + splits.train.responses[row] + "</s>" ==
            record["text"].get<std::string>());
      const auto label = splits.train.labels[row].item<std::int64_t>();
      CHECK(splits.class_names[label] == record["variation"].get<std::string>());
      ++per_class[label];
    }
    CHECK(row == 900);
    CHECK(per_class == std::vector<std::int64_t>(10, 90));
    CHECK(splits.validation.ids.front() == 900);
  }
  auto subset = dataset(registry, "paper_generation_tasks",
                        {{"train_per_class", std::int64_t{3}}, {"test_per_class", std::int64_t{1}}})
                    ->load();
  CHECK(subset.train.size() == 30);
  CHECK(subset.validation.size() == 10);
  CHECK(subset.train.ids[3] == 90);  // the first rows of each class keep their row numbers

  // One changed byte: an error naming the file and both checksums.
  test::TempDir copy;
  for (const auto& entry : fs::directory_iterator(dir))
    fs::copy(entry.path(), copy.path / entry.path().filename());
  {
    std::fstream file(copy.path / "math_without_reason_test.jsonl",
                      std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(20);
    file.put('X');
  }
  auto changed = dataset(registry, "paper_generation_tasks", {{"data_dir", copy.path.string()}});
  CHECK_THROWS_WITH(
      changed->load(),
      Contains("math_without_reason_test.jsonl has SHA-256") &&
          Contains("expected 6bdedef78ce595977a424638733860e79eab42a7709352c0e61fac6c0accddfe"));
  fs::remove(copy.path / "math_without_reason_train.jsonl");
  CHECK_THROWS_WITH(changed->load(), Contains("cannot read") && Contains("math_without_reason_train.jsonl"));
}

TEST_CASE(
    "fortunes: each file's fortunes under its name, whitespace collapsed, long and repeated ones left out",
    "[datasets][fortunes]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  test::TempDir dir;
  dir.write("alpha",
            "one  short\n\tfortune\n%\nthis one is far longer than the limit allows\n%\nrepeated\n%\n");
  dir.write("beta", "repeated\n%\nsecond\n   line\n");
  dir.write("beta.dat", std::string("\0\x01\x02%\n", 5));  // strfile's index: not a category
  dir.write("gamma", "only a fortune longer than twenty characters\n");
  auto load = [&](std::int64_t n_train, std::int64_t n_validation) {
    return dataset(registry, "fortunes",
                   {{"directory", dir.path.string()},
                    {"max_chars", std::int64_t{20}},
                    {"n_train", n_train},
                    {"n_validation", n_validation}})
        ->load();
  };
  // By hand: alpha keeps "one short fortune" (17 characters) and "repeated", beta "second line" (its
  // "repeated" is alpha's); gamma has nothing short enough and is no class.
  const auto splits = load(2, 1);
  CHECK(splits.class_names == std::vector<std::string>{"alpha", "beta"});
  std::map<std::string, std::string> category;
  for (const inflab::Split* split : {&splits.train, &splits.validation})
    for (std::size_t k = 0; k < split->texts.size(); ++k) {
      const auto label = split->labels[static_cast<std::int64_t>(k)].item<std::int64_t>();
      CHECK(split->texts[k] == "A fortune from the " + splits.class_names[label] + " collection:");
      category[split->responses[k]] = splits.class_names[label];
    }
  CHECK(category == std::map<std::string, std::string>{
                        {"one short fortune", "alpha"}, {"repeated", "alpha"}, {"second line", "beta"}});
  CHECK_THROWS_WITH(load(3, 1), Contains("3 examples available"));
  auto missing = dataset(registry, "fortunes", {{"directory", (dir.path / "none").string()}});
  CHECK_THROWS_WITH(missing->load(), Contains("not a directory") && Contains("fortunes package"));

  // The package's own files: 10,000 + 100 disjoint fortunes, none longer than 160 characters.
  auto real = dataset(registry, "fortunes")->load();
  REQUIRE(real.train.size() == 10000);
  REQUIRE(real.validation.size() == 100);
  std::set<std::string> seen;
  for (const inflab::Split* split : {&real.train, &real.validation})
    for (const auto& response : split->responses) {
      CHECK(response.size() <= 160);
      CHECK(seen.insert(response).second);
    }
  CHECK(real.class_names.front() == "art");
}
