// Per-example gradient extraction: the batched engine (one forward/backward per batch of 64,
// einsum over captured activations) against a per-example autograd loop, for the shipped
// models on real-sized inputs. Reports examples/s; the engine's matmul-heavy part is compared
// with the float32 matmul peak measured in the same binary.
//   ./inflab bench-gradients
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include "bench_common.hpp"
#include "inflab/gradients.hpp"
#include "inflab/lora.hpp"
#include "inflab/registry.hpp"
#include "inflab/runtime.hpp"
#include "inflab/task.hpp"

namespace {

using bench::registry;

std::unique_ptr<inflab::Model> model(const std::string& name, std::int64_t rank) {
  auto options =
      inflab::default_options(name, registry().find(inflab::PluginKind::Model, name).info->options());
  auto m = registry().create_as<inflab::Model>(inflab::PluginKind::Model, name, options);
  m->build({{784}, 10}, inflab::LoraConfig{rank, static_cast<double>(rank), 0.0, {"*"}}, 0);
  torch::NoGradGuard no_grad;
  for (auto* layer : m->lora_layers())
    if (layer->has_adapter()) layer->lora_b().normal_(0, 0.1);
  return m;
}

BENCHMARK(bench::matmul_peak)->Unit(benchmark::kMillisecond)->UseRealTime();

void engine(benchmark::State& state, const std::string& name) {
  auto m = model(name, state.range(0));
  const int64_t n = 512;
  torch::manual_seed(0);
  auto x = torch::rand({n, 784}), y = torch::randint(0, 10, {n}, torch::kLong);
  for (auto _ : state) benchmark::DoNotOptimize(inflab::per_example_gradients(*m, x, y, 64));
  state.counters["examples/s"] =
      benchmark::Counter(static_cast<double>(n * state.iterations()), benchmark::Counter::kIsRate);
}

void loop(benchmark::State& state, const std::string& name) {
  auto m = model(name, state.range(0));
  m->set_training(false);
  std::vector<torch::Tensor> params;
  for (auto* layer : m->lora_layers())
    if (layer->has_adapter()) params.push_back(layer->lora_a()), params.push_back(layer->lora_b());
  const int64_t n = 64;
  torch::manual_seed(0);
  auto x = torch::rand({n, 784}), y = torch::randint(0, 10, {n}, torch::kLong);
  for (auto _ : state)
    for (int64_t i = 0; i < n; ++i) {
      auto loss = torch::nn::functional::cross_entropy(m->forward(x.narrow(0, i, 1)), y.narrow(0, i, 1));
      benchmark::DoNotOptimize(torch::autograd::grad({loss}, params));
    }
  state.counters["examples/s"] =
      benchmark::Counter(static_cast<double>(n * state.iterations()), benchmark::Counter::kIsRate);
}

// MiniLM: per-example gradients (engine) and one LoRA fine-tuning step, batch 32, rank 4, on
// random token ids of exactly `length` real tokens (no padding). Useful flops: a forward pass
// costs 2 x 10.6M matmul flops per token (6 layers of 4 x 384^2 + 2 x 384 x 1536 weights) plus
// attention (4 L 384 per token and layer); the backward needs input gradients only (frozen
// weights), about as much again, so a forward+backward is counted as 2 forwards.
double minilm_flops(std::int64_t batch, std::int64_t length) {
  const double per_token = 2.0 * 6 * (4.0 * 384 * 384 + 2.0 * 384 * 1536) + 6 * 4.0 * length * 384;
  return 2.0 * per_token * static_cast<double>(batch * length);
}

std::unique_ptr<inflab::Model> minilm(std::int64_t length) {
  auto options = inflab::default_options(
      "minilm_lora", registry().find(inflab::PluginKind::Model, "minilm_lora").info->options());
  options.set("max_length", length);
  auto m = registry().create_as<inflab::Model>(inflab::PluginKind::Model, "minilm_lora", options);
  m->build({{3, length}, 2},
           inflab::LoraConfig{4, 4.0, 0.0, {"*attention.self.query", "*attention.self.value", "classifier"}},
           0);
  return m;
}

torch::Tensor token_batch(std::int64_t batch, std::int64_t length) {
  torch::manual_seed(0);
  auto inputs = torch::zeros({batch, 3, length}, torch::kLong);
  inputs.select(1, 0).copy_(torch::randint(1000, 30000, {batch, length}, torch::kLong));
  inputs.select(1, 2).fill_(1);
  return inputs;
}

void minilm_gradients(benchmark::State& state) {
  const std::int64_t length = state.range(0), batch = 32;
  auto m = minilm(length);
  auto x = token_batch(batch, length);
  auto y = torch::randint(0, 2, {batch}, torch::kLong);
  for (auto _ : state) benchmark::DoNotOptimize(inflab::per_example_gradients(*m, x, y, batch));
  state.counters["examples/s"] =
      benchmark::Counter(static_cast<double>(batch * state.iterations()), benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(minilm_flops(batch, length) * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

void minilm_finetune_step(benchmark::State& state) {
  const std::int64_t length = state.range(0), batch = 32;
  auto m = minilm(length);
  auto x = token_batch(batch, length);
  auto y = torch::randint(0, 2, {batch}, torch::kLong);
  std::vector<torch::Tensor> params;
  for (auto* layer : m->lora_layers())
    if (layer->has_adapter()) params.push_back(layer->lora_a()), params.push_back(layer->lora_b());
  torch::optim::Adam optimizer(params, torch::optim::AdamOptions(1e-3));
  m->set_training(true);
  for (auto _ : state) {
    optimizer.zero_grad();
    torch::nn::functional::cross_entropy(m->forward(x), y).backward();
    optimizer.step();
  }
  state.counters["examples/s"] =
      benchmark::Counter(static_cast<double>(batch * state.iterations()), benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(minilm_flops(batch, length) * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

// SmolLM2-135M with LoRA r = 8 on q and v (the paper's LLM setting), batch 8 of `length` tokens,
// the causal-LM loss on the last 16 positions (an answer after a prompt). Flops: 2 x 106M matmul
// weights per token (30 blocks of q, k, v, o and the SwiGLU) plus attention, plus the 49152 x 576
// output layer at the 16 scored positions; a forward+backward counts as 2 forwards (frozen base).
double smollm2_flops(std::int64_t batch, std::int64_t length) {
  const double per_token =
      2.0 * 30 * (2.0 * 576 * 576 + 2.0 * 576 * 192 + 3.0 * 576 * 1536) + 30 * 4.0 * length * 576;
  return batch * (per_token * static_cast<double>(length) + 2.0 * 576 * 49152 * 16);
}

// A model with its task and one batch: what the forward, backward and gradient benchmarks run.
struct TaskBatch {
  std::unique_ptr<inflab::Model> model;
  std::unique_ptr<inflab::Task> task;
  inflab::Batch batch;
};
TaskBatch smollm2(std::int64_t length) {
  TaskBatch out;
  auto options = inflab::default_options(
      "smollm2_lora", registry().find(inflab::PluginKind::Model, "smollm2_lora").info->options());
  out.model = registry().create_as<inflab::Model>(inflab::PluginKind::Model, "smollm2_lora", options);
  out.model->build({}, inflab::LoraConfig{8, 32.0, 0.0, {"*.attn_q", "*.attn_v"}}, 0);
  out.task = inflab::make_task("causal_lm", inflab::default_options("[task]", inflab::task_option_specs()));
  torch::manual_seed(0);
  const std::int64_t batch = 8;
  auto ids = torch::randint(100, 40000, {batch, length}, torch::kLong);
  auto targets = torch::full({batch, length}, -100, torch::kLong);
  targets.narrow(1, length - 17, 16).copy_(ids.narrow(1, length - 16, 16));
  out.batch = {ids, targets, torch::arange(batch)};
  return out;
}

void smollm2_counters(benchmark::State& state, std::int64_t length, double passes) {
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(8 * length * state.iterations()), benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] = benchmark::Counter(passes * smollm2_flops(8, length) * state.iterations() / 1e9,
                                                 benchmark::Counter::kIsRate);
}

void smollm2_forward(benchmark::State& state) {
  auto s = smollm2(state.range(0));
  torch::NoGradGuard no_grad;
  for (auto _ : state) benchmark::DoNotOptimize(s.task->summed_loss(*s.model, s.batch));
  smollm2_counters(state, state.range(0), 1);
}

void smollm2_forward_backward(benchmark::State& state) {
  auto s = smollm2(state.range(0));
  s.model->set_training(false);
  for (auto _ : state) s.task->summed_loss(*s.model, s.batch).backward();
  smollm2_counters(state, state.range(0), 2);
}

void smollm2_gradients(benchmark::State& state) {
  auto s = smollm2(state.range(0));
  for (auto _ : state)
    benchmark::DoNotOptimize(
        inflab::per_example_gradients(*s.model, *s.task, s.batch, {8, "", false, false, {}}));
  smollm2_counters(state, state.range(0), 2);
}

// The same with the factorised (LoGra) projection to state.range(1) values per block; against
// smollm2/gradients in the same binary this is the projection's cost. The matrices are drawn on
// the first iteration and kept, as an extraction of many batches keeps them.
void smollm2_projected_gradients(benchmark::State& state) {
  auto s = smollm2(state.range(0));
  const inflab::Projection projection{inflab::Projection::Kind::factorised, state.range(1), 0};
  for (auto _ : state)
    benchmark::DoNotOptimize(
        inflab::per_example_gradients(*s.model, *s.task, s.batch, {8, "", false, false, {}, projection}));
  smollm2_counters(state, state.range(0), 2);
}

// ddpm_lora as the diffusion studies run it: channels [16, 32], embedding 32, LoRA rank 4 on every
// convolution and attention projection, 8 x 8 images in 13 conditions, the denoising loss at the
// paper's 6 timesteps (each example is 6 rows of the U-Net's batch), gradient batch 16.
TaskBatch ddpm(std::int64_t batch) {
  TaskBatch out;
  auto options = inflab::default_options(
      "ddpm_lora", registry().find(inflab::PluginKind::Model, "ddpm_lora").info->options());
  options.set("channels", std::vector<std::int64_t>{16, 32});
  options.set("embedding", std::int64_t{32});
  out.model = registry().create_as<inflab::Model>(inflab::PluginKind::Model, "ddpm_lora", options);
  out.model->build({{64}, 13}, inflab::LoraConfig{4, 4.0, 0.0, {"*"}}, 0);
  {
    torch::NoGradGuard no_grad;
    for (auto* layer : out.model->lora_layers())
      if (layer->has_adapter()) layer->lora_b().normal_(0, 0.1);
  }
  out.task = inflab::make_task("denoising", inflab::default_options("[task]", inflab::task_option_specs()));
  torch::manual_seed(0);
  out.batch = {torch::rand({batch, 64}) * 2 - 1, torch::randint(10, 13, {batch}, torch::kLong),
               torch::arange(batch)};
  return out;
}

void ddpm_counters(benchmark::State& state) {
  state.counters["examples/s"] = benchmark::Counter(static_cast<double>(state.range(0) * state.iterations()),
                                                    benchmark::Counter::kIsRate);
}

void ddpm_forward(benchmark::State& state) {
  auto d = ddpm(state.range(0));
  d.model->set_training(false);
  torch::NoGradGuard no_grad;
  for (auto _ : state) benchmark::DoNotOptimize(d.task->summed_loss(*d.model, d.batch));
  ddpm_counters(state);
}

void ddpm_forward_backward(benchmark::State& state) {
  auto d = ddpm(state.range(0));
  d.model->set_training(false);
  for (auto _ : state) d.task->summed_loss(*d.model, d.batch).backward();
  ddpm_counters(state);
}

void ddpm_gradients(benchmark::State& state) {
  auto d = ddpm(state.range(0));
  for (auto _ : state)
    benchmark::DoNotOptimize(
        inflab::per_example_gradients(*d.model, *d.task, d.batch, {state.range(0), "", false, false, {}}));
  ddpm_counters(state);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = inflab::configure_threads(0);
  benchmark::AddCustomContext("libtorch_threads", std::to_string(threads));
  for (std::string name : {"mlp_lora", "cnn_lora"}) {
    benchmark::RegisterBenchmark(("engine/" + name).c_str(), [name](benchmark::State& s) { engine(s, name); })
        ->Arg(1)
        ->Arg(4)
        ->Arg(8)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark(("loop/" + name).c_str(), [name](benchmark::State& s) { loop(s, name); })
        ->Arg(1)
        ->Arg(4)
        ->Arg(8)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  benchmark::RegisterBenchmark("minilm/gradients", minilm_gradients)
      ->Arg(64)
      ->Arg(128)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("minilm/finetune_step", minilm_finetune_step)
      ->Arg(64)
      ->Arg(128)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  for (auto [name, function] : std::vector<std::pair<std::string, void (*)(benchmark::State&)>>{
           {"smollm2/forward", smollm2_forward},
           {"smollm2/forward_backward", smollm2_forward_backward},
           {"smollm2/gradients", smollm2_gradients}})
    benchmark::RegisterBenchmark(name.c_str(), function)
        ->Arg(64)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  benchmark::RegisterBenchmark("smollm2/projected_gradients", smollm2_projected_gradients)
      ->Args({64, 256})
      ->Args({64, 1024})
      ->Args({64, 4096})
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  for (auto [name, function] : std::vector<std::pair<std::string, void (*)(benchmark::State&)>>{
           {"ddpm/forward", ddpm_forward},
           {"ddpm/forward_backward", ddpm_forward_backward},
           {"ddpm/gradients", ddpm_gradients}})
    benchmark::RegisterBenchmark(name.c_str(), function)
        ->Arg(16)
        ->Arg(64)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
}
