// The fine-tuning loop's schedule options (gradient accumulation, linear decay, clipping) against
// the updates computed by hand from autograd gradients of the full objective.
#include <torch/torch.h>
// clang-format off
#include <catch2/catch.hpp>
// clang-format on

#include <filesystem>
#include <fstream>

#include "helpers.hpp"
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

// A training whose loss draws from the global generator (as the denoising task's timesteps and
// noise do) and can stop the process before its call number `stop_at`.
struct Interruptible {
  const Regression& r;
  int calls = 0, stop_at = -1;
  torch::Tensor run(const inflab::TrainingSchedule& schedule, torch::Tensor w) {
    NoLayers model;
    w.requires_grad_(true);
    calls = 0;
    inflab::train(
        model,
        [&](const inflab::Batch& b) {
          if (calls++ == stop_at) throw std::runtime_error("killed");
          return (b.inputs.matmul(w) - b.targets + 0.1 * torch::randn({b.size()}, torch::kDouble))
              .square()
              .mean();
        },
        {w}, r.examples, schedule);
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

TEST_CASE("a training interrupted after an epoch resumes from its state file to the same bits",
          "[training]") {
  torch::manual_seed(7);
  Regression r;
  test::TempDir dir;
  inflab::TrainingSchedule schedule;
  schedule.epochs = 3, schedule.batch_size = 4, schedule.learning_rate = 0.05;  // Adam: its moments matter
  Interruptible training{r};
  int& calls = training.calls;
  int& stop_at = training.stop_at;
  auto run = [&](const inflab::TrainingSchedule& s, torch::Tensor w) { return training.run(s, w); };
  schedule.show_progress = false;
  torch::manual_seed(11);
  const torch::Tensor reference = run(schedule, r.start.clone());

  inflab::TrainingSchedule resumable = schedule;
  resumable.resume_file = dir.path / "state.pt";
  for (int stop : {4, 7}) {  // in the second epoch (state after 1), in the third (state after 2)
    INFO("stopped at call " << stop);
    torch::manual_seed(11);
    stop_at = stop;
    REQUIRE_THROWS_WITH(run(resumable, r.start.clone()), "killed");
    REQUIRE(std::filesystem::exists(resumable.resume_file));
    // A new process: other weights in memory, another global generator state.
    torch::manual_seed(999);
    stop_at = -1;
    const torch::Tensor resumed = run(resumable, torch::zeros({3}, torch::kDouble));
    CHECK(calls == (stop == 4 ? 6 : 3));  // only the epochs after the saved one ran
    CHECK(torch::equal(resumed, reference));
    CHECK_FALSE(std::filesystem::exists(resumable.resume_file));  // removed at the end
  }
  // A damaged state file is not trusted: the training starts afresh (and warns).
  torch::manual_seed(11);
  stop_at = 7;
  REQUIRE_THROWS(run(resumable, r.start.clone()));
  std::ofstream(resumable.resume_file, std::ios::binary | std::ios::app) << "x";
  torch::manual_seed(11);
  stop_at = -1;
  CHECK(torch::equal(run(resumable, r.start.clone()), reference));
  CHECK(calls == 9);
}

TEST_CASE("pretrain_ema: the weights end as the warmed-up moving average of every step's weights",
          "[training]") {
  torch::manual_seed(8);
  Regression r;
  inflab::TrainingSchedule schedule;
  schedule.epochs = 6, schedule.batch_size = 12, schedule.learning_rate = 0.1;  // one step an epoch
  schedule.optimizer = "sgd", schedule.show_progress = false;
  // The trajectory without averaging: the weights after each step (after_epoch sees them).
  std::vector<torch::Tensor> trajectory;
  torch::Tensor w = r.start.clone().requires_grad_(true);
  {
    inflab::TrainingSchedule plain = schedule;
    plain.after_epoch = [&](std::int64_t, std::int64_t, double) { trajectory.push_back(w.detach().clone()); };
    NoLayers model;
    inflab::train(
        model, [&](const inflab::Batch& b) { return r.loss(w, b); }, {w}, r.examples, plain);
  }
  REQUIRE(trajectory.size() == 6);
  CHECK(torch::equal(w.detach(), trajectory.back()));  // without averaging: the last weights
  // By hand: average = d average + (1 - d) w_s, d = min(0.9, (1 + s) / (10 + s)), from the start.
  torch::Tensor average = r.start.clone();
  for (std::size_t s = 1; s <= trajectory.size(); ++s) {
    const double d = std::min(0.9, (1.0 + double(s)) / (10.0 + double(s)));
    average = d * average + (1 - d) * trajectory[s - 1];
  }
  schedule.ema_decay = 0.9;
  const torch::Tensor averaged = r.trained(schedule);
  CHECK(averaged.allclose(average, 1e-12, 1e-14));
  CHECK_FALSE(averaged.allclose(trajectory.back(), 1e-6, 1e-6));
}

TEST_CASE("a training with a moving average resumes to the same bits (the average is in the state)",
          "[training]") {
  torch::manual_seed(9);
  Regression r;
  test::TempDir dir;
  inflab::TrainingSchedule schedule;
  schedule.epochs = 3, schedule.batch_size = 4, schedule.learning_rate = 0.05, schedule.ema_decay = 0.95;
  schedule.show_progress = false;
  Interruptible training{r};
  torch::manual_seed(11);
  const torch::Tensor reference = training.run(schedule, r.start.clone());
  inflab::TrainingSchedule resumable = schedule;
  resumable.resume_file = dir.path / "state.pt";
  torch::manual_seed(11);
  training.stop_at = 7;  // in the third epoch: the state after two
  REQUIRE_THROWS_WITH(training.run(resumable, r.start.clone()), "killed");
  torch::manual_seed(999);  // a new process
  training.stop_at = -1;
  CHECK(torch::equal(training.run(resumable, torch::zeros({3}, torch::kDouble)), reference));
  CHECK(training.calls == 3);
  // A state saved without an average does not fit a training with one: it starts afresh.
  inflab::TrainingSchedule plain = resumable;
  plain.ema_decay = 0;
  training.stop_at = 7;
  REQUIRE_THROWS(training.run(plain, r.start.clone()));
  torch::manual_seed(11);
  training.stop_at = -1;
  CHECK(torch::equal(training.run(resumable, r.start.clone()), reference));
  CHECK(training.calls == 9);
}
