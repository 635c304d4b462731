// Tasks (causal LM, denoising): the engine's per-example gradients of each task's loss against a
// per-example autograd loop that computes the loss by hand, one example (and timestep) at a time.
#include <png.h>
#include <torch/torch.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <set>

#include "helpers.hpp"
#include "inflab/config.hpp"
#include "inflab/dataset.hpp"
#include "inflab/error.hpp"
#include "inflab/gradients.hpp"
#include "inflab/io.hpp"
#include "inflab/language_model.hpp"
#include "inflab/lora.hpp"
#include "inflab/model.hpp"
#include "inflab/pipeline.hpp"
#include "inflab/registry.hpp"
#include "inflab/sampling.hpp"
#include "inflab/task.hpp"

using Catch::Matchers::Contains;

namespace {

std::vector<torch::Tensor> adapter_tensors(inflab::Model& model) {
  std::vector<torch::Tensor> out;
  for (auto* layer : model.lora_layers()) out.push_back(layer->lora_a()), out.push_back(layer->lora_b());
  return out;
}

void perturb(inflab::Model& model) {  // B = 0 after init: make both factors non-trivial
  torch::NoGradGuard no_grad;
  for (auto* layer : model.lora_layers()) layer->lora_b().normal_(0, 0.5);
}

// Per-example gradients of loss(i) by autograd, one example at a time.
inflab::GradientBlocks loop(inflab::Model& model, std::int64_t n,
                            const std::function<torch::Tensor(std::int64_t)>& loss) {
  model.set_training(false);
  auto params = adapter_tensors(model);
  inflab::GradientBlocks blocks;
  for (auto* layer : model.lora_layers()) {
    blocks.push_back({layer->name() + ".lora_A", torch::empty({n, layer->lora_a().numel()})});
    blocks.push_back({layer->name() + ".lora_B", torch::empty({n, layer->lora_b().numel()})});
  }
  for (std::int64_t i = 0; i < n; ++i) {
    auto grads = torch::autograd::grad({loss(i)}, params);
    for (std::size_t b = 0; b < grads.size(); ++b) blocks[b].values[i].copy_(grads[b].reshape({-1}));
  }
  return blocks;
}

void check_equal(const inflab::GradientBlocks& engine, const inflab::GradientBlocks& oracle) {
  REQUIRE(engine.size() == oracle.size());
  for (std::size_t b = 0; b < engine.size(); ++b) {
    INFO("block " << engine[b].name);
    REQUIRE(engine[b].values.sizes() == oracle[b].values.sizes());
    double scale = oracle[b].values.norm().item<double>();
    REQUIRE(scale > 0);
    CHECK((engine[b].values - oracle[b].values).norm().item<double>() / scale < 1e-5);
  }
}

// A tiny causal LM: frozen embedding, a LoRA mixing layer, a LoRA output layer; logits per position.
class TinyLm : public inflab::Model {
 public:
  void build(const inflab::DataShape&, const inflab::LoraConfig& lora, std::uint64_t seed) override {
    torch::manual_seed(0);
    embedding_ = torch::randn({kVocab, 6});
    mix_ = std::make_shared<inflab::LoraLinear>("mix", 6, 6, lora, true);
    out_ = std::make_shared<inflab::LoraLinear>("out", 6, kVocab, lora, true);
    mix_->reset_adapter(seed), out_->reset_adapter(seed);
  }
  at::Tensor forward(const at::Tensor& ids) override {
    auto x = embedding_.index_select(0, ids.reshape({-1})).reshape({ids.size(0), ids.size(1), 6});
    // A causal mixing: each position sees the running mean of the positions before it.
    auto counts = torch::arange(1, ids.size(1) + 1, torch::kFloat).reshape({1, -1, 1});
    x = x.cumsum(1) / counts;
    return out_->forward(torch::tanh(mix_->forward(x)));
  }
  inflab::NamedTensors base_parameters() override { return {}; }
  std::vector<inflab::LoraLayer*> lora_layers() override { return {mix_.get(), out_.get()}; }
  void set_training(bool t) override { mix_->train(t), out_->train(t); }
  static constexpr std::int64_t kVocab = 13;

 private:
  torch::Tensor embedding_;
  std::shared_ptr<inflab::LoraLinear> mix_, out_;
};

// A tiny conditional denoiser: LoRA convolutions, timestep and condition added as a channel bias.
class TinyDenoiser : public inflab::Model, public inflab::Denoiser {
 public:
  void build(const inflab::DataShape&, const inflab::LoraConfig& lora, std::uint64_t seed) override {
    torch::manual_seed(0);
    in_ = std::make_shared<inflab::LoraConv2d>("in", 1, 4, 3, 1, 1, lora, true);
    out_ = std::make_shared<inflab::LoraConv2d>("out", 4, 1, 3, 1, 1, lora, true);
    condition_ = torch::randn({3, 4});
    in_->reset_adapter(seed), out_->reset_adapter(seed);
  }
  at::Tensor forward(const at::Tensor&) override { throw inflab::Error("a denoiser has no class logits"); }
  at::Tensor denoise(const at::Tensor& noisy, const at::Tensor& t, const at::Tensor& condition) override {
    auto bias = condition_.index_select(0, condition) + torch::sin(t.to(torch::kFloat) / 100).unsqueeze(1);
    auto h = torch::silu(in_->forward(noisy) + bias.unsqueeze(2).unsqueeze(3));
    return out_->forward(h);
  }
  inflab::NamedTensors base_parameters() override { return {}; }
  std::vector<inflab::LoraLayer*> lora_layers() override { return {in_.get(), out_.get()}; }
  void set_training(bool t) override { in_->train(t), out_->train(t); }

 private:
  std::shared_ptr<inflab::LoraConv2d> in_, out_;
  torch::Tensor condition_;
};

inflab::Options task_options(std::vector<std::int64_t> timesteps, std::int64_t seed) {
  auto options = inflab::default_options("[task]", inflab::task_option_specs());
  options.set("timesteps", timesteps);
  options.set("noise_seed", seed);
  return options;
}

}  // namespace

TEST_CASE("causal_lm: per-example gradients of the response tokens' loss equal a loop", "[task]") {
  TinyLm model;
  model.build({}, inflab::LoraConfig{2, 4.0, 0.0, {"*"}}, 1);
  perturb(model);
  torch::manual_seed(3);
  const std::int64_t n = 7, positions = 9;
  auto ids = torch::randint(0, TinyLm::kVocab, {n, positions}, torch::kLong);
  // Example i: a prompt of 2 + i % 3 positions, a response, padding after 7 - i % 2 positions.
  auto targets = torch::full({n, positions}, -100, torch::kLong);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t t = 2 + i % 3; t < positions - 1 - i % 2; ++t) targets[i][t] = ids[i][t + 1];
  auto task = inflab::make_task("causal_lm", task_options({25}, 0));
  inflab::Batch examples{ids, targets, torch::arange(n, torch::kLong)};

  auto by_hand = [&](std::int64_t i) {  // - sum_t log softmax(logits_t)[target_t] over scored t
    auto logits = model.forward(ids.narrow(0, i, 1))[0];
    torch::Tensor loss = torch::zeros({});
    for (std::int64_t t = 0; t < positions; ++t) {
      std::int64_t target = targets[i][t].item<std::int64_t>();
      if (target < 0) continue;
      loss = loss - (logits[t][target] - torch::logsumexp(logits[t], 0));
    }
    return loss;
  };
  auto losses = task->example_losses(model, examples);
  for (std::int64_t i = 0; i < n; ++i)
    CHECK(losses[i].item<double>() == Approx(by_hand(i).item<double>()).epsilon(1e-5));
  auto engine = inflab::per_example_gradients(model, *task, examples, {3, "", false, false, {}});
  check_equal(engine, loop(model, n, by_hand));
  // Queries measure the same loss.
  check_equal(inflab::per_example_gradients(model, *task, examples, {4, "", false, true, {}}), engine);
}

TEST_CASE("causal_lm: targets of the wrong shape are an error that says what is expected", "[task]") {
  TinyLm model;
  model.build({}, inflab::LoraConfig{1, 1.0, 0.0, {"*"}}, 1);
  auto task = inflab::make_task("causal_lm", task_options({25}, 0));
  inflab::Batch flat{torch::zeros({2, 3}, torch::kLong), torch::zeros({2}, torch::kLong), torch::arange(2)};
  CHECK_THROWS_WITH(task->example_losses(model, flat), Contains("next-token ids"));
}

TEST_CASE("optional model capabilities: found across the plugin boundary, a missing one names who needed it",
          "[task][capabilities]") {
  // A model without Denoiser under the denoising task, and sampling from it: one clear error each.
  TinyLm language;
  language.build({}, inflab::LoraConfig{1, 1.0, 0.0, {"*"}}, 1);
  auto denoising = inflab::make_task("denoising", task_options({25}, 0));
  inflab::Batch images{torch::zeros({2, 1, 4, 4}), torch::zeros({2}, torch::kLong), torch::arange(2)};
  CHECK_THROWS_WITH(denoising->example_losses(language, images),
                    Contains("task denoising needs a model that implements inflab::Denoiser"));
  CHECK_THROWS_WITH(inflab::sample_images(language, {0}, {1, 4, 4}, inflab::SamplingOptions{}),
                    Contains("sampling images needs a model that implements inflab::Denoiser"));
  // Without ScoredTokenLogits the causal_lm task gathers the scored rows from forward().
  CHECK(inflab::capability<inflab::ScoredTokenLogits>(language) == nullptr);

  // The packaged plugins, built as separate shared libraries, expose exactly their interfaces.
  auto create = [](const std::string& name) {
    return test::make<inflab::Model>(inflab::PluginKind::Model, name);
  };
  auto ddpm = create("ddpm_lora");
  CHECK(inflab::capability<inflab::Denoiser>(*ddpm) != nullptr);
  CHECK(inflab::capability<inflab::TextEncoder>(*ddpm) == nullptr);
  auto minilm = create("minilm_lora");
  CHECK(inflab::capability<inflab::TextEncoder>(*minilm) != nullptr);
  CHECK(inflab::capability<inflab::LinearProbe>(*minilm) != nullptr);
  CHECK(inflab::capability<inflab::SentenceEmbedder>(*minilm) != nullptr);
  CHECK(inflab::capability<inflab::PeftCounterpart>(*minilm) != nullptr);
  CHECK(inflab::capability<inflab::LanguageModel>(*minilm) == nullptr);
  auto mlp = create("mlp_lora");
  CHECK(inflab::capability<inflab::PeftCounterpart>(*mlp) == nullptr);
  CHECK_THROWS_WITH(inflab::require_capability<inflab::TextEncoder>(*mlp, "dataset 'tweets' (texts)"),
                    Contains("dataset 'tweets' (texts) needs a model that implements inflab::TextEncoder"));
}

TEST_CASE("denoising: noise is fixed per example and timestep, whatever the batch", "[task]") {
  auto like = torch::zeros({1, 4, 4});
  CHECK(inflab::denoising_noise(5, 17, 225, like).equal(inflab::denoising_noise(5, 17, 225, like)));
  CHECK_FALSE(inflab::denoising_noise(5, 17, 225, like).equal(inflab::denoising_noise(5, 18, 225, like)));
  CHECK_FALSE(inflab::denoising_noise(5, 17, 225, like).equal(inflab::denoising_noise(5, 17, 425, like)));
  CHECK_FALSE(inflab::denoising_noise(5, 17, 225, like).equal(inflab::denoising_noise(6, 17, 225, like)));
  auto noise = inflab::denoising_noise(5, 17, 225, torch::zeros({1, 64, 64}));
  CHECK(std::abs(noise.mean().item<double>()) < 0.05);
  CHECK(noise.std().item<double>() == Approx(1.0).epsilon(0.05));

  // alpha_bar of the linear schedule, by hand at two steps.
  auto alpha_bar = inflab::ddpm_alphas_cumprod(1000);
  double product = 1;
  for (int s = 0; s <= 25; ++s) product *= 1 - (1e-4 + (0.02 - 1e-4) * s / 999.0);
  CHECK(alpha_bar[25].item<double>() == Approx(product).epsilon(1e-12));
  CHECK(alpha_bar[999].item<double>() < 1e-4);
}

TEST_CASE("denoising: per-example gradients of the summed timestep losses equal a loop", "[task]") {
  TinyDenoiser model;
  model.build({}, inflab::LoraConfig{2, 4.0, 0.0, {"*"}}, 2);
  perturb(model);
  torch::manual_seed(9);
  const std::int64_t n = 5;
  auto images = torch::randn({n, 1, 6, 6});
  auto condition = torch::randint(0, 3, {n}, torch::kLong);
  auto ids = torch::tensor({101, 7, 55, 3, 19}, torch::kLong);  // not 0..n-1: noise follows the id
  const std::vector<std::int64_t> timesteps{25, 425, 925};
  auto task = inflab::make_task("denoising", task_options(timesteps, 11));
  inflab::Batch examples{images, condition, ids};

  auto alpha_bar = inflab::ddpm_alphas_cumprod(1000);
  auto by_hand = [&](std::int64_t i) {  // one denoiser call per timestep
    torch::Tensor loss = torch::zeros({});
    for (auto t : timesteps) {
      auto eps = inflab::denoising_noise(11, ids[i].item<std::int64_t>(), t, images[0]).unsqueeze(0);
      double a = alpha_bar[t].item<double>();
      auto noisy = std::sqrt(a) * images.narrow(0, i, 1) + std::sqrt(1 - a) * eps;
      auto predicted = model.denoise(noisy, torch::tensor({t}, torch::kLong), condition.narrow(0, i, 1));
      loss = loss + (predicted - eps).square().mean();
    }
    return loss;
  };
  auto losses = task->example_losses(model, examples);
  for (std::int64_t i = 0; i < n; ++i)
    CHECK(losses[i].item<double>() == Approx(by_hand(i).item<double>()).epsilon(1e-5));
  // Batches of 2 split the examples differently from the loop; the noise must not care.
  check_equal(inflab::per_example_gradients(model, *task, examples, {2, "", false, false, {}}),
              loop(model, n, by_hand));
  // Reordered examples give the same losses (noise bound to ids, not positions).
  auto order = torch::tensor({4, 3, 2, 1, 0}, torch::kLong);
  inflab::Batch reversed{images.index_select(0, order), condition.index_select(0, order),
                         ids.index_select(0, order)};
  CHECK(task->example_losses(model, reversed).allclose(losses.index_select(0, order), 1e-6, 1e-7));
}

TEST_CASE("denoising, the paper's notebook: shared noise, per-timestep gradients concatenated, equal a loop",
          "[task]") {
  TinyDenoiser model;
  model.build({}, inflab::LoraConfig{2, 4.0, 0.0, {"*"}}, 3);
  perturb(model);
  torch::manual_seed(10);
  const std::int64_t n = 4;
  auto images = torch::randn({n, 1, 6, 6});
  auto condition = torch::randint(0, 3, {n}, torch::kLong);
  auto ids = torch::tensor({8, 2, 31, 5}, torch::kLong);
  const std::vector<std::int64_t> timesteps{25, 525, 925};
  auto options = task_options(timesteps, 11);
  options.set("shared_noise", true);
  options.set("timestep_gradients", std::string("concatenate"));
  auto task = inflab::make_task("denoising", options);
  CHECK(task->gradient_parts() == 3);
  inflab::Batch examples{images, condition, ids};

  // Oracle: one (example, timestep) at a time, the same noise for every example at a timestep.
  auto alpha_bar = inflab::ddpm_alphas_cumprod(1000);
  std::vector<torch::Tensor> shared;
  for (auto t : timesteps)
    shared.push_back(inflab::denoising_noise(11, std::numeric_limits<std::int64_t>::min(), t, images[0]));
  CHECK_FALSE(shared[0].equal(inflab::denoising_noise(11, 8, 25, images[0])));
  auto one_timestep = [&](std::int64_t i, std::size_t k) {
    const auto t = timesteps[k];
    auto eps = shared[k].unsqueeze(0);
    const double a = alpha_bar[t].item<double>();
    auto noisy = std::sqrt(a) * images.narrow(0, i, 1) + std::sqrt(1 - a) * eps;
    return (model.denoise(noisy, torch::tensor({t}, torch::kLong), condition.narrow(0, i, 1)) - eps)
        .square()
        .mean();
  };
  auto engine = inflab::per_example_gradients(model, *task, examples, {3, "", false, false, {}});
  std::vector<inflab::GradientBlocks> per_timestep;
  for (std::size_t k = 0; k < timesteps.size(); ++k)
    per_timestep.push_back(loop(model, n, [&](std::int64_t i) { return one_timestep(i, k); }));
  REQUIRE(engine.size() == per_timestep[0].size());
  for (std::size_t b = 0; b < engine.size(); ++b) {
    INFO("block " << engine[b].name);
    std::vector<torch::Tensor> parts;
    for (const auto& blocks : per_timestep) parts.push_back(blocks[b].values);
    torch::Tensor expected = torch::cat(parts, 1);  // timestep 25's gradient, then 525's, then 925's
    REQUIRE(engine[b].values.sizes() == expected.sizes());
    CHECK((engine[b].values - expected).norm().item<double>() / expected.norm().item<double>() < 1e-4);
  }
  // The loss is still the sum over timesteps; Kronecker factors are refused with the reason.
  CHECK(task->example_losses(model, examples)[1].item<double>() ==
        Approx((one_timestep(1, 0) + one_timestep(1, 1) + one_timestep(1, 2)).item<double>()).epsilon(1e-5));
  CHECK_THROWS_WITH(inflab::per_example_gradients(model, *task, examples, {3, "", true, false, {}}),
                    Contains("concatenate") && Contains("kfac"));
  options.set("timestep_gradients", std::string("stack"));
  CHECK_THROWS_WITH(inflab::make_task("denoising", options), Contains("task.timestep_gradients"));
}

TEST_CASE("ddpm_lora (U-Net: LoRA convolutions, strided and attention): denoising gradients equal a loop",
          "[task][ddpm]") {
  // Two levels on 8x8 (the digits studies' shape) and three on 12x12 (28x28's: two halvings).
  const bool deep = GENERATE(false, true);
  const std::int64_t side = deep ? 12 : 8;
  INFO((deep ? "three levels" : "two levels"));
  auto options = inflab::default_options(
      "ddpm_lora", test::registry().find(inflab::PluginKind::Model, "ddpm_lora").info->options());
  options.set("channels", deep ? std::vector<std::int64_t>{4, 8, 8} : std::vector<std::int64_t>{8, 8});
  options.set("embedding", std::int64_t{8});
  options.set("groups", std::int64_t{4});
  auto model = test::registry().create_as<inflab::Model>(inflab::PluginKind::Model, "ddpm_lora", options);
  model->build({{side * side}, 3}, inflab::LoraConfig{2, 4.0, 0.0, {"*"}}, 5);
  perturb(*model);
  std::set<std::string> layers;
  for (auto* layer : model->lora_layers()) layers.insert(layer->name());
  CHECK(layers.count(deep ? "down2" : "down"));  // a stride-2 convolution
  CHECK(layers.count("attn.q"));                 // attention over the lowest-resolution positions
  CHECK(layers.count(deep ? "res6.conv2" : "res4.conv2"));
  CHECK(layers.size() == (deep ? 2u + 4 + 6 * 2 + 4 : 2u + 2 + 4 * 2 + 4));
  if (deep) {  // 10 does not halve twice
    auto other = test::registry().create_as<inflab::Model>(inflab::PluginKind::Model, "ddpm_lora", options);
    REQUIRE_THROWS_WITH(other->build({{100}, 3}, inflab::LoraConfig{2, 4.0, 0.0, {"*"}}, 5),
                        Contains("halves 2 times") && Contains("found 100 values"));
  }
  torch::manual_seed(3);
  const std::int64_t n = 4;
  auto images = torch::rand({n, side * side}) * 2 - 1;  // flattened grey images, as the datasets give them
  auto condition = torch::tensor({0, 2, 1, 2}, torch::kLong);
  auto ids = torch::tensor({8, 3, 21, 5}, torch::kLong);
  const std::vector<std::int64_t> timesteps{25, 525};
  auto task = inflab::make_task("denoising", task_options(timesteps, 4));
  auto alpha_bar = inflab::ddpm_alphas_cumprod(1000);
  auto& denoiser = inflab::require_capability<inflab::Denoiser>(*model, "this test");
  auto by_hand = [&](std::int64_t i) {
    torch::Tensor loss = torch::zeros({});
    for (auto t : timesteps) {
      auto eps = inflab::denoising_noise(4, ids[i].item<std::int64_t>(), t, images[0]).unsqueeze(0);
      double a = alpha_bar[t].item<double>();
      auto noisy = std::sqrt(a) * images.narrow(0, i, 1) + std::sqrt(1 - a) * eps;
      loss =
          loss + (denoiser.denoise(noisy, torch::tensor({t}, torch::kLong), condition.narrow(0, i, 1)) - eps)
                     .square()
                     .mean();
    }
    return loss;
  };
  check_equal(
      inflab::per_example_gradients(*model, *task, {images, condition, ids}, {3, "", false, false, {}}),
      loop(*model, n, by_hand));
}

TEST_CASE("ddpm_lora: condition id -1 is the prediction without a condition embedding", "[task][ddpm]") {
  auto options = inflab::default_options(
      "ddpm_lora", test::registry().find(inflab::PluginKind::Model, "ddpm_lora").info->options());
  options.set("channels", std::vector<std::int64_t>{8, 8});
  options.set("embedding", std::int64_t{8});
  options.set("groups", std::int64_t{4});
  auto model = test::registry().create_as<inflab::Model>(inflab::PluginKind::Model, "ddpm_lora", options);
  model->build({{64}, 3}, inflab::LoraConfig{2, 4.0, 0.0, {"*"}}, 5);
  auto& denoiser = inflab::require_capability<inflab::Denoiser>(*model, "this test");
  torch::NoGradGuard no_grad;
  torch::manual_seed(8);
  auto noisy = torch::randn({3, 64});
  auto t = torch::tensor({10, 500, 990}, torch::kLong);
  auto mixed = denoiser.denoise(noisy, t, torch::tensor({-1, 2, -1}, torch::kLong));
  auto conditioned = denoiser.denoise(noisy, t, torch::tensor({0, 2, 1}, torch::kLong));
  CHECK(mixed[1].allclose(conditioned[1], 1e-6, 1e-7));        // a conditioned row is as without -1 beside it
  CHECK_FALSE(mixed[0].allclose(conditioned[0], 1e-3, 1e-3));  // the embedding matters
  // The oracle: the same network with every condition embedding zeroed.
  for (auto& [name, tensor] : model->base_parameters())
    if (name == "condition.weight") tensor.zero_();
  auto zeroed = denoiser.denoise(noisy, t, torch::tensor({0, 2, 1}, torch::kLong));
  CHECK(mixed[0].allclose(zeroed[0], 1e-6, 1e-7));
  CHECK(mixed[2].allclose(zeroed[2], 1e-6, 1e-7));
  CHECK_THROWS_WITH(denoiser.denoise(noisy, t, torch::tensor({-2, 0, 0}, torch::kLong)),
                    Contains("-1 for none"));
}

// A denoiser that predicts no noise: DDIM then has a closed form to check the sampler against.
class ZeroDenoiser : public TinyDenoiser {
 public:
  at::Tensor denoise(const at::Tensor& noisy, const at::Tensor&, const at::Tensor&) override {
    return torch::zeros_like(noisy);
  }
};

TEST_CASE("DDIM sampling follows its update rule, PNG grids read back through libpng", "[task][ddpm]") {
  ZeroDenoiser model;
  model.build({}, inflab::LoraConfig{2, 4.0, 0.0, {"*"}}, 1);
  inflab::SamplingOptions options;
  options.sampling_steps = 2;
  options.seed = 7;
  options.clip = 1.0;
  auto images = inflab::sample_images(model, {0, 1, 2}, {1, 4, 4}, options);
  REQUIRE(images.sizes() == at::IntArrayRef({3, 1, 4, 4}));
  // By hand: x_T ~ N(0, I) from the seed; steps at t = 999, then 0; eps = 0 predicted.
  auto generator = at::detail::createCPUGenerator(7);
  auto x = at::normal(0.0, 1.0, {3, 1, 4, 4}, generator).to(torch::kDouble);
  auto alpha_bar = inflab::ddpm_alphas_cumprod(1000).to(torch::kDouble);
  for (auto [t, previous] : std::vector<std::pair<int, int>>{{999, 0}, {0, -1}}) {
    const double a = alpha_bar[t].item<double>(),
                 a_prev = previous < 0 ? 1.0 : alpha_bar[previous].item<double>();
    auto x0 = (x / std::sqrt(a)).clamp(-1, 1);
    auto eps = (x - std::sqrt(a) * x0) / std::sqrt(1 - a);
    x = std::sqrt(a_prev) * x0 + std::sqrt(1 - a_prev) * eps;
  }
  CHECK(images.to(torch::kDouble).allclose(x, 1e-5, 1e-6));
  CHECK(inflab::sample_images(model, {0, 1, 2}, {1, 4, 4}, options).equal(images));  // seeded

  test::TempDir dir;
  auto grid = torch::linspace(-1, 1, 3 * 16).reshape({3, 16});
  inflab::save_png_grid(dir.path / "g.png", grid, 2);
  png_image read{};
  read.version = PNG_IMAGE_VERSION;
  REQUIRE(png_image_begin_read_from_file(&read, (dir.path / "g.png").string().c_str()));
  read.format = PNG_FORMAT_GRAY;
  CHECK(read.width == 2 * 5 + 1);  // two columns of 4 pixels, 1-pixel gaps
  CHECK(read.height == 2 * 5 + 1);
  std::vector<std::uint8_t> pixels(PNG_IMAGE_SIZE(read));
  REQUIRE(png_image_finish_read(&read, nullptr, pixels.data(), 0, nullptr));
  const auto expected = [&](int k, int y, int xx) {
    return static_cast<int>(std::lround((grid[k][y * 4 + xx].item<double>() + 1) / 2 * 255));
  };
  CHECK(pixels[1 * 11 + 1] == expected(0, 0, 0));            // first image, top-left
  CHECK(pixels[(6 + 3) * 11 + 1 + 3] == expected(2, 3, 3));  // third image (second row), bottom-right
  CHECK(pixels[0] == 255);                                   // a gap
}

// A denoiser whose prediction is a condition's factor times the noisy image (id -1: no condition):
// guided DDIM then has a closed form.
class ScalingDenoiser : public TinyDenoiser {
 public:
  static double factor(std::int64_t id) { return id < 0 ? 0.05 : 0.1 * double(id + 1); }
  std::vector<std::int64_t> seen;  // the condition ids of every call
  at::Tensor denoise(const at::Tensor& noisy, const at::Tensor&, const at::Tensor& condition) override {
    std::vector<double> factors;
    for (std::int64_t i = 0; i < condition.size(0); ++i) {
      seen.push_back(condition[i].item<std::int64_t>());
      factors.push_back(factor(condition[i].item<std::int64_t>()));
    }
    return noisy * torch::tensor(factors, noisy.options()).reshape({-1, 1, 1, 1});
  }
};

TEST_CASE("classifier-free guidance: eps(none) + w (eps(condition) - eps(none)) at every DDIM step",
          "[task][ddpm]") {
  ScalingDenoiser model;
  model.build({}, inflab::LoraConfig{2, 4.0, 0.0, {"*"}}, 1);
  inflab::SamplingOptions options;
  options.sampling_steps = 3;
  options.seed = 4;
  options.clip = 10.0;  // wide: the factors, not the clipping, decide
  const std::vector<std::int64_t> conditions{0, 2};
  for (double w : {1.0, 0.0, 3.0}) {
    INFO("guidance " << w);
    options.guidance = w;
    model.seen.clear();
    auto images = inflab::sample_images(model, conditions, {1, 2, 2}, options).to(torch::kDouble);
    auto generator = at::detail::createCPUGenerator(4);
    auto x = at::normal(0.0, 1.0, {2, 1, 2, 2}, generator).to(torch::kDouble);
    auto alpha_bar = inflab::ddpm_alphas_cumprod(1000).to(torch::kDouble);
    auto scale =
        torch::tensor(
            {ScalingDenoiser::factor(-1) + w * (ScalingDenoiser::factor(0) - ScalingDenoiser::factor(-1)),
             ScalingDenoiser::factor(-1) + w * (ScalingDenoiser::factor(2) - ScalingDenoiser::factor(-1))},
            torch::kDouble)
            .reshape({2, 1, 1, 1});
    for (auto [t, previous] : std::vector<std::pair<int, int>>{{999, 500}, {500, 0}, {0, -1}}) {
      const double a = alpha_bar[t].item<double>(),
                   a_prev = previous < 0 ? 1.0 : alpha_bar[previous].item<double>();
      auto eps = scale * x;
      auto x0 = ((x - std::sqrt(1 - a) * eps) / std::sqrt(a)).clamp(-10, 10);
      eps = (x - std::sqrt(a) * x0) / std::sqrt(1 - a);
      x = std::sqrt(a_prev) * x0 + std::sqrt(1 - a_prev) * eps;
    }
    CHECK(images.allclose(x, 1e-5, 1e-6));
    // Guided: every step predicts with and without the condition; unguided: with it only.
    const auto unconditional = std::count(model.seen.begin(), model.seen.end(), -1);
    CHECK(unconditional == (w == 1.0 ? 0 : 3 * 2));
  }
  options.guidance = -1;
  CHECK_THROWS_WITH(inflab::sample_images(model, conditions, {1, 2, 2}, options), Contains("guidance >= 0"));
  CHECK_NOTHROW(inflab::check_guidance(1.0, 0.0, "k"));
  CHECK_NOTHROW(inflab::check_guidance(2.0, 0.1, "k"));
  CHECK_THROWS_WITH(inflab::check_guidance(2.0, 0.0, "--guidance"),
                    Contains("--guidance = 2") && Contains("pretrain_condition_dropout is 0"));
}

TEST_CASE("inflab sample draws a row per condition from a fine-tuned ddpm_lora, bad names are errors",
          "[task][ddpm][cli]") {
  test::TempDir dir;
  auto file = dir.write("ddpm.toml", R"([experiment]
name = "ddpm"

[dataset]
plugin = "digits"
n_train = 20
n_validation = 4
n_pretrain = 40

[model]
plugin = "ddpm_lora"
channels = [8, 8]
embedding = 8
groups = 4

[task]
name = "denoising"

[training]
epochs = 1
pretrain_epochs = 1

[[estimator]]
plugin = "hessian_free"
)");
  const std::string bin = std::string(INFLAB_BINARY) + " --quiet sample " + file.string() + " --cache " +
                          (dir.path / "cache").string() + " --steps 3 ";
  auto ok =
      test::run_command(bin + "--condition 3 --condition 7 --count 5 --out " + (dir.path / "g.png").string());
  INFO(ok.output);
  REQUIRE(ok.exit_code == 0);
  png_image read{};
  read.version = PNG_IMAGE_VERSION;
  REQUIRE(png_image_begin_read_from_file(&read, (dir.path / "g.png").string().c_str()));
  CHECK(read.width == 5 * 9 + 1);   // 5 images of 8 pixels per row, 1-pixel gaps
  CHECK(read.height == 2 * 9 + 1);  // one row per condition
  png_image_free(&read);
  // --npy: the same images as floats, condition-major; --base: the pretrained model, which the
  // fine-tuning settings cannot change (the fine-tuned samples they do change).
  auto sample_npy = [&](const std::string& name, const std::string& extra) {
    const auto npy = dir.path / (name + ".npy");
    auto result = test::run_command(bin + "--condition 3 --condition 7 --count 5 --out " +
                                    (dir.path / (name + ".png")).string() + " --npy " + npy.string() + extra);
    INFO(result.output);
    REQUIRE(result.exit_code == 0);
    return inflab::load_npy(npy);
  };
  const auto tuned = sample_npy("tuned", "");
  CHECK(tuned.sizes() == at::IntArrayRef({10, 64}));
  const auto tuned_faster = sample_npy("tuned_lr", " --set training.learning_rate=0.05");
  const auto base = sample_npy("base", " --base");
  const auto base_faster = sample_npy("base_lr", " --base --set training.learning_rate=0.05");
  CHECK(at::equal(base, base_faster));
  CHECK_FALSE(at::allclose(tuned, tuned_faster));
  CHECK_FALSE(at::allclose(base, tuned));
  // Classifier-free guidance needs a base pretrained with condition dropout (another base); on it,
  // guidance 1 is the unguided sample and guidance 3 another one.
  auto unguidable = test::run_command(bin + "--guidance 2 --out " + (dir.path / "u.png").string());
  CHECK(unguidable.exit_code == 2);
  CHECK_THAT(unguidable.output, Contains("--guidance = 2") && Contains("pretrain_condition_dropout is 0"));
  const std::string dropout = " --base --set training.pretrain_condition_dropout=0.2";
  const auto dropped = sample_npy("dropped", dropout),
             guided = sample_npy("guided", dropout + " --guidance 3");
  CHECK(at::equal(sample_npy("dropped1", dropout + " --guidance 1"), dropped));
  CHECK_FALSE(at::allclose(dropped, base));
  CHECK_FALSE(at::allclose(guided, dropped));
  // Without --guidance: the experiment's [queries] guidance, as its generated queries use.
  CHECK(at::equal(sample_npy("queries3", dropout + " --set queries.guidance=3"), guided));
  auto bad = test::run_command(bin + "--condition 12 --out " + (dir.path / "h.png").string());
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.output, Contains("--condition 12") && Contains("conditions: 0, 1, 2"));
  CHECK_FALSE(std::filesystem::exists(dir.path / "h.png"));
}

TEST_CASE("[queries]: the fine-tuned denoiser's own images are the queries, reproducible from the cache",
          "[task][ddpm]") {
  test::TempDir dir;
  const std::string text = test::kTinyDenoiserExperiment + R"(
[queries]
generated_per_class = 2
sampling_steps = 4
seed = 5

[[estimator]]
plugin = "hessian_free"

[evaluation]
mode = "pairwise"
metrics = ["class_detection"]
)";
  auto file = dir.write("styles.toml", text);
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  inflab::RunPaths paths{dir.path / "results", dir.path / "cache"};
  auto config = inflab::load_experiment(file, {}, registry).at(0);
  auto outcome = inflab::run_experiment(config, registry, paths);
  const auto run = dir.path / "results" / "styles" / "run";
  auto queries = inflab::load_npy(run / "queries.npy");
  REQUIRE(queries.size(0) == 6);  // 3 styles x 2
  CHECK(std::filesystem::exists(run / "queries.png"));
  CHECK(inflab::load_npy(run / "scores_hessian_free.npy").sizes() == at::IntArrayRef({18, 6}));
  // The training images beside the scores, in their row order: the dataset's own training split.
  {
    auto splits =
        registry
            .create_as<inflab::Dataset>(inflab::PluginKind::Dataset, "styled_digits", config.dataset.options)
            ->load();
    CHECK(at::equal(inflab::load_npy(run / "train.npy"), splits.train.inputs));
  }
  // The same images again from the cached fine-tuned model, sampled with the same settings.
  auto tuned = inflab::finetuned_model(config, registry, paths);
  inflab::SamplingOptions options;
  options.sampling_steps = 4;
  options.seed = 5;
  CHECK(inflab::sample_images(*tuned.model, {10, 10, 11, 11, 12, 12}, tuned.example_shape, options)
            .reshape(queries.sizes())
            .allclose(queries, 1e-5, 1e-6));
  // What is generated is part of the gradients' key; a classifier cannot generate.
  auto more = inflab::load_experiment(file, {"queries.generated_per_class=3"}, registry).at(0);
  CHECK(inflab::stage_key("gradients", more) != inflab::stage_key("gradients", config));
  CHECK(inflab::stage_key("finetune", more) == inflab::stage_key("finetune", config));
  REQUIRE_THROWS_WITH(inflab::load_experiment(file, {"task.name=classification"}, registry),
                      Contains("[queries]") && Contains("denoising"));
  // Guided queries: guidance 1 is the key of before (no guidance); more needs condition dropout,
  // which only a denoiser's pretraining has, and which changes the base.
  auto unguided = inflab::load_experiment(file, {"queries.guidance=1.0"}, registry).at(0);
  CHECK(inflab::stage_key("gradients", unguided) == inflab::stage_key("gradients", config));
  REQUIRE_THROWS_WITH(inflab::load_experiment(file, {"queries.guidance=2"}, registry),
                      Contains("queries.guidance") && Contains("pretrain_condition_dropout is 0"));
  auto guided = inflab::load_experiment(
                    file, {"queries.guidance=2", "training.pretrain_condition_dropout=0.1"}, registry)
                    .at(0);
  CHECK(inflab::stage_key("base", guided) != inflab::stage_key("base", config));
  auto dropped_only =
      inflab::load_experiment(file, {"training.pretrain_condition_dropout=0.1"}, registry).at(0);
  CHECK(inflab::stage_key("gradients", guided) != inflab::stage_key("gradients", dropped_only));
  REQUIRE_THROWS_WITH(
      inflab::load_experiment(file, {"task.name=classification", "training.pretrain_condition_dropout=0.1"},
                              registry),
      Contains("training.pretrain_condition_dropout") && Contains("task denoising"));
}

TEST_CASE("tasks are chosen by name, and a wrong name or label noise without classes is an error", "[task]") {
  CHECK(inflab::make_task("classification", task_options({1}, 0))->name() == "classification");
  CHECK_THROWS_WITH(inflab::make_task("causal-lm", task_options({1}, 0)),
                    Contains("did you mean 'causal_lm'"));
  CHECK_THROWS_WITH(inflab::make_task("denoising", task_options({1000}, 0)), Contains("outside [0, 1000)"));

  test::TempDir dir;
  inflab::Registry registry;
  registry.load_directory(test::plugin_dir());
  auto file = dir.write("t.toml", R"([experiment]
name = "t"
[dataset]
plugin = "fashion_mnist"
label_noise = 0.2
[model]
plugin = "mlp_lora"
[task]
name = "causal_lm"
[[estimator]]
plugin = "datainf"
)");
  CHECK_THROWS_WITH(inflab::load_experiment(file, {}, registry),
                    Contains("t.toml:5:") && Contains("label noise"));
  CHECK_THROWS_WITH(inflab::load_experiment(file, {"task.name=regression"}, registry),
                    Contains("unknown task \"regression\""));
}
