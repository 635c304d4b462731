#include "inflab/gradients.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "inflab/distributed.hpp"
#include "inflab/error.hpp"
#include "inflab/io.hpp"
#include "inflab/lora.hpp"
#include "inflab/progress.hpp"
#include "inflab/safetensors.hpp"

namespace fs = std::filesystem;

namespace inflab {

GradientBlocks per_example_gradients(Model& model, const at::Tensor& inputs, const at::Tensor& labels,
                                     std::int64_t batch_size, const std::string& progress_label, bool factors,
                                     const BlockAllocator& allocate) {
  auto task = make_classification_task();
  Batch examples{inputs, labels, torch::arange(inputs.size(0), torch::kLong)};
  return per_example_gradients(model, *task, examples,
                               {batch_size, progress_label, factors, false, allocate});
}

GradientBlocks per_example_gradients(Model& model, const Task& task, const Batch& examples,
                                     const GradientRequest& request) {
  const std::int64_t n = examples.size(), batch_size = request.batch_size;
  const bool factors = request.factors;
  // Rows per example kept apart (Task::gradient_parts): a block is their gradients side by side.
  const std::int64_t parts = task.gradient_parts();
  if (parts > 1 && factors)
    throw Error(fmt::format(
        "task {}: its blocks concatenate {} per-row gradients (task.timestep_gradients = \"concatenate\"), "
        "which have no Kronecker factors: use estimators without them (datainf, hessian_free, exact, lissa, "
        "cg), or timestep_gradients = \"sum\" for kfac and ekfac",
        task.name(), parts));
  const BlockAllocator& allocate = request.allocate;
  std::vector<LoraLayer*> layers;
  for (auto* layer : model.lora_layers())
    if (layer->has_adapter()) layers.push_back(layer);
  if (layers.empty())
    throw Error("per_example_gradients: the model has no LoRA adapters (check model.lora.targets)");

  // Per layer, the projection of each block (undefined: none): a dense matrix of the whole block
  // (gaussian, sparse), or of its wide side (factorised: A's input, B's output).
  const Projection& projection = request.projection;
  const bool factorised = projection.kind == Projection::Kind::factorised;
  std::vector<torch::Tensor> project_a(layers.size()), project_b(layers.size());
  GradientBlocks blocks;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    LoraLayer& layer = *layers[l];
    const auto in = layer.lora_a().size(1), rank = layer.rank(), out = layer.lora_b().size(0);
    const std::string name_a = layer.name() + ".lora_A", name_b = layer.name() + ".lora_B";
    const ProjectedLayer shape = projected_layer(projection, in, rank, out, parts);
    const std::int64_t width_a = shape.width_a, width_b = shape.width_b;
    const std::int64_t side_in = shape.side_in, side_out = shape.side_out;  // the factors' sides
    if (shape.side_in < in) project_a[l] = projection_matrix(projection, name_a, in, side_in);
    if (shape.side_out < out) project_b[l] = projection_matrix(projection, name_b, out, side_out);
    if (shape.dense_a) project_a[l] = projection_matrix(projection, name_a, parts * rank * in, width_a);
    if (shape.dense_b) project_b[l] = projection_matrix(projection, name_b, parts * out * rank, width_b);
    auto make = [&](const std::string& name, std::int64_t cols) {
      return allocate ? allocate(name, n, cols) : torch::empty({n, cols});
    };
    blocks.push_back({name_a, make(name_a, width_a)});
    blocks.push_back({name_b, make(name_b, width_b)});
    if (factors) {  // accumulated in float64, normalised at the end
      // A block projected as a whole has no Kronecker structure left: no factors.
      if (!shape.dense_a) {
        blocks[blocks.size() - 2].activation_covariance = torch::zeros({side_in, side_in}, torch::kDouble);
        blocks[blocks.size() - 2].gradient_covariance = torch::zeros({rank, rank}, torch::kDouble);
      }
      if (!shape.dense_b) {
        blocks.back().activation_covariance = torch::zeros({rank, rank}, torch::kDouble);
        blocks.back().gradient_covariance = torch::zeros({side_out, side_out}, torch::kDouble);
      }
    }
  }
  std::vector<std::int64_t> tokens(layers.size(), 0);  // per layer: a pooled head sees fewer

  model.set_training(false);  // LoRA dropout off: gradients of the deterministic model
  for (auto* layer : layers) layer->capture = true;
  TextEncoder* token_model = capability<TextEncoder>(model);  // padding masks, when it has tokens
  Progress progress(request.progress_label, n, "examples");
  for (std::int64_t start = 0; start < n; start += batch_size) {
    const std::int64_t count = std::min(batch_size, n - start);
    const Batch batch = examples.slice(start, count);
    // Sum, not mean: each example's gradient is that of its own loss. The task runs the model
    // once; a task feeding several rows per example (denoising timesteps) does so example-major,
    // and the reshape to (count, positions, features) below folds them into the example.
    torch::Tensor loss = request.measure ? task.measurement(model, batch) : task.summed_loss(model, batch);
    torch::Tensor mask = token_model ? token_model->token_mask(batch.inputs) : torch::Tensor();
    if (mask.defined() && parts > 1)
      throw Error(
          fmt::format("task {} keeps {} rows per example apart, which a token model's padding mask "
                      "does not describe",
                      task.name(), parts));
    if (mask.defined() && (mask.dim() != 2 || mask.size(0) != count))
      throw Error(fmt::format("the model's token mask has shape ({}); expected ({}, positions)",
                              fmt::join(mask.sizes(), ", "), count));
    std::vector<torch::Tensor> wrt;
    for (auto* layer : layers) {
      wrt.push_back(layer->captured_hidden);
      wrt.push_back(layer->captured_output);
    }
    auto grads = torch::autograd::grad({loss}, wrt);
    for (std::size_t l = 0; l < layers.size(); ++l) {
      LoraLayer& layer = *layers[l];
      // Token models have inputs (batch, ..., features): sum over every position in between.
      // With parts > 1 each example's rows are split into its parts (example-major, part-minor).
      auto flat = [&](const torch::Tensor& t) { return t.reshape({count * parts, -1, t.size(-1)}); };
      torch::Tensor input = flat(layer.captured_input.detach());
      torch::Tensor hidden = flat(layer.captured_hidden.detach());
      torch::Tensor grad_hidden = flat(grads[2 * l]);
      torch::Tensor grad_output = flat(grads[2 * l + 1]);
      if (factorised) {  // LoGra: project the wide sides; the full gradient is never formed
        if (project_a[l].defined()) input = input.matmul(project_a[l]);
        if (project_b[l].defined()) grad_output = grad_output.matmul(project_b[l]);
      }
      std::int64_t real_tokens = input.size(0) * input.size(1);  // statistics: parts == 1
      torch::Tensor token_weight;  // (batch, positions, 1) 0/1 when the layer sees padding
      // Padding leaves the gradients and the statistics. A layer after pooling has one position.
      if (mask.defined() && input.size(1) > 1) {
        if (mask.size(1) != input.size(1))
          throw Error(
              fmt::format("layer '{}' sees {} positions but the model's token mask has {}: "
                          "token_mask() must cover the positions of forward()",
                          layer.name(), input.size(1), mask.size(1)));
        // Masking the output gradients suffices for the gradients; the statistics mask inputs too.
        token_weight = mask.to(torch::kFloat).unsqueeze(2);
        grad_hidden = grad_hidden * token_weight, grad_output = grad_output * token_weight;
        real_tokens = mask.sum().item<std::int64_t>();
      }
      // dL_i/dA = sum_t dL/dh_t x_t^T ; dL_i/dB = sum_t dL/du_t h_t^T (u = B h, scale inside dL/du)
      auto store = [&](std::size_t b, const torch::Tensor& dense_projection, const torch::Tensor& gradient) {
        torch::Tensor rows = gradient.reshape({count, -1});
        if (!factorised && dense_projection.defined()) rows = rows.mm(dense_projection);
        blocks[b].values.narrow(0, start, count).copy_(rows);
      };
      store(2 * l, project_a[l], torch::einsum("btr,bti->bri", {grad_hidden, input}));
      store(2 * l + 1, project_b[l], torch::einsum("bto,btr->bor", {grad_output, hidden}));
      if (factors) {
        // lora_A maps x -> h (activation x, output gradient dL/dh); lora_B maps h -> u.
        auto second_moment = [](const torch::Tensor& t) {
          auto flat = t.reshape({-1, t.size(-1)}).to(torch::kDouble);
          return flat.t().mm(flat);
        };
        auto per_example_token_sum = [](const torch::Tensor& t) {  // sum_i sum_t delta delta^T
          auto d = t.to(torch::kDouble);
          return torch::einsum("bto,btp->op", {d, d});
        };
        tokens[l] += real_tokens;
        auto real = [&](const torch::Tensor& t) { return token_weight.defined() ? t * token_weight : t; };
        if (blocks[2 * l].activation_covariance.defined()) {
          blocks[2 * l].activation_covariance.add_(second_moment(real(input)));
          blocks[2 * l].gradient_covariance.add_(per_example_token_sum(grad_hidden));
        }
        if (blocks[2 * l + 1].activation_covariance.defined()) {
          blocks[2 * l + 1].activation_covariance.add_(second_moment(real(hidden)));
          blocks[2 * l + 1].gradient_covariance.add_(per_example_token_sum(grad_output));
        }
      }
    }
    for (auto* layer : layers) {
      layer->captured_input = layer->captured_hidden = layer->captured_output = torch::Tensor();
    }
    progress.advance(count);
  }
  for (auto* layer : layers) layer->capture = false;
  for (const auto& block : blocks) {
    if (auto bad = nonfinite_rows(block.values); bad.count > 0)
      throw Error(fmt::format(
          "per-example gradients of block '{}' are NaN or Inf for {} examples (the first is example {} "
          "of this split): the model diverged or the inputs are not finite",
          block.name, bad.count, bad.first));
  }
  if (factors)
    for (std::size_t b = 0; b < blocks.size(); ++b) {
      auto& block = blocks[b];
      if (!block.has_factors()) continue;
      block.factor_tokens = tokens[b / 2];
      block.activation_covariance =
          block.activation_covariance.div_(static_cast<double>(tokens[b / 2])).to(torch::kFloat);
      block.gradient_covariance = block.gradient_covariance.div_(static_cast<double>(n)).to(torch::kFloat);
    }
  return blocks;
}

namespace {
nlohmann::json meta_json(const ExampleMeta& meta, std::int64_t count) {
  nlohmann::json j;
  j["count"] = count;
  if (!meta.ids.empty()) j["ids"] = meta.ids;
  if (!meta.labels.empty()) j["labels"] = meta.labels;
  if (!meta.observed_labels.empty()) j["observed_labels"] = meta.observed_labels;
  if (!meta.flipped.empty()) j["flipped"] = meta.flipped;
  return j;
}

template <class T>
std::vector<T> optional_vector(const nlohmann::json& j, const char* key, std::int64_t count,
                               const fs::path& file, const std::string& side) {
  if (!j.contains(key)) return {};
  const auto& array = j.at(key);
  auto refuse = [&](const std::string& found) {
    return Error(fmt::format("{}: {}.{}: expected an array of integers in [{}, {}], found {}", file.string(),
                             side, key, std::numeric_limits<T>::min(), std::numeric_limits<T>::max(), found));
  };
  if (!array.is_array()) throw refuse(array.dump());
  std::vector<T> out;
  for (const auto& item : array) {
    // Checked before converting: nlohmann's conversion of an out-of-range number is undefined.
    const bool fits =
        item.is_number_unsigned()
            ? item.get<std::uint64_t>() <= static_cast<std::uint64_t>(std::numeric_limits<T>::max())
            : item.is_number_integer() && item.get<std::int64_t>() >= std::numeric_limits<T>::min() &&
                  item.get<std::int64_t>() <= std::numeric_limits<T>::max();
    if (!fits) throw refuse(item.dump());
    out.push_back(static_cast<T>(item.is_number_unsigned()
                                     ? static_cast<std::int64_t>(item.get<std::uint64_t>())
                                     : item.get<std::int64_t>()));
  }
  if (static_cast<std::int64_t>(out.size()) != count)
    throw Error(fmt::format("{}: {}.{} has {} entries but the gradients have {} rows", file.string(), side,
                            key, out.size(), count));
  return out;
}
}  // namespace

void save_gradient_store(const fs::path& dir, const GradientStore& store, bool train_values_written) {
  fs::create_directories(dir / "train");
  fs::create_directories(dir / "query");
  nlohmann::json blocks = nlohmann::json::array();
  for (std::size_t b = 0; b < store.train.size(); ++b) {
    const auto& block = store.train[b];
    if (!train_values_written) save_npy(dir / "train" / (block.name + ".npy"), block.values);
    save_npy(dir / "query" / (block.name + ".npy"), store.query[b].values);
    nlohmann::json entry{{"name", block.name}, {"dim", block.values.size(1)}};
    if (block.has_factors()) {
      fs::create_directories(dir / "factors");
      save_npy(dir / "factors" / (block.name + ".activation.npy"), block.activation_covariance);
      save_npy(dir / "factors" / (block.name + ".gradient.npy"), block.gradient_covariance);
      entry["factors"] = {{"tokens", block.factor_tokens},
                          {"in", block.activation_covariance.size(0)},
                          {"out", block.gradient_covariance.size(0)}};
    }
    blocks.push_back(entry);
  }
  nlohmann::json j;
  j["format"] = "inflab-gradient-store";
  j["version"] = 1;
  j["dtype"] =
      !store.train.empty() && store.train[0].values.scalar_type() == torch::kHalf ? "float16" : "float32";
  j["blocks"] = blocks;
  j["train"] = meta_json(store.train_meta, store.train.empty() ? 0 : store.train[0].values.size(0));
  j["query"] = meta_json(store.query_meta, store.query.empty() ? 0 : store.query[0].values.size(0));
  if (!store.model_metrics.empty()) j["model_metrics"] = store.model_metrics;
  if (!store.projection.empty()) j["projection"] = store.projection;
  write_file_atomic(dir / "blocks.json", j.dump(1) + "\n");
}

at::Tensor checked_gradient_values(const at::Tensor& values, const std::string& where) {
  if (values.dim() != 2)
    throw Error(fmt::format("{}: expected a 2-D array (examples x values), found {} dimension(s) of sizes {}",
                            where, values.dim(), fmt::join(values.sizes(), " x ")));
  if (!values.is_floating_point())
    throw Error(
        fmt::format("{}: expected gradients of little-endian float32, float64 or float16 (the "
                    "dtypes a gradient file may have), found {}",
                    where, c10::toString(values.scalar_type())));
  at::Tensor checked = values.scalar_type() == torch::kFloat32 && values.is_contiguous()
                           ? values
                           : values.to(torch::kFloat32).contiguous();
  if (auto bad = nonfinite_rows(checked); bad.count > 0)
    throw Error(
        fmt::format("{}: {} rows contain NaN or Inf, the first is row {}; influence scores would be NaN",
                    where, bad.count, bad.first));
  return checked;
}

GradientStore load_gradient_store(const fs::path& dir) {
  fs::path manifest = dir / "blocks.json";
  if (!fs::exists(manifest))
    throw Error(
        fmt::format("{}: missing; a gradient directory needs blocks.json, train/<block>.npy and "
                    "query/<block>.npy (docs/gradient-store.md)",
                    manifest.string()));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(manifest));
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{}: invalid JSON: {}", manifest.string(), e.what()));
  }
  if (!j.contains("blocks") || !j["blocks"].is_array() || j["blocks"].empty())
    throw Error(fmt::format("{}: expected \"blocks\": a non-empty array of {{\"name\": ..., \"dim\": ...}}",
                            manifest.string()));
  GradientStore store;
  std::int64_t n_train = -1, n_query = -1;
  std::set<std::string> seen;
  for (const auto& block : j["blocks"]) {
    if (!block.contains("name") || !block["name"].is_string() || !block.contains("dim") ||
        !block["dim"].is_number_integer())
      throw Error(
          fmt::format("{}: each entry of \"blocks\" needs \"name\" (string) and \"dim\" (integer), found {}",
                      manifest.string(), block.dump()));
    std::string name = block["name"];
    std::int64_t dim = block["dim"];
    // Names become file names: no directories, so blocks.json cannot point outside DIR.
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
        name.find('\0') != std::string::npos)
      throw Error(
          fmt::format("{}: block name {} is not a plain file name (no '/', not empty, not '.' or '..')",
                      manifest.string(), nlohmann::json(name).dump()));
    if (dim < 1)
      throw Error(fmt::format("{}: block '{}' has dim {}, expected >= 1", manifest.string(), name, dim));
    if (!seen.insert(name).second)
      throw Error(
          fmt::format("{}: block '{}' is listed twice; list each block once (twice would count its "
                      "influence twice)",
                      manifest.string(), name));
    auto read = [&](const char* side, std::int64_t& rows) {
      fs::path file = dir / side / (name + ".npy");
      if (!fs::exists(file))
        throw Error(fmt::format("{}: missing (blocks.json lists block '{}')", file.string(), name));
      // float32 files are memory-mapped (no copy, pages load on demand); others are converted.
      at::Tensor t = map_npy(file);
      if (t.dim() != 2 || t.size(1) != dim)
        throw Error(fmt::format("{}: expected shape (n, {}) as blocks.json says, found {}", file.string(),
                                dim, fmt::format("{}", fmt::join(t.sizes(), " x "))));
      if (rows >= 0 && t.size(0) != rows)
        throw Error(
            fmt::format("{}: has {} rows but other {} blocks have {}", file.string(), t.size(0), side, rows));
      rows = t.size(0);
      return checked_gradient_values(t, file.string());
    };
    store.train.push_back({name, read("train", n_train)});
    store.query.push_back({name, read("query", n_query)});
    fs::path activation = dir / "factors" / (name + ".activation.npy"),
             gradient = dir / "factors" / (name + ".gradient.npy");
    if (fs::exists(activation) && fs::exists(gradient)) {
      at::Tensor a = load_npy(activation).to(torch::kFloat32), g = load_npy(gradient).to(torch::kFloat32);
      if (a.dim() != 2 || g.dim() != 2 || a.size(0) != a.size(1) || g.size(0) != g.size(1) ||
          a.size(0) * g.size(0) != dim)
        throw Error(
            fmt::format("{} and {}: expected square factors of sizes in and out with in * out = {} (the "
                        "block's dim), found {} and {}",
                        activation.string(), gradient.string(), dim, fmt::join(a.sizes(), " x "),
                        fmt::join(g.sizes(), " x ")));
      store.train.back().activation_covariance = a;
      store.train.back().gradient_covariance = g;
      // Stores written before the count was kept: one token per example.
      const bool counted = block.contains("factors") && block["factors"].is_object() &&
                           block["factors"].contains("tokens") &&
                           block["factors"]["tokens"].is_number_integer();
      store.train.back().factor_tokens =
          counted ? block["factors"]["tokens"].get<std::int64_t>() : store.train.back().values.size(0);
    }
  }
  auto read_meta = [&](const char* side, std::int64_t count, ExampleMeta& meta) {
    if (!j.contains(side)) return;
    const auto& m = j[side];
    if (!m.is_object())
      throw Error(fmt::format("{}: \"{}\": expected an object with count, ids, labels, ..., found {}",
                              manifest.string(), side, m.type_name()));
    if (m.contains("count") && (!m["count"].is_number_integer() || m["count"].get<std::int64_t>() != count))
      throw Error(fmt::format("{}: {}.count = {} but the {} gradients have {} rows", manifest.string(), side,
                              m["count"].dump(), side, count));
    meta.ids = optional_vector<std::int64_t>(m, "ids", count, manifest, side);
    meta.labels = optional_vector<std::int64_t>(m, "labels", count, manifest, side);
    meta.observed_labels = optional_vector<std::int64_t>(m, "observed_labels", count, manifest, side);
    meta.flipped = optional_vector<std::uint8_t>(m, "flipped", count, manifest, side);
  };
  read_meta("train", n_train, store.train_meta);
  read_meta("query", n_query, store.query_meta);
  if (j.contains("projection") && j["projection"].is_string())
    store.projection = j["projection"].get<std::string>();
  if (j.contains("model_metrics") && j["model_metrics"].is_object())
    for (const auto& [name, value] : j["model_metrics"].items())
      if (value.is_number()) store.model_metrics[name] = value.get<double>();
  return store;
}

void save_gradient_store_safetensors(const fs::path& file, const GradientStore& store) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& b : store.train) tensors.emplace_back("train/" + b.name, b.values);
  for (const auto& b : store.query) tensors.emplace_back("query/" + b.name, b.values);
  for (const auto& b : store.train)
    if (b.has_factors()) {
      tensors.emplace_back("factors/" + b.name + ".activation", b.activation_covariance);
      tensors.emplace_back("factors/" + b.name + ".gradient", b.gradient_covariance);
    }
  auto add_vector = [&](const std::string& name, const auto& values, c10::ScalarType type) {
    if (!values.empty())
      tensors.emplace_back(name,
                           torch::tensor(std::vector<std::int64_t>(values.begin(), values.end())).to(type));
  };
  add_vector("train_ids", store.train_meta.ids, torch::kLong);
  add_vector("train_labels", store.train_meta.labels, torch::kLong);
  add_vector("train_observed_labels", store.train_meta.observed_labels, torch::kLong);
  add_vector("train_flipped", store.train_meta.flipped, torch::kByte);
  add_vector("query_ids", store.query_meta.ids, torch::kLong);
  add_vector("query_labels", store.query_meta.labels, torch::kLong);
  save_safetensors(file, tensors, {{"format", "inflab-gradient-store"}, {"version", "1"}});
}

void select_blocks(GradientStore& store, const std::vector<std::string>& patterns) {
  std::vector<std::string> names;
  for (const auto& b : store.train) names.push_back(b.name);
  for (const auto& pattern : patterns)
    if (std::none_of(names.begin(), names.end(), [&](const auto& n) { return matches_any(n, {pattern}); }))
      throw Error(
          fmt::format("block pattern '{}' matches none of the blocks: {}", pattern, fmt::join(names, ", ")));
  auto keep = [&](GradientBlocks& blocks) {
    blocks.erase(std::remove_if(blocks.begin(), blocks.end(),
                                [&](const GradientBlock& b) { return !matches_any(b.name, patterns); }),
                 blocks.end());
  };
  keep(store.train);
  keep(store.query);
}

void combine_factors_over_ranks(GradientBlocks& train) {
  for (auto& block : train) {
    if (!block.has_factors()) continue;
    // Means over each shard's tokens (A) and examples (S) -> sums -> means over all ranks.
    const double tokens = sum_over_ranks(static_cast<double>(block.factor_tokens));
    const double examples = sum_over_ranks(static_cast<double>(block.values.size(0)));
    torch::Tensor a =
        block.activation_covariance.to(torch::kDouble).mul(static_cast<double>(block.factor_tokens));
    torch::Tensor s =
        block.gradient_covariance.to(torch::kDouble).mul(static_cast<double>(block.values.size(0)));
    block.activation_covariance = sum_over_ranks(a).div_(tokens).to(torch::kFloat);
    block.gradient_covariance = sum_over_ranks(s).div_(examples).to(torch::kFloat);
    block.factor_tokens = static_cast<std::int64_t>(tokens);
  }
}

void gather_meta_over_ranks(ExampleMeta& meta) {
  auto gather = [](auto& values) {
    std::vector<std::int64_t> wide(values.begin(), values.end());
    torch::Tensor all = gather_rows_over_ranks(torch::tensor(wide, torch::kLong)).contiguous();
    const auto* p = all.data_ptr<std::int64_t>();
    values.assign(p, p + all.numel());
  };
  gather(meta.ids), gather(meta.labels), gather(meta.observed_labels), gather(meta.flipped);
}

}  // namespace inflab
