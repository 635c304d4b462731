#include "explain.hpp"

#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "inflab/distributed.hpp"
#include "inflab/error.hpp"
#include "inflab/index.hpp"
#include "inflab/io.hpp"
#include "inflab/progress.hpp"
#include "inflab/registry.hpp"
#include "inflab/sampling.hpp"
#include "inflab/scoring.hpp"

namespace fs = std::filesystem;

namespace inflab {

int command_index_build(const ExperimentConfig& run, Registry& registry, const fs::path& out,
                        const fs::path& cache, const IndexBuildOptions& options) {
  const IndexRecord record = build_index(run, registry, RunPaths{"results", cache}, out, options);
  std::vector<std::string> fitted;
  for (const auto& f : record.fits)
    fitted.push_back(f.estimator + (f.self_influence ? " with self-influence" : ""));
  if (distributed_rank() == 0)
    std::cout << fmt::format(
        "{}: index of {} training examples in {} shard(s) ({}, {}; fitted: {}), run {} of {}\n", out.string(),
        record.examples, record.shard_rows.size(), record.dtype,
        record.projection.empty() ? "full gradients" : record.projection,
        fitted.empty() ? "none" : fmt::format("{}", fmt::join(fitted, ", ")), record.run, record.experiment);
  return 0;
}

int command_index_append(const fs::path& index, const fs::path& examples,
                         const std::vector<std::string>& classes, Registry& registry, const fs::path& cache) {
  const auto [record, added] =
      append_to_index(index, registry, RunPaths{"results", cache}, examples, classes);
  if (distributed_rank() == 0)
    std::cout << fmt::format("{}: index of {} examples in {} shard(s), {} of them appended from {}\n",
                             index.string(), record.examples, record.shard_rows.size(), added,
                             examples.string());
  return 0;
}

namespace {

// Beside each numeric label its class name ("class", "observed_class").
void name_classes(const AttributionIndex& index, nlohmann::json& row) {
  const auto& names = index.record.class_names;
  for (const auto& [label, name] :
       {std::pair<const char*, const char*>{"label", "class"}, {"observed_label", "observed_class"}})
    if (row.contains(label) && row[label].is_number_integer()) {
      const auto value = row[label].get<std::int64_t>();
      if (value >= 0 && value < static_cast<std::int64_t>(names.size()))
        row[name] = names[static_cast<std::size_t>(value)];
    }
}

nlohmann::json describe_row(const AttributionIndex& index, const RankedRow& ranked) {
  nlohmann::json row = nlohmann::json::object();
  if (ranked.row < static_cast<std::int64_t>(index.examples.size()))
    row = nlohmann::json::parse(index.examples[static_cast<std::size_t>(ranked.row)]);
  row.erase("split");
  const auto& meta = index.train_meta;
  const auto i = static_cast<std::size_t>(ranked.row);
  if (i < meta.observed_labels.size()) row["observed_label"] = meta.observed_labels[i];
  name_classes(index, row);
  if (i < meta.flipped.size()) row["flipped"] = meta.flipped[i] != 0;
  row["row"] = ranked.row;
  row["score"] = ranked.score;
  return row;
}

std::string shorten(const std::string& text, std::size_t width) {
  std::string flat;
  for (char c : text) flat += c == '\n' ? ' ' : c;
  return flat.size() <= width ? flat : flat.substr(0, width - 3) + "...";
}

// "3" or, with the class name kept, "3 Dress".
std::string labelled(const nlohmann::json& row, const char* label, const char* name) {
  std::string text = fmt::format("{:>3}", row.value(label, std::int64_t{-1}));
  if (row.contains(name)) text += " " + row[name].get<std::string>();
  return text;
}

void print_rows(const char* title, const nlohmann::json& rows) {
  std::cout << "  " << title << "\n";
  for (const auto& row : rows) {
    std::string what = row.contains("text") ? "\"" + shorten(row["text"], 60) + "\"" : "";
    if (row.contains("response")) what += " -> \"" + shorten(row["response"], 40) + "\"";
    // The label the model was trained on (and its class); a flipped one with the true one beside it.
    const bool observed = row.contains("observed_label");
    const std::string trained_on =
        labelled(row, observed ? "observed_label" : "label", observed ? "observed_class" : "class");
    const std::string flipped = row.value("flipped", false)
                                    ? fmt::format(" (flipped, true {})", labelled(row, "label", "class"))
                                    : "";
    std::cout << fmt::format("    row {:>6}  score {:>+11.4e}  label {}{}{}\n",
                             row["row"].get<std::int64_t>(), row["score"].get<double>(), trained_on, flipped,
                             what.empty() ? "" : "  " + what);
  }
}

}  // namespace

int command_explain(const ExplainRequest& request, Registry& registry) {
  if (request.top < 1) throw Error(fmt::format("--top: expected at least 1, found {}", request.top));
  if (request.chunk_rows < 0)
    throw Error(
        fmt::format("--chunk-rows: expected at least 1 (or 0: automatic), found {}", request.chunk_rows));
  std::vector<std::string> prompts = request.prompts, responses = request.responses;
  if (responses.size() > prompts.size())
    throw Error(fmt::format("--response given {} times for {} --prompt; the i-th answers the i-th prompt",
                            responses.size(), prompts.size()));
  responses.resize(prompts.size());
  if (!request.queries_file.empty())  // after the --prompt ones
    read_prompt_lines(request.queries_file, /*need_response=*/false, prompts, responses);
  const bool images = !request.conditions.empty() || !request.images_file.empty();
  if (prompts.empty() && request.validation_rows.empty() && !images)
    throw Error(
        "explain: give queries: --prompt TEXT, --queries FILE.jsonl, --condition NAME (denoisers) or "
        "--validation "
        "ROW");
  if (!prompts.empty() && images)
    throw Error(
        "explain: prompts are a language model's queries, --condition/--image a denoiser's; give one kind");
  registry.find(PluginKind::Estimator, request.estimator);  // a misspelt name fails before any work
  if (!(request.hash_limit_mb >= 0))
    throw Error(fmt::format("--hash-limit-mb: expected a size >= 0, found {}", request.hash_limit_mb));
  AttributionIndex index = open_index(request.index, registry, request.hash_limit_mb);

  // The queries' gradients: the run's own validation rows, then the prompts (generated answers).
  std::vector<nlohmann::json> queries;
  const std::vector<std::int64_t>& rows = request.validation_rows;
  check_validation_rows(index, rows);  // a wrong row fails before any generation
  PromptGradients prompted;
  if (!prompts.empty())
    prompted = prompt_gradients(index, registry, RunPaths{"results", request.cache}, prompts, responses,
                                request.max_tokens);
  ImageGradients drawn;
  if (images)
    drawn = image_gradients(index, registry, RunPaths{"results", request.cache}, request.conditions,
                            request.images_file, request.sampling_steps, request.seed);
  if (images && !request.save_images.empty()) {  // .npy: the values as scored (rows); else a PNG row
    if (request.save_images.extension() == ".npy")
      save_npy(request.save_images, drawn.images.reshape({drawn.images.size(0), -1}).contiguous());
    else
      save_png_grid(request.save_images, drawn.images, drawn.images.size(0));
  }
  GradientBlocks queries_blocks = gather_queries(index, rows, images ? drawn.gradients : prompted.gradients);
  for (auto row : rows) {
    nlohmann::json query{{"validation_row", row}};
    const auto& labels = index.query_meta.labels;
    if (static_cast<std::size_t>(row) < labels.size()) query["label"] = labels[static_cast<std::size_t>(row)];
    name_classes(index, query);
    queries.push_back(query);
  }
  for (std::size_t i = 0; i < prompts.size(); ++i)
    queries.push_back({{"prompt", prompted.prompts[i]}, {"answer", prompted.answers[i]}});
  for (std::size_t i = 0; i < drawn.conditions.size(); ++i)
    queries.push_back({{"condition", drawn.conditions[i]},
                       {"image", request.images_file.empty()
                                     ? fmt::format("drawn by the fine-tuned model (DDIM {} steps, seed {})",
                                                   request.sampling_steps, request.seed)
                                     : fmt::format("{} row {}", request.images_file.string(), i)}});

  const auto start = std::chrono::steady_clock::now();
  const Normalisation normalisation = normalisation_from(request.normalise, "--normalise");
  if (normalisation == Normalisation::Unit) {  // each query at unit norm over all blocks (then its
                                               // preconditioned form is scaled alike)
    const at::Tensor scale = reciprocal_or_zero(row_norms(queries_blocks)).to(at::kFloat).unsqueeze(1);
    for (auto& block : queries_blocks) block.values = block.values.mul(scale);
  }
  const PreconditionedQueries preconditioned =
      precondition_queries(index, registry, request.estimator, request.estimator_sets, queries_blocks,
                           normalisation == Normalisation::Relatif);
  const auto preconditioned_at = std::chrono::steady_clock::now();
  RowDivisors divisors;  // relatif without a self-influence: M is the identity, g . g = ||g||^2
  divisors.norms = normalisation == Normalisation::Unit ||
                   (normalisation == Normalisation::Relatif && !preconditioned.self_influence.defined());
  if (normalisation == Normalisation::Relatif && preconditioned.self_influence.defined())
    divisors.given = relatif_divisors(preconditioned.self_influence);
  const auto rankings = rank_index_rows(index.train, preconditioned.blocks, request.top, request.chunk_rows,
                                        index.train.rows() >= 100000 ? "scoring the index" : "", divisors);
  const auto seconds = [](auto from, auto to) { return std::chrono::duration<double>(to - from).count(); };
  if (!Progress::quiet())
    std::cerr << fmt::format(
        "[inflab] explain: {} queries preconditioned in {:.3f} s ({}{}), {} training rows scored in {:.3f} "
        "s\n",
        queries.size(), seconds(start, preconditioned_at), preconditioned.source,
        preconditioned.self_influence_seconds > 0
            ? fmt::format("; of that, the self-influence {:.3f} s", preconditioned.self_influence_seconds)
            : "",
        index.train.rows(), seconds(preconditioned_at, std::chrono::steady_clock::now()));
  nlohmann::json out = nlohmann::json::array();
  for (std::size_t q = 0; q < rankings.size(); ++q) {
    nlohmann::json entry = queries[q];
    entry["estimator"] = request.estimator;
    entry["preconditioner"] = preconditioned.source;
    entry["normalise"] = request.normalise;
    entry["helpful"] = nlohmann::json::array();
    entry["harmful"] = nlohmann::json::array();
    for (const auto& r : rankings[q].helpful) entry["helpful"].push_back(describe_row(index, r));
    for (const auto& r : rankings[q].harmful) entry["harmful"].push_back(describe_row(index, r));
    out.push_back(entry);
  }
  if (request.json) {
    std::cout << out.dump(1) << "\n";
    return 0;
  }
  std::cout << fmt::format(
      "index {} ({} training examples, {}), estimator {}\n", request.index.string(), index.record.examples,
      index.record.projection.empty() ? "full gradients" : index.record.projection, preconditioned.source);
  std::cout
      << "score < 0: up-weighting the training example lowers the query's loss (helpful); > 0: raises it\n";
  for (const auto& entry : out) {
    if (entry.contains("condition"))
      std::cout << fmt::format("\nquery: image for condition '{}', {}\n",
                               entry["condition"].get<std::string>(), entry["image"].get<std::string>());
    else if (entry.contains("validation_row"))
      std::cout << fmt::format("\nquery: validation row {} (label {})\n",
                               entry["validation_row"].get<std::int64_t>(),
                               labelled(entry, "label", "class"));
    else
      std::cout << fmt::format("\nquery: \"{}\"\nanswer: \"{}\"\n", shorten(entry["prompt"], 100),
                               shorten(entry["answer"], 100));
    print_rows("most helpful", entry["helpful"]);
    print_rows("most harmful", entry["harmful"]);
  }
  return 0;
}

}  // namespace inflab
