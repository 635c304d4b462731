// The fine-tuning loop's schedule options (gradient accumulation, linear decay, clipping) against
// the updates computed by hand from autograd gradients of the full objective.
#include <torch/torch.h>
// clang-format off
#include <catch2/catch.hpp>
// clang-format on

#include "inflab/model.hpp"
#include "stages/stages.hpp"

namespace {

// A model with no layers: train() only switches its mode; the loss closes over the weights.
class NoLayers : public inflab::Model {
 public:
  void build(const inflab::DataShape&, const inflab::LoraConfig&, std::uint64_t) override {}
  at::Tensor forward(const at::Tensor& inputs) override { return inputs; }
  inflab::NamedTensors base_parameters() override { return {}; }
  std::vector<inflab::LoraLayer*> lora_layers() override { return {}; }
  void set_training(bool) override {}
};

struct Regression {
  torch::Tensor x = torch::randn({12, 3}, torch::kDouble), y = torch::randn({12}, torch::kDouble);
  torch::Tensor start = torch::randn({3}, torch::kDouble);
  inflab::Batch examples{x, y, torch::arange(12)};
  torch::Tensor loss(const torch::Tensor& w, const inflab::Batch& b) const {
    return (b.inputs.matmul(w) - b.targets).square().mean();
  }
  torch::Tensor full_gradient(const torch::Tensor& at) const {
    torch::Tensor w = at.detach().clone().requires_grad_(true);
    return torch::autograd::grad({loss(w, examples)}, {w})[0];
  }
  torch::Tensor trained(inflab::TrainingSchedule schedule) const {
    NoLayers model;
    torch::Tensor w = start.clone().requires_grad_(true);
    schedule.show_progress = false;
    inflab::train(
        model, [&](const inflab::Batch& b) { return loss(w, b); }, {w}, examples, schedule);
    return w.detach();
  }
};

}  // namespace

TEST_CASE("gradient accumulation: 3 batches of 4 summed and divided by 3 are one step on all 12",
          "[training]") {
  torch::manual_seed(5);
  Regression r;
  inflab::TrainingSchedule accumulated;
  accumulated.epochs = 1, accumulated.batch_size = 4, accumulated.accumulation_steps = 3;
  accumulated.learning_rate = 0.05;
  inflab::TrainingSchedule whole = accumulated;
  whole.batch_size = 12, whole.accumulation_steps = 1;
  CHECK(torch::allclose(r.trained(accumulated), r.trained(whole), 1e-12, 1e-12));
  // Without accumulation the same batches are three steps: not the same weights.
  inflab::TrainingSchedule three = accumulated;
  three.accumulation_steps = 1;
  CHECK_FALSE(torch::allclose(r.trained(three), r.trained(whole), 1e-6, 1e-6));
}

TEST_CASE("linear decay and gradient clipping follow Hugging Face's rule, step by step", "[training]") {
  torch::manual_seed(6);
  Regression r;
  inflab::TrainingSchedule schedule;
  schedule.epochs = 2, schedule.batch_size = 12, schedule.optimizer = "sgd";  // momentum 0.9
  schedule.learning_rate = 0.1, schedule.linear_decay = true, schedule.max_grad_norm = 0.5;
  auto clipped = [&](const torch::Tensor& g) {
    const double norm = g.norm().item<double>();
    return norm > 0.5 ? g * (0.5 / (norm + 1e-6)) : g;
  };
  // Step 0 at the full rate, step 1 at half of it (2 steps in all), with momentum 0.9.
  torch::Tensor g0 = clipped(r.full_gradient(r.start));
  REQUIRE(r.full_gradient(r.start).norm().item<double>() > 0.5);  // the clip is exercised
  torch::Tensor w1 = r.start - 0.1 * g0;
  torch::Tensor g1 = clipped(r.full_gradient(w1));
  torch::Tensor w2 = w1 - 0.05 * (0.9 * g0 + g1);
  CHECK(torch::allclose(r.trained(schedule), w2, 1e-10, 1e-12));
}
