// The batched per-example gradient engine against a per-example autograd loop.
#include <torch/torch.h>

#include <catch2/catch.hpp>

#include "helpers.hpp"
#include "inflab/gradients.hpp"
#include "inflab/lora.hpp"
#include "inflab/registry.hpp"

namespace {

// Oracle: one forward and backward per example, gradients read from autograd directly.
inflab::GradientBlocks loop_gradients(inflab::Model& model, const torch::Tensor& x, const torch::Tensor& y) {
  model.set_training(false);
  std::vector<torch::Tensor> params;
  inflab::GradientBlocks blocks;
  for (auto* layer : model.lora_layers()) {
    if (!layer->has_adapter()) continue;
    params.push_back(layer->lora_a());
    params.push_back(layer->lora_b());
    blocks.push_back({layer->name() + ".lora_A", torch::empty({x.size(0), layer->lora_a().numel()})});
    blocks.push_back({layer->name() + ".lora_B", torch::empty({x.size(0), layer->lora_b().numel()})});
  }
  for (int64_t i = 0; i < x.size(0); ++i) {
    auto loss = torch::nn::functional::cross_entropy(model.forward(x.narrow(0, i, 1)), y.narrow(0, i, 1));
    auto grads = torch::autograd::grad({loss}, params);
    for (std::size_t b = 0; b < grads.size(); ++b) blocks[b].values[i].copy_(grads[b].reshape({-1}));
  }
  return blocks;
}

void check_equal(const inflab::GradientBlocks& engine, const inflab::GradientBlocks& loop) {
  REQUIRE(engine.size() == loop.size());
  for (std::size_t b = 0; b < engine.size(); ++b) {
    INFO("block " << engine[b].name);
    CHECK(engine[b].name == loop[b].name);
    REQUIRE(engine[b].values.sizes() == loop[b].values.sizes());
    double scale = loop[b].values.norm().item<double>();
    REQUIRE(scale > 0);  // a zero block would make the comparison vacuous
    CHECK((engine[b].values - loop[b].values).norm().item<double>() / scale < 1e-5);
  }
}

void perturb_lora(inflab::Model& model) {  // B = 0 after init; make both factors non-trivial
  torch::NoGradGuard no_grad;
  for (auto* layer : model.lora_layers())
    if (layer->has_adapter()) layer->lora_b().normal_(0, 0.5);
}

// A token model: per-token LoRA projection, masked mean pooling, LoRA head. The last input
// feature is the mask (1 = token, 0 = padding).
class SequenceModel : public inflab::Model {
 public:
  void build(const inflab::DataShape& shape, const inflab::LoraConfig& lora, std::uint64_t seed) override {
    torch::manual_seed(0);
    proj_ = std::make_shared<inflab::LoraLinear>("proj", shape.input_shape.back() - 1, 8, lora, true);
    head_ = std::make_shared<inflab::LoraLinear>("head", 8, shape.num_classes, lora, true);
    proj_->reset_adapter(seed);
    head_->reset_adapter(seed);
  }
  at::Tensor forward(const at::Tensor& inputs) override {
    auto features = inputs.narrow(2, 0, inputs.size(2) - 1);
    auto mask = inputs.narrow(2, inputs.size(2) - 1, 1);
    auto h = torch::tanh(proj_->forward(features)) * mask;
    return head_->forward(h.sum(1) / mask.sum(1));
  }
  inflab::NamedTensors base_parameters() override { return {}; }
  std::vector<inflab::LoraLayer*> lora_layers() override { return {proj_.get(), head_.get()}; }
  void set_training(bool t) override { proj_->train(t), head_->train(t); }

 private:
  std::shared_ptr<inflab::LoraLinear> proj_, head_;
};

}  // namespace

TEST_CASE("engine gradients equal a per-example loop on mlp_lora, several ranks", "[gradients]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  for (std::int64_t rank : {1, 2, 4}) {
    auto options = inflab::default_options(
        "mlp_lora", registry.find(inflab::PluginKind::Model, "mlp_lora").info->options());
    options.set("hidden", std::vector<std::int64_t>{16, 12});
    auto model = registry.create_as<inflab::Model>(inflab::PluginKind::Model, "mlp_lora", options);
    inflab::LoraConfig lora{rank, 2.0 * rank, 0.3, {"fc*"}};
    model->build({{20}, 5}, lora, 42);
    perturb_lora(*model);
    torch::manual_seed(rank);
    auto x = torch::randn({23, 20});
    auto y = torch::randint(0, 5, {23}, torch::kLong);
    INFO("rank " << rank);
    // Batch 8 does not divide 23: the last batch is partial.
    check_equal(inflab::per_example_gradients(*model, x, y, 8), loop_gradients(*model, x, y));
  }
}

TEST_CASE("engine gradients equal a per-example loop on cnn_lora (conv and linear adapters)", "[gradients]") {
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  for (std::int64_t rank : {1, 3}) {
    auto options = inflab::default_options(
        "cnn_lora", registry.find(inflab::PluginKind::Model, "cnn_lora").info->options());
    options.set("channels", std::vector<std::int64_t>{4, 6});
    options.set("hidden", std::int64_t{10});
    auto model = registry.create_as<inflab::Model>(inflab::PluginKind::Model, "cnn_lora", options);
    model->build({{64}, 3}, inflab::LoraConfig{rank, 2.0, 0.0, {"conv*", "fc*"}}, 5);
    perturb_lora(*model);
    torch::manual_seed(rank);
    auto x = torch::randn({9, 64});  // 8 x 8 images
    auto y = torch::randint(0, 3, {9}, torch::kLong);
    auto engine = inflab::per_example_gradients(*model, x, y, 4);
    REQUIRE(engine.size() == 8);
    CHECK(engine[0].name == "conv1.lora_A");
    CHECK(engine[0].values.size(1) == rank * 1 * 3 * 3);
    INFO("rank " << rank);
    check_equal(engine, loop_gradients(*model, x, y));
  }
}

TEST_CASE("engine gradients equal a per-example loop on a padded sequence model", "[gradients]") {
  for (std::int64_t rank : {1, 3}) {
    SequenceModel model;
    model.build({{7, 5}, 3}, inflab::LoraConfig{rank, 4.0, 0.0, {"*"}}, 1);
    perturb_lora(model);
    torch::manual_seed(100 + rank);
    auto x = torch::randn({10, 7, 5});
    // Example i has 2 + i % 6 real tokens; the rest is padding with garbage features.
    for (int64_t i = 0; i < 10; ++i)
      for (int64_t t = 0; t < 7; ++t) x[i][t][4] = t < 2 + i % 6 ? 1.0 : 0.0;
    auto y = torch::randint(0, 3, {10}, torch::kLong);
    INFO("rank " << rank);
    check_equal(inflab::per_example_gradients(model, x, y, 4), loop_gradients(model, x, y));
  }
}

TEST_CASE("only layers matching the target patterns get adapters", "[gradients][lora]") {
  CHECK(inflab::matches_any("fc1", {"fc*"}));
  CHECK(inflab::matches_any("encoder.layer.3.attention.value", {"*value"}));
  CHECK_FALSE(inflab::matches_any("fc1", {"fc2", "query"}));
  CHECK(inflab::matches_any("fc2", {"fc?"}));
}

TEST_CASE("a merged conv adapter gives the same outputs", "[lora]") {
  inflab::LoraConv2d layer("c", 2, 3, 3, 1, 1, inflab::LoraConfig{2, 4.0, 0.0, {"*"}}, true);
  layer.reset_adapter(1);
  {
    torch::NoGradGuard g;
    layer.lora_b().normal_();
  }
  layer.eval();
  auto x = torch::randn({2, 2, 5, 5});
  auto before = layer.forward(x);
  // The adapter is not a no-op, so the comparison below is meaningful.
  CHECK_FALSE(torch::allclose(
      before, torch::nn::functional::conv2d(
                  x, layer.base_weight(),
                  torch::nn::functional::Conv2dFuncOptions().bias(layer.base_bias()).padding(1))));
  layer.merge();
  CHECK(torch::allclose(layer.forward(x), before, 1e-5, 1e-5));
}

TEST_CASE("merge folds the adapter into the base weight without changing outputs", "[lora]") {
  inflab::LoraLinear layer("l", 6, 4, inflab::LoraConfig{2, 4.0, 0.0, {"*"}}, true);
  layer.reset_adapter(3);
  {
    torch::NoGradGuard g;
    layer.lora_b().normal_();
  }
  layer.eval();
  auto x = torch::randn({5, 6});
  auto before = layer.forward(x);
  layer.merge();
  CHECK(torch::allclose(layer.forward(x), before, 1e-5, 1e-6));
  layer.unmerge();
  CHECK(torch::allclose(layer.forward(x), before, 1e-5, 1e-6));
}

namespace {
// The projected blocks of mlp_lora (hidden 16, 12; inputs 20, 5 classes; rank 2) under `projection`,
// and the full per-example gradients from the autograd loop with the factors of the unprojected run.
struct ProjectionCase {
  inflab::GradientBlocks projected, full, full_factors;
  std::vector<inflab::LoraLayer*> layers;
};
ProjectionCase projection_case(const inflab::Projection& projection) {
  auto model = test::make<inflab::Model>(inflab::PluginKind::Model, "mlp_lora",
                                         {{"hidden", std::vector<std::int64_t>{16, 12}}});
  model->build({{20}, 5}, inflab::LoraConfig{2, 4.0, 0.0, {"fc*"}}, 42);
  perturb_lora(*model);
  torch::manual_seed(7);
  auto x = torch::randn({11, 20});
  auto y = torch::randint(0, 5, {11}, torch::kLong);
  auto task = inflab::make_classification_task();
  inflab::Batch batch{x, y, torch::arange(11)};
  ProjectionCase out;
  out.projected = inflab::per_example_gradients(*model, *task, batch, {4, "", true, false, {}, projection});
  out.full = loop_gradients(*model, x, y);
  out.full_factors = inflab::per_example_gradients(*model, *task, batch, {4, "", true, false, {}});
  return out;
}
double relative_error(const torch::Tensor& value, const torch::Tensor& expected) {
  return ((value.to(torch::kDouble) - expected).norm() / expected.norm()).item<double>();
}
}  // namespace

TEST_CASE("projected gradients equal the full gradients times the seeded matrix (float64 oracle)",
          "[gradients][projection]") {
  for (auto kind : {inflab::Projection::Kind::gaussian, inflab::Projection::Kind::sparse}) {
    const inflab::Projection projection{kind, 24, 3};
    INFO(projection.describe());
    auto c = projection_case(projection);
    REQUIRE(c.projected.size() == c.full.size());
    for (std::size_t b = 0; b < c.full.size(); ++b) {
      INFO("block " << c.full[b].name);
      const auto& full = c.full[b].values;
      const std::int64_t d = full.size(1);
      if (d <= 24) {  // kept whole, with its Kronecker factors
        CHECK(relative_error(c.projected[b].values, full.to(torch::kDouble)) < 1e-5);
        CHECK(c.projected[b].has_factors());
        continue;
      }
      auto matrix = inflab::projection_matrix(projection, c.full[b].name, d, 24).to(torch::kDouble);
      REQUIRE(c.projected[b].values.sizes() == std::vector<std::int64_t>{11, 24});
      CHECK(relative_error(c.projected[b].values, full.to(torch::kDouble).mm(matrix)) < 1e-5);
      CHECK_FALSE(c.projected[b].has_factors());       // a dense projection has no Kronecker structure
      if (kind == inflab::Projection::Kind::sparse) {  // Achlioptas: 0 or +-sqrt(3 / k), a third nonzero
        auto nonzero = matrix.ne(0);
        CHECK(matrix.abs().masked_select(nonzero).sub(std::sqrt(3.0 / 24)).abs().max().item<double>() < 1e-6);
        const double share = nonzero.to(torch::kDouble).mean().item<double>();
        CHECK(share > 0.25);
        CHECK(share < 0.42);
      }
    }
  }
}

TEST_CASE("factorised (LoGra) projection: the Kronecker product of side matrices, factors projected alike",
          "[gradients][projection]") {
  const inflab::Projection projection{inflab::Projection::Kind::factorised, 16, 5};  // rank 2: 8 per side
  auto c = projection_case(projection);
  REQUIRE(c.projected.size() == 6);
  const std::vector<std::int64_t> in{20, 16, 12}, out{16, 12, 5};
  for (std::size_t l = 0; l < 3; ++l) {
    // lora_A: r x in, its input side projected: G (r x in) P_in.
    const auto& a = c.full[2 * l];
    INFO("block " << a.name);
    auto p_in = inflab::projection_matrix(projection, a.name, in[l], 8).to(torch::kDouble);
    auto expected_a = a.values.to(torch::kDouble).reshape({11, 2, in[l]}).matmul(p_in).reshape({11, -1});
    CHECK(relative_error(c.projected[2 * l].values, expected_a) < 1e-5);
    // Factors: the projected input's second moment is P^T A P; the r x r side is unchanged.
    REQUIRE(c.projected[2 * l].has_factors());
    auto activation = c.full_factors[2 * l].activation_covariance.to(torch::kDouble);
    CHECK(relative_error(c.projected[2 * l].activation_covariance, p_in.t().mm(activation).mm(p_in)) < 1e-5);
    CHECK(relative_error(c.projected[2 * l].gradient_covariance,
                         c.full_factors[2 * l].gradient_covariance.to(torch::kDouble)) < 1e-6);
    // lora_B: out x r, its output side projected where wider than 8: P_out^T G.
    const auto& b = c.full[2 * l + 1];
    INFO("block " << b.name);
    auto full_b = b.values.to(torch::kDouble).reshape({11, out[l], 2});
    if (out[l] <= 8) {
      CHECK(relative_error(c.projected[2 * l + 1].values, full_b.reshape({11, -1})) < 1e-5);
      continue;
    }
    auto p_out = inflab::projection_matrix(projection, b.name, out[l], 8).to(torch::kDouble);
    auto expected_b = p_out.t().matmul(full_b).reshape({11, -1});
    CHECK(relative_error(c.projected[2 * l + 1].values, expected_b) < 1e-5);
    auto gradient = c.full_factors[2 * l + 1].gradient_covariance.to(torch::kDouble);
    CHECK(relative_error(c.projected[2 * l + 1].gradient_covariance, p_out.t().mm(gradient).mm(p_out)) <
          1e-5);
  }
}

TEST_CASE("projection matrices depend on (kind, seed, block, shape) alone, with the declared scale",
          "[gradients][projection]") {
  const inflab::Projection gaussian{inflab::Projection::Kind::gaussian, 256, 11};
  auto m = inflab::projection_matrix(gaussian, "fc1.lora_A", 400, 256);
  CHECK(torch::equal(m, inflab::projection_matrix(gaussian, "fc1.lora_A", 400, 256)));
  CHECK_FALSE(torch::equal(m, inflab::projection_matrix(gaussian, "fc1.lora_B", 400, 256)));
  auto reseeded = gaussian;
  reseeded.seed = 12;
  CHECK_FALSE(torch::equal(m, inflab::projection_matrix(reseeded, "fc1.lora_A", 400, 256)));
  // N(0, 1/k): over 102,400 entries the mean is within 4 standard errors of 0 and the variance within 2%.
  auto v = m.to(torch::kDouble);
  CHECK(std::abs(v.mean().item<double>()) < 4.0 / std::sqrt(102400.0) / 16.0);
  CHECK(std::abs(v.var().item<double>() * 256 - 1) < 0.02);
  CHECK_THROWS_WITH(inflab::projection_kind("dense"),
                    Catch::Matchers::Contains("gaussian, sparse or factorised"));
}
