#include "inflab/index.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "inflab/checksums.hpp"
#include "inflab/distributed.hpp"
#include "inflab/error.hpp"
#include "inflab/io.hpp"
#include "inflab/language_model.hpp"
#include "inflab/pipeline.hpp"
#include "inflab/progress.hpp"
#include "inflab/registry.hpp"
#include "inflab/sampling.hpp"
#include "inflab/scoring.hpp"
#include "inflab/task_table.hpp"
#include "stage_keys.hpp"
#include "stages/stages.hpp"

namespace fs = std::filesystem;

namespace inflab {

namespace {
constexpr int kIndexVersion = 2;

fs::path shard_directory(const fs::path& index, std::size_t shard) {
  return index / "shards" / fmt::format("{:05d}", shard);
}

nlohmann::json record_json(const IndexRecord& r) {
  nlohmann::json fits = nlohmann::json::array();
  for (const auto& f : r.fits)
    fits.push_back({{"estimator", f.estimator},
                    {"version", f.version},
                    {"options", f.options},
                    {"self_influence", f.self_influence}});
  nlohmann::json appended = nlohmann::json::array();
  for (const auto& a : r.appended) appended.push_back({{"source", a.source}, {"rows", a.rows}});
  nlohmann::json blocks = nlohmann::json::array();
  for (std::size_t b = 0; b < r.block_names.size(); ++b)
    blocks.push_back(
        {{"name", r.block_names[b]}, {"dim", r.block_dims[b]}, {"factor_tokens", r.factor_tokens[b]}});
  return {{"format", "inflab-index"},       {"version", kIndexVersion},
          {"experiment", r.experiment},     {"run", r.run},
          {"finetune_key", r.finetune_key}, {"gradients_key", r.gradients_key},
          {"projection", r.projection},     {"dtype", r.dtype},
          {"examples", r.examples},         {"blocks", blocks},
          {"shard_rows", r.shard_rows},     {"fits", fits},
          {"class_names", r.class_names},   {"appended", appended}};
}

IndexRecord read_record(const fs::path& file) {
  if (!fs::is_regular_file(file))
    throw Error(fmt::format(
        "{}: not found; an index directory is written by `inflab index build FILE.toml --out DIR`",
        file.string()));
  nlohmann::json j;
  try {
    std::ifstream in(file);
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw Error(fmt::format("{}: not valid JSON ({})", file.string(), e.what()));
  }
  if (j.value("format", "") != "inflab-index" || j.value("version", 0) != kIndexVersion)
    throw Error(fmt::format(
        "{}: expected format \"inflab-index\" version {}, found {} version {}; an index of an earlier "
        "inflab is rebuilt with `inflab index build FILE.toml --out NEW_DIR`",
        file.string(), kIndexVersion, j.value("format", std::string("(none)")), j.value("version", 0)));
  IndexRecord r;
  try {
    r.experiment = j.at("experiment"), r.run = j.at("run"), r.finetune_key = j.at("finetune_key");
    r.gradients_key = j.at("gradients_key"), r.projection = j.at("projection"), r.dtype = j.at("dtype");
    r.examples = j.at("examples");
    for (const auto& block : j.at("blocks")) {
      r.block_names.push_back(block.at("name")), r.block_dims.push_back(block.at("dim"));
      r.factor_tokens.push_back(block.at("factor_tokens"));
    }
    r.shard_rows = j.at("shard_rows").get<std::vector<std::int64_t>>();
    r.class_names = j.at("class_names").get<std::vector<std::string>>();
    for (const auto& f : j.at("fits"))
      r.fits.push_back({f.at("estimator"), f.at("version"), f.at("options").get<std::vector<std::string>>(),
                        f.value("self_influence", false)});
    if (j.contains("appended"))  // an index nothing was appended to may predate the field
      for (const auto& a : j.at("appended")) r.appended.push_back({a.at("source"), a.at("rows")});
    if (r.appended.size() >= r.shard_rows.size()) throw Error("more appended parts than shards");
  } catch (const std::exception& e) {
    throw Error(fmt::format("{}: {}", file.string(), e.what()));
  }
  return r;
}

nlohmann::json meta_json(const ExampleMeta& meta) {
  return {{"ids", meta.ids},
          {"labels", meta.labels},
          {"observed_labels", meta.observed_labels},
          {"flipped", meta.flipped}};
}
ExampleMeta read_meta(const nlohmann::json& j) {
  return {j.at("ids").get<std::vector<std::int64_t>>(), j.at("labels").get<std::vector<std::int64_t>>(),
          j.at("observed_labels").get<std::vector<std::int64_t>>(),
          j.at("flipped").get<std::vector<std::uint8_t>>()};
}

c10::ScalarType stored_type(const std::string& dtype) {
  return dtype == "float16" ? torch::kHalf : dtype == "bfloat16" ? torch::kShort : torch::kFloat;
}

// A block's rows written into a mapped .npy of the index's dtype, a chunk at a time (no n x d copy).
void write_rows(const fs::path& file, const at::Tensor& values, const std::string& dtype) {
  at::Tensor out = create_mapped_npy(file, {values.size(0), values.size(1)}, stored_type(dtype));
  constexpr std::int64_t kChunk = 8192;
  for (std::int64_t begin = 0; begin < values.size(0); begin += kChunk) {
    const std::int64_t count = std::min(kChunk, values.size(0) - begin);
    out.narrow(0, begin, count).copy_(to_index_dtype(values.narrow(0, begin, count), dtype));
  }
}

// verify_directory_checksums, with the shards checked by size only unless `hash_shards`.
std::string verify_index_checksums(const fs::path& dir, bool hash_shards) {
  if (hash_shards) return verify_directory_checksums(dir);
  return verify_directory_checksums(dir,
                                    [](const std::string& file) { return file.rfind("shards/", 0) == 0; });
}

std::int64_t appended_rows(const IndexRecord& record) {
  std::int64_t rows = 0;
  for (const auto& a : record.appended) rows += a.rows;
  return rows;
}

std::string options_text(const std::vector<std::string>& options) {
  return options.empty() ? "default options" : fmt::format("options {}", fmt::join(options, " "));
}

// A kept fit's matrices, one per block (row j is M^{-1} e_j), memory-mapped.
std::vector<at::Tensor> kept_inverses(const fs::path& index, const std::string& estimator,
                                      const std::vector<std::string>& block_names) {
  std::vector<at::Tensor> out;
  for (const auto& name : block_names) out.push_back(map_npy(index / "fits" / estimator / (name + ".npy")));
  return out;
}

// g_k . M^{-1} g_k of every stored row (float64, index order) with a kept fit's matrices: per
// chunk and block, the row sums of (G F) * G, F = M^{-1} as kept (symmetric up to rounding).
at::Tensor kept_self_influence(const IndexRows& rows, const std::vector<at::Tensor>& inverses) {
  at::Tensor out = torch::zeros({rows.rows()}, torch::kDouble);
  std::vector<at::Tensor> dense;
  for (const auto& inverse : inverses) dense.push_back(inverse.to(torch::kDouble));
  Progress progress("self-influence", rows.rows(), "rows");
  constexpr std::int64_t kChunk = 4096;
  std::int64_t offset = 0;
  for (std::size_t s = 0; s < rows.shards.size(); ++s) {
    const std::int64_t shard_rows = rows.shards[s].empty() ? 0 : rows.shards[s][0].size(0);
    for (std::int64_t begin = 0; begin < shard_rows; begin += kChunk) {
      const std::int64_t count = std::min(kChunk, shard_rows - begin);
      at::Tensor part = out.narrow(0, offset + begin, count);
      for (std::size_t b = 0; b < dense.size(); ++b) {
        const at::Tensor g = rows.float_rows(s, b, begin, count).to(torch::kDouble);
        part.add_(g.mm(dense[b]).mul_(g).sum(1));
      }
      progress.advance(count);
    }
    offset += shard_rows;
  }
  return out;
}

// The training rows of an index directory as written (no checks: build_index has just written them).
IndexRows map_rows(const fs::path& dir, const IndexRecord& record) {
  IndexRows rows;
  rows.dtype = record.dtype;
  rows.block_names = record.block_names;
  for (std::size_t s = 0; s < record.shard_rows.size(); ++s) {
    rows.shards.emplace_back();
    for (const auto& name : record.block_names)
      rows.shards.back().push_back(map_npy(shard_directory(dir, s) / (name + ".npy")));
  }
  return rows;
}
}  // namespace

at::Tensor to_index_dtype(const at::Tensor& values, const std::string& dtype) {
  if (dtype == "float16") return values.to(torch::kHalf).contiguous();
  if (dtype == "bfloat16") return values.to(torch::kBFloat16).contiguous().view(torch::kShort);
  return values.to(torch::kFloat).contiguous();
}

std::int64_t IndexRows::rows() const {
  std::int64_t n = 0;
  for (const auto& shard : shards) n += shard.empty() ? 0 : shard[0].size(0);
  return n;
}

at::Tensor IndexRows::float_rows(std::size_t shard, std::size_t block, std::int64_t begin,
                                 std::int64_t count) const {
  at::Tensor stored = shards.at(shard).at(block).narrow(0, begin, count);
  if (dtype == "bfloat16") stored = stored.view(torch::kBFloat16);
  return stored.to(torch::kFloat).contiguous();
}

// Replaces files of a verified index together: each new or changed file is written beside its
// place (NAME.updating) and hashed there, so that only renames stand between the old index and the
// new one; CHECKSUMS (the old entries with the new ones) is written last. A leftover .updating
// file of an interrupted update is unlisted, so it is ignored and overwritten by the next one.
class IndexUpdate {
 public:
  explicit IndexUpdate(fs::path dir) : dir_(std::move(dir)) {
    std::istringstream lines(read_file(dir_ / "CHECKSUMS"));
    std::string hash, size, file;
    while (lines >> hash >> size && std::getline(lines >> std::ws, file))
      checksums_[file] = hash + " " + size;
  }
  void stage(const std::string& name, const std::function<void(const fs::path&)>& write) {
    write(staging(name));
    checksums_[name] = file_checksum(staging(name));
    staged_.push_back(name);
  }
  // A file already in its place (an appended shard's, renamed in as a whole folder).
  void add_in_place(const std::string& name) { checksums_[name] = file_checksum(dir_ / name); }
  void commit() {
    for (const auto& name : staged_) fs::rename(staging(name), dir_ / name);
    std::string list;
    for (const auto& [file, checksum] : checksums_) list += checksum + " " + file + "\n";
    write_file_atomic(dir_ / "CHECKSUMS", list);
  }

 private:
  fs::path staging(const std::string& name) const {
    fs::path path = dir_ / name;
    path += ".updating";
    return path;
  }
  fs::path dir_;
  std::map<std::string, std::string> checksums_;  // relative name -> "hash size"
  std::vector<std::string> staged_;
};

IndexRecord build_index(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                        const fs::path& dir, const IndexBuildOptions& options) {
  const std::string& dtype = options.dtype;
  if (dtype != "float16" && dtype != "bfloat16" && dtype != "float32")
    throw Error(fmt::format("--dtype: expected float16, bfloat16 or float32, found '{}'", dtype));
  std::vector<std::string> fit_names;
  for (const auto& name : options.fit)
    if (!name.empty() && name != "none") {
      registry.find(PluginKind::Estimator, name);  // a misspelt name fails before any work
      fit_names.push_back(name);
    }
  IndexRecord record;
  record.experiment = config.source.string(), record.run = config.run_name;
  record.finetune_key = stage_key("finetune", config), record.gradients_key = stage_key("gradients", config);
  record.dtype = dtype;
  if (fs::exists(dir / "index.json")) {
    const IndexRecord existing = read_record(dir / "index.json");
    std::vector<std::string> existing_fits;
    for (const auto& f : existing.fits) existing_fits.push_back(f.estimator);
    if (existing.gradients_key == record.gradients_key && existing.dtype == dtype) {
      if (std::string problem = verify_directory_checksums(dir); !problem.empty())
        throw Error(fmt::format("index {}: {}; remove it and build it again", dir.string(), problem));
      log(fmt::format("index {}: already built from these gradients, every file checked (fitted: {})",
                      dir.string(),
                      existing_fits.empty() ? "none" : fmt::format("{}", fmt::join(existing_fits, ", "))));
      const bool adds =
          options.self_influence && std::any_of(existing.fits.begin(), existing.fits.end(),
                                                [](const IndexFit& f) { return !f.self_influence; });
      if (!adds) return existing;
      // --self-influence on an index built without it: added in place from its kept fits and stored
      // rows (what a build with it computes), with the record that lists it, as one update.
      IndexRecord updated = existing;
      if (distributed_rank() == 0) {
        const IndexRows rows = map_rows(dir, existing);
        IndexUpdate update(dir);
        for (auto& fit : updated.fits)
          if (!fit.self_influence) {
            update.stage(fmt::format("fits/{}/self_influence.npy", fit.estimator), [&](const fs::path& path) {
              save_npy(path,
                       kept_self_influence(rows, kept_inverses(dir, fit.estimator, existing.block_names)));
            });
            fit.self_influence = true;
            log(fmt::format("index {}: added {}'s self-influence of the {} training rows", dir.string(),
                            fit.estimator, rows.rows()));
          }
        update.stage("index.json", [&](const fs::path& path) {
          write_file_atomic(path, record_json(updated).dump(1) + "\n");
        });
        update.commit();
      }
      barrier_over_ranks();
      return read_record(dir / "index.json");
    }
    throw Error(
        fmt::format("{}: holds the index of other gradients ({} run {}, dtype {}); choose another --out "
                    "or remove it",
                    dir.string(), existing.experiment, existing.run, existing.dtype));
  }
  if (fs::exists(dir) && !fs::is_empty(dir))
    throw Error(fmt::format("--out {}: exists and is not an index; choose a new folder", dir.string()));

  GradientStore store = prepare_gradients(config, registry, paths);           // this rank's training rows
  select_blocks(store, config.evaluation.blocks);                             // [evaluation] blocks, as a run
  if (distributed_world_size() > 1) combine_factors_over_ranks(store.train);  // K-FAC's, over all rows
  {  // the class names explain prints beside labels
    RunOutcome unused;
    record.class_names = load_data(stage_inputs("data", config), registry, unused).splits.class_names;
  }
  const int rank = distributed_rank();
  const auto ranks = static_cast<std::size_t>(distributed_world_size());
  record.projection = store.projection;
  for (const auto& block : store.train) {
    record.block_names.push_back(block.name), record.block_dims.push_back(block.values.size(1));
    record.factor_tokens.push_back(block.has_factors() ? block.factor_tokens : 0);
  }
  {  // every rank's row count, in rank order
    at::Tensor mine = torch::zeros({static_cast<std::int64_t>(ranks)}, torch::kLong);
    mine[rank] = store.train.at(0).values.size(0);
    sum_over_ranks(mine);
    record.shard_rows.assign(mine.data_ptr<std::int64_t>(), mine.data_ptr<std::int64_t>() + ranks);
  }
  for (auto rows : record.shard_rows) record.examples += rows;
  ExampleMeta train_meta = store.train_meta;
  if (ranks > 1) gather_meta_over_ranks(train_meta);

  // Every rank writes into one folder whose name they agree on; rank 0 renames it into place last.
  fs::path building = dir;
  building += ".building";
  if (rank == 0) fs::remove_all(building);
  barrier_over_ranks();
  {
    Progress progress(fmt::format("index shard {}", rank), static_cast<std::int64_t>(store.train.size()));
    for (const auto& block : store.train) {
      write_rows(shard_directory(building, static_cast<std::size_t>(rank)) / (block.name + ".npy"),
                 block.values, dtype);
      progress.advance();
    }
  }
  // Each estimator's preconditioner per block: M_b^{-1} applied to the identity, so a query is
  // one d x d product at explain time. Fitted on the float32 gradients, before 16-bit rounding.
  double fit_mb = 0, rows_mb = 0;
  for (auto d : record.block_dims) {
    fit_mb += static_cast<double>(d) * static_cast<double>(d) * 4.0 / 1048576.0;
    rows_mb += static_cast<double>(record.examples) * static_cast<double>(d) * 4.0 / 1048576.0;
  }
  for (const auto& name : fit_names) {
    const PluginRecord& plugin = registry.find(PluginKind::Estimator, name);
    auto estimator = with_rescaling(registry.create_as<Estimator>(
        PluginKind::Estimator, name,
        options_from_assignments(fmt::format("estimator '{}'", name), plugin.info->options(), {})));
    if (estimator->preconditioner_degree() == 0) continue;  // the identity: nothing to keep
    // Kept only where a query costs less with it: d x d per block, no larger than the rows.
    if (fit_mb > options.fit_budget_mb || fit_mb > rows_mb) {
      log(fmt::format(
          "index: not keeping {}'s preconditioners ({:.0f} MiB: {}); explain fits it at query "
          "time instead",
          name, fit_mb,
          fit_mb > rows_mb ? fmt::format("more than the {:.0f} MiB of float32 training rows", rows_mb)
                           : fmt::format("over --fit-budget-mb {:.0f}", options.fit_budget_mb)));
      continue;
    }
    if (ranks > 1 && !estimator->supports_distributed()) {
      log(fmt::format("index: {} cannot be fitted across ranks; explain fits it at query time", name));
      continue;
    }
    estimator->fit(store.train);
    for (std::size_t b = 0; b < store.train.size(); ++b) {
      const std::int64_t d = record.block_dims[b];
      at::Tensor inverse = estimator->inverse_product(b, torch::eye(d, torch::kFloat));
      inverse = inverse.to(torch::kDouble).mul_(std::ldexp(1.0, score_exponent(*estimator, b)));
      if (rank == 0)
        save_npy(building / "fits" / name / (record.block_names[b] + ".npy"), inverse.to(torch::kFloat));
    }
    record.fits.push_back({name, plugin.info->version, {}});
    return_freed_memory();
  }
  barrier_over_ranks();  // every shard and kept fit is written
  if (rank == 0 && options.self_influence) {
    const IndexRows rows = map_rows(building, record);
    for (auto& fit : record.fits) {
      save_npy(building / "fits" / fit.estimator / "self_influence.npy",
               kept_self_influence(rows, kept_inverses(building, fit.estimator, record.block_names)));
      fit.self_influence = true;
    }
  }
  if (rank == 0) {
    for (const auto& block : store.query)
      save_npy(building / "queries" / (block.name + ".npy"), block.values);
    for (const auto& block : store.train)
      if (block.has_factors()) {  // K-FAC's and EK-FAC's statistics, for fits at query time
        save_npy(building / "factors" / (block.name + ".activation.npy"), block.activation_covariance);
        save_npy(building / "factors" / (block.name + ".gradient.npy"), block.gradient_covariance);
      }
    write_file_atomic(
        building / "meta.json",
        nlohmann::json{{"train", meta_json(train_meta)}, {"query", meta_json(store.query_meta)}}.dump() +
            "\n");
    // Every rank's gradients list all the run's examples.
    const fs::path examples = gradients_directory(gradients_stage_inputs(config), paths) / "examples.jsonl";
    if (fs::exists(examples)) write_file_atomic(building / "examples.jsonl", read_file(examples));
    write_file_atomic(building / "config.toml", config.resolved_toml);
    write_file_atomic(building / "index.json", record_json(record).dump(1) + "\n");
    write_directory_checksums(building);
    if (fs::exists(dir)) fs::remove(dir);  // empty (checked above)
    fs::rename(building, dir);
  }
  barrier_over_ranks();
  return record;
}

AttributionIndex open_index(const fs::path& dir, Registry& registry, double hash_limit_mb) {
  AttributionIndex index;
  index.dir = dir;
  index.record = read_record(dir / "index.json");
  const IndexRecord& record = index.record;
  std::uintmax_t shard_bytes = 0;
  if (fs::is_directory(dir / "shards"))
    for (const auto& entry : fs::recursive_directory_iterator(dir / "shards"))
      if (entry.is_regular_file()) shard_bytes += entry.file_size();
  const bool hash_shards = static_cast<double>(shard_bytes) <= hash_limit_mb * 1048576.0;
  if (std::string problem = verify_index_checksums(dir, hash_shards); !problem.empty())
    throw Error(fmt::format("index {}: {}; rebuild it with `inflab index build`", dir.string(), problem));
  auto runs = load_experiment(dir / "config.toml", {}, registry);
  if (runs.size() != 1)
    throw Error(fmt::format("{}: describes {} runs; an index holds one run's configuration",
                            (dir / "config.toml").string(), runs.size()));
  index.config = std::move(runs[0]);
  // The plugins or the framework changed what the adapter or the gradients would be: the index
  // no longer describes what the model now computes.
  for (const auto& [stage, recorded] : {std::pair<const char*, std::string>{"finetune", record.finetune_key},
                                        {"gradients", record.gradients_key}})
    if (const std::string now = stage_key(stage, index.config); now != recorded)
      throw Error(
          fmt::format("index {}: built from {} stage {}, but its configuration now gives {} (a plugin, "
                      "the kernels or inflab changed it); rebuild it with `inflab index build {}`",
                      dir.string(), stage, recorded, now, record.experiment));
  // Every file has the shape and dtype index.json promises before anything is scored.
  auto mapped = [&](const fs::path& file, std::int64_t rows, std::int64_t dim, c10::ScalarType type) {
    if (!fs::is_regular_file(file))
      throw Error(fmt::format("index {}: {} is missing", dir.string(), file.string()));
    at::Tensor t = map_npy(file);
    if (t.dim() != 2 || t.size(1) != dim || (rows >= 0 && t.size(0) != rows) || t.scalar_type() != type)
      throw Error(fmt::format("{}: expected {} x {} of {}, found {} of {}", file.string(),
                              rows >= 0 ? std::to_string(rows) : "n", dim, c10::toString(type),
                              fmt::join(t.sizes(), " x "), c10::toString(t.scalar_type())));
    return t;
  };
  index.train.dtype = record.dtype;
  index.train.block_names = record.block_names;
  for (std::size_t s = 0; s < record.shard_rows.size(); ++s) {
    index.train.shards.emplace_back();
    for (std::size_t b = 0; b < record.block_names.size(); ++b)
      index.train.shards.back().push_back(mapped(shard_directory(dir, s) / (record.block_names[b] + ".npy"),
                                                 record.shard_rows[s], record.block_dims[b],
                                                 stored_type(record.dtype)));
  }
  for (std::size_t b = 0; b < record.block_names.size(); ++b) {
    const fs::path file = dir / "queries" / (record.block_names[b] + ".npy");
    index.queries.push_back(
        {record.block_names[b],
         checked_gradient_values(mapped(file, -1, record.block_dims[b], torch::kFloat), file.string())});
  }
  try {
    const auto meta = nlohmann::json::parse(read_file(dir / "meta.json"));
    index.train_meta = read_meta(meta.at("train")), index.query_meta = read_meta(meta.at("query"));
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{}: {}", (dir / "meta.json").string(), e.what()));
  }
  std::ifstream lines(dir / "examples.jsonl");
  for (std::string line; std::getline(lines, line);)
    if (auto j = nlohmann::json::parse(line, nullptr, false);
        j.is_object() && j.value("split", "") == "train")
      index.examples.push_back(line);
  return index;
}

void read_prompt_lines(const fs::path& file, bool need_response, std::vector<std::string>& prompts,
                       std::vector<std::string>& responses, std::vector<int>* line_numbers) {
  std::ifstream in(file);
  if (!in) throw Error(fmt::format("{}: cannot be read", file.string()));
  const char* expected = need_response ? R"({"prompt": "...", "response": "..."} (a non-empty response))"
                                       : R"({"prompt": "..."} (and optionally "response"))";
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      throw Error(fmt::format("{}:{}: not a JSON object ({})", file.string(), number, e.what()));
    }
    const bool has_response = j.is_object() && j.contains("response") && j["response"].is_string() &&
                              !j["response"].get<std::string>().empty();
    if (!j.is_object() || !j.contains("prompt") || !j["prompt"].is_string() ||
        (need_response && !has_response))
      throw Error(fmt::format("{}:{}: expected {}, found {}", file.string(), number, expected, line));
    prompts.push_back(j["prompt"]);
    responses.push_back(has_response ? j["response"].get<std::string>() : "");
    if (line_numbers) line_numbers->push_back(number);
  }
}

namespace {
// Before any fine-tuning: only a language model's index takes prompts.
void require_language_model(const AttributionIndex& index, Registry& registry, const std::string& refusal) {
  auto unbuilt =
      registry.create_as<Model>(PluginKind::Model, index.config.model.plugin, index.config.model.options);
  if (!capability<LanguageModel>(*unbuilt))
    throw Error(fmt::format("{}; the index's model '{}' is not one", refusal, index.config.model.plugin));
}

// The prompts' gradients in the index's block order (the index may hold a selection of the blocks).
GradientBlocks in_index_order(const AttributionIndex& index, const GradientBlocks& blocks) {
  GradientBlocks out;
  for (const auto& name : index.record.block_names) {
    const auto it = std::find_if(blocks.begin(), blocks.end(), [&](const auto& e) { return e.name == name; });
    if (it == blocks.end()) throw Error(fmt::format("the examples' gradients have no block '{}'", name));
    out.push_back(*it);
  }
  return out;
}
}  // namespace

PromptGradients prompt_gradients(const AttributionIndex& index, Registry& registry, const RunPaths& paths,
                                 const std::vector<std::string>& prompts,
                                 const std::vector<std::string>& responses, std::int64_t max_tokens) {
  require_language_model(index, registry,
                         "--prompt: prompts as queries need a language model (use --validation ROW)");
  FinetunedModel tuned = finetuned_model(index.config, registry, paths);
  auto queries = prompt_query_gradients(stage_inputs("gradients", index.config), *tuned.model, prompts,
                                        responses, max_tokens);
  return {queries.prompts, queries.answers, std::move(queries.gradients)};
}

namespace {
// Ids of class (or condition) names of the run's dataset; errors name `option`.
std::vector<std::int64_t> class_ids(const FinetunedModel& tuned, const std::vector<std::string>& names,
                                    const std::string& option, const std::string& noun) {
  std::vector<std::int64_t> ids;
  for (const auto& name : names) {
    auto it = std::find(tuned.class_names.begin(), tuned.class_names.end(), name);
    if (it == tuned.class_names.end())
      throw Error(fmt::format("{} {}: not a {} of the index's dataset; {}s: {}", option, name, noun, noun,
                              fmt::join(tuned.class_names, ", ")));
    ids.push_back(it - tuned.class_names.begin());
  }
  return ids;
}

// The rows of `file` (.npy), each one of the run's inputs, and their class ids: `ids` holds one for
// all rows or one per row. Errors name `file_option` and `class_option`.
at::Tensor input_rows(const FinetunedModel& tuned, const fs::path& file, std::vector<std::int64_t>& ids,
                      const std::string& file_option, const std::string& class_option,
                      const std::string& noun) {
  std::int64_t values = 1;
  for (auto d : tuned.example_shape) values *= d;
  std::vector<std::int64_t> shape{-1};
  shape.insert(shape.end(), tuned.example_shape.begin(), tuned.example_shape.end());
  at::Tensor rows = load_npy(file).to(torch::kFloat);
  if (rows.dim() < 2 || rows.numel() % values != 0 || rows.numel() / rows.size(0) != values)
    throw Error(fmt::format("{} {}: expected rows of {} values (inputs of shape {}), found shape ({})",
                            file_option, file.string(), values, fmt::join(tuned.example_shape, " x "),
                            fmt::join(rows.sizes(), ", ")));
  rows = rows.reshape(shape).contiguous();
  const std::int64_t n = rows.size(0);
  if (ids.size() == 1) ids.assign(static_cast<std::size_t>(n), ids[0]);
  if (static_cast<std::int64_t>(ids.size()) != n)
    throw Error(fmt::format("{} {} has {} rows and {} {}; give one {} for all or one per row", file_option,
                            file.string(), n, ids.size(), class_option, noun));
  return rows;
}

// What `index append` adds, before it is written: gradients in the index's block order, and per row
// its label (-1: none) and what examples.jsonl says of it beyond split, row and id.
// Under `inflab launch` every rank reads the whole file (labels and descriptions cover all rows) and
// takes the gradients of its share alone: `first` is the share's first row, `gradients` its rows.
struct AppendedRows {
  GradientBlocks gradients;
  std::int64_t first = 0;
  std::vector<std::int64_t> labels;
  std::vector<nlohmann::json> descriptions;
};

// Every rank's contiguous share of n rows, [first, end), in rank order: they differ by at most one row.
std::vector<std::pair<std::int64_t, std::int64_t>> rank_shares(std::int64_t n) {
  const std::int64_t ranks = distributed_world_size();
  std::vector<std::pair<std::int64_t, std::int64_t>> out;
  for (std::int64_t r = 0; r < ranks; ++r) out.push_back({n * r / ranks, n * (r + 1) / ranks});
  return out;
}
std::pair<std::int64_t, std::int64_t> rank_share(std::int64_t n) {
  return rank_shares(n)[static_cast<std::size_t>(distributed_rank())];
}

AppendedRows appended_prompts(const AttributionIndex& index, Registry& registry, const RunPaths& paths,
                              const fs::path& examples_file) {
  std::vector<std::string> prompts, responses;
  std::vector<int> line_numbers;
  read_prompt_lines(examples_file, /*need_response=*/true, prompts, responses, &line_numbers);
  if (prompts.empty())
    throw Error(
        fmt::format(R"({}: no examples; expected one {{"prompt": "...", "response": "..."}} per line)",
                    examples_file.string()));
  log(fmt::format("index append: {} examples from {}", prompts.size(), examples_file.string()));
  AppendedRows out;
  // Plain variables, not structured bindings: clang 14 cannot capture those in a lambda.
  const auto range = rank_share(static_cast<std::int64_t>(prompts.size()));
  const std::int64_t first = range.first, end = range.second;
  out.first = first;
  if (end > first) {
    auto share = [&](const std::vector<std::string>& all) {
      return std::vector<std::string>(all.begin() + first, all.begin() + end);
    };
    out.gradients = in_index_order(
        index, prompt_gradients(index, registry, paths, share(prompts), share(responses), 0).gradients);
  }
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    out.labels.push_back(-1);
    out.descriptions.push_back({{"text", prompts[i]},
                                {"response", responses[i]},
                                {"source", fmt::format("{}:{}", examples_file.string(), line_numbers[i])}});
  }
  return out;
}

// A classifier's or a denoiser's inputs (.npy rows) with their classes; their denoising noise is
// drawn from the ids they get in the index (first_id + i).
AppendedRows appended_inputs(const AttributionIndex& index, Registry& registry, const RunPaths& paths,
                             const fs::path& examples_file, const std::vector<std::string>& classes,
                             std::int64_t first_id) {
  const bool denoiser = find_task(index.config.task)->generates_images;
  const std::string noun = denoiser ? "condition" : "class";
  if (examples_file.extension() != ".npy")
    throw Error(
        fmt::format("index append {}: expected a .npy of inputs, one per row, with --class NAME; prompts "
                    "with responses (JSON lines) are for a language model's index, and the index's "
                    "model '{}' is not one",
                    examples_file.string(), index.config.model.plugin));
  if (classes.empty())
    throw Error(
        fmt::format("index append {}: give the rows' {} with --class NAME (one for all, or one per row)",
                    examples_file.string(), noun));
  FinetunedModel tuned = finetuned_model(index.config, registry, paths);
  std::vector<std::int64_t> ids = class_ids(tuned, classes, "--class", noun);
  const at::Tensor rows = input_rows(tuned, examples_file, ids, "index append", "--class", noun);
  log(fmt::format("index append: {} rows from {}", rows.size(0), examples_file.string()));
  AppendedRows out;
  const auto [first, end] = rank_share(rows.size(0));
  out.first = first;
  if (end > first)
    out.gradients = in_index_order(
        index, image_query_gradients(stage_inputs("gradients", index.config), *tuned.model,
                                     rows.slice(0, first, end).contiguous(),
                                     std::vector<std::int64_t>(ids.begin() + first, ids.begin() + end),
                                     first_id + first));
  out.labels = ids;
  for (std::int64_t i = 0; i < rows.size(0); ++i)
    out.descriptions.push_back({{"source", fmt::format("{}:{}", examples_file.string(), i)}});
  return out;
}
}  // namespace

AppendResult append_to_index(const fs::path& dir, Registry& registry, const RunPaths& paths,
                             const fs::path& examples_file, const std::vector<std::string>& classes) {
  // Every byte checked: the new CHECKSUMS vouches for the old files too.
  AttributionIndex index = open_index(dir, registry, std::numeric_limits<double>::infinity());
  const std::int64_t first_row = index.train.rows();
  // Ids apart from the run's and from explain's image queries (2,000,000,000 + i).
  const std::int64_t first_id = 3'000'000'000 + first_row;
  auto unbuilt =
      registry.create_as<Model>(PluginKind::Model, index.config.model.plugin, index.config.model.options);
  AppendedRows appended;
  if (capability<LanguageModel>(*unbuilt)) {
    if (!classes.empty())
      throw Error(
          "index append --class: a language model's examples are prompts with responses; they have no class");
    appended = appended_prompts(index, registry, paths, examples_file);
  } else {
    appended = appended_inputs(index, registry, paths, examples_file, classes, first_id);
  }
  const GradientBlocks& gradients = appended.gradients;
  const auto added = static_cast<std::int64_t>(appended.labels.size());

  // A shard per rank with rows (one in a single process), each written beside its place by its rank
  // (a leftover of an interrupted append, unknown to index.json, is replaced); rank 0 renames them
  // into place once all are written.
  IndexRecord record = index.record;
  std::vector<std::int64_t> share_rows;  // the non-empty shares' sizes in rank order: a shard each
  std::size_t mine = 0;                  // this rank's shard among them
  for (const auto& [first, end] : rank_shares(added)) {
    if (end == first) continue;
    if (first < appended.first) ++mine;
    share_rows.push_back(end - first);
  }
  auto staging_of = [](fs::path shard) { return shard += ".appending"; };
  if (!gradients.empty()) {
    const fs::path staging = staging_of(shard_directory(dir, record.shard_rows.size() + mine));
    fs::remove_all(staging);
    for (std::size_t b = 0; b < gradients.size(); ++b)
      write_rows(staging / (record.block_names[b] + ".npy"), gradients[b].values, record.dtype);
  }
  barrier_over_ranks();  // every rank's shard is written
  const bool writer = distributed_rank() == 0;
  // Every changed file as one update (IndexUpdate): only renames stand between the old index and the
  // new one.
  IndexUpdate update(dir);
  for (std::int64_t n : share_rows) {
    const fs::path shard = shard_directory(dir, record.shard_rows.size());
    if (writer) {
      fs::remove_all(shard);
      fs::rename(staging_of(shard), shard);
      for (const auto& name : record.block_names)
        update.add_in_place(fmt::format("shards/{:05d}/{}.npy", record.shard_rows.size(), name));
    }
    record.shard_rows.push_back(n);
    record.appended.push_back({examples_file.string(), n});
  }
  record.examples += added;
  if (!writer) {
    barrier_over_ranks();  // rank 0 has committed the update
    return {record, added};
  }
  ExampleMeta train_meta = index.train_meta;
  std::string examples = fs::exists(dir / "examples.jsonl") ? read_file(dir / "examples.jsonl") : "";
  for (std::int64_t i = 0; i < added; ++i) {
    const std::int64_t id = first_id + i, label = appended.labels[static_cast<std::size_t>(i)];
    train_meta.ids.push_back(id), train_meta.labels.push_back(label),
        train_meta.observed_labels.push_back(label);
    train_meta.flipped.push_back(0);
    nlohmann::json row{{"split", "train"}, {"row", first_row + i}, {"id", id}, {"label", label}};
    row.update(appended.descriptions[static_cast<std::size_t>(i)]);
    examples += row.dump() + "\n";
  }
  update.stage("meta.json", [&](const fs::path& path) {
    write_file_atomic(
        path,
        nlohmann::json{{"train", meta_json(train_meta)}, {"query", meta_json(index.query_meta)}}.dump() +
            "\n");
  });
  update.stage("examples.jsonl", [&](const fs::path& path) { write_file_atomic(path, examples); });
  const IndexRows rows = map_rows(dir, record);
  for (const auto& fit : record.fits)
    if (fit.self_influence)  // over all rows, with the kept fit (which the appended rows leave as it is)
      update.stage(fmt::format("fits/{}/self_influence.npy", fit.estimator), [&](const fs::path& path) {
        save_npy(path, kept_self_influence(rows, kept_inverses(dir, fit.estimator, record.block_names)));
      });
  update.stage("index.json",
               [&](const fs::path& path) { write_file_atomic(path, record_json(record).dump(1) + "\n"); });
  update.commit();
  barrier_over_ranks();
  return {record, added};
}

ImageGradients image_gradients(const AttributionIndex& index, Registry& registry, const RunPaths& paths,
                               const std::vector<std::string>& conditions, const fs::path& images_file,
                               std::int64_t sampling_steps, std::uint64_t seed) {
  if (conditions.empty()) throw Error("--image: give the images' condition with --condition NAME");
  if (!find_task(index.config.task)->generates_images)  // before any model is built
    throw Error(
        fmt::format("--condition/--image: the index's run is not a denoiser (task '{}'); use --validation "
                    "ROW or, for a language model, --prompt",
                    index.config.task));
  FinetunedModel tuned = finetuned_model(index.config, registry, paths);
  std::vector<std::int64_t> ids = class_ids(tuned, conditions, "--condition", "condition");
  ImageGradients out;
  if (images_file.empty()) {
    SamplingOptions options;
    options.diffusion_steps = tuned.task_options.get_int("diffusion_steps");
    options.sampling_steps = sampling_steps;
    options.seed = seed;
    out.images = sample_images(*tuned.model, ids, tuned.example_shape, options).contiguous();
  } else {
    out.images = input_rows(tuned, images_file, ids, "--image", "--condition", "condition");
  }
  for (auto id : ids) out.conditions.push_back(tuned.class_names[static_cast<std::size_t>(id)]);
  out.gradients =
      image_query_gradients(stage_inputs("gradients", index.config), *tuned.model, out.images, ids);
  return out;
}

void check_validation_rows(const AttributionIndex& index, const std::vector<std::int64_t>& rows) {
  const std::int64_t count = index.queries.empty() ? 0 : index.queries[0].values.size(0);
  for (auto row : rows)
    if (row < 0 || row >= count)
      throw Error(
          fmt::format("--validation {}: the index's run has validation rows 0 to {}", row, count - 1));
}

GradientBlocks gather_queries(const AttributionIndex& index, const std::vector<std::int64_t>& validation_rows,
                              const GradientBlocks& extra) {
  check_validation_rows(index, validation_rows);
  GradientBlocks out;
  for (std::size_t b = 0; b < index.queries.size(); ++b) {
    std::vector<torch::Tensor> pieces;
    if (!validation_rows.empty())
      pieces.push_back(index.queries[b].values.index_select(0, torch::tensor(validation_rows, torch::kLong)));
    if (!extra.empty()) {  // by name: the index may hold a selection of the blocks ([evaluation] blocks)
      const auto& name = index.queries[b].name;
      const auto it = std::find_if(extra.begin(), extra.end(), [&](const auto& e) { return e.name == name; });
      if (it == extra.end()) throw Error(fmt::format("the queries' gradients have no block '{}'", name));
      pieces.push_back(it->values);
    }
    out.push_back({index.queries[b].name, torch::cat(pieces).contiguous()});
  }
  return out;
}

namespace {

// compute()'s result; its wall-clock seconds into `seconds`.
template <class Compute>
auto timed(double& seconds, Compute&& compute) {
  const auto start = std::chrono::steady_clock::now();
  auto result = compute();
  seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

}  // namespace

PreconditionedQueries precondition_queries(const AttributionIndex& index, Registry& registry,
                                           const std::string& name, const std::vector<std::string>& sets,
                                           const GradientBlocks& queries, bool want_self_influence) {
  const PluginRecord& plugin = registry.find(PluginKind::Estimator, name);
  Options options =
      options_from_assignments(fmt::format("estimator '{}'", name), plugin.info->options(), sets);
  auto estimator = with_rescaling(registry.create_as<Estimator>(PluginKind::Estimator, name, options));
  refuse_over_checkpoints(*estimator, name, "the index");
  if (estimator->preconditioner_degree() == 0) return {queries, fmt::format("{} (no preconditioner)", name)};
  const auto kept = std::find_if(index.record.fits.begin(), index.record.fits.end(), [&](const IndexFit& f) {
    return f.estimator == name && f.version == plugin.info->version && f.options == sets;
  });
  PreconditionedQueries out;
  if (kept != index.record.fits.end()) {
    const auto inverses = kept_inverses(index.dir, name, index.record.block_names);
    for (std::size_t b = 0; b < queries.size(); ++b)  // Row j of F is M^{-1} e_j: M^{-1} v = F^T v, V = Q F.
      out.blocks.push_back(
          {queries[b].name,
           queries[b].values.to(torch::kDouble).mm(inverses[b].to(torch::kDouble)).to(torch::kFloat)});
    out.source = fmt::format("{} {} (fitted when the index was built)", name, plugin.info->version);
    if (want_self_influence && kept->self_influence) {
      const fs::path file = index.dir / "fits" / name / "self_influence.npy";
      out.self_influence = load_npy(file);
      if (out.self_influence.dim() != 1 || out.self_influence.size(0) != index.train.rows())
        throw Error(fmt::format("{}: expected {} values (one per training row), found shape ({})",
                                file.string(), index.train.rows(),
                                fmt::join(out.self_influence.sizes(), ", ")));
    } else if (want_self_influence) {
      log(
          fmt::format("explain: computing the self-influence of the {} training rows from the kept fit "
                      "(`inflab index build --self-influence` keeps it)",
                      index.train.rows()));
      out.self_influence =
          timed(out.self_influence_seconds, [&] { return kept_self_influence(index.train, inverses); });
    }
    return out;
  }
  const auto n = index.train.rows();
  const std::size_t run_shards = index.record.run_shards();  // appended examples are not fitted on
  log(fmt::format(
      "explain: fitting {} ({}) now on the run's {} training rows read into memory (the index keeps no such "
      "fit; `inflab index build --fit` keeps one where it is smaller than the rows)",
      name, options_text(sets), n - appended_rows(index.record)));
  GradientBlocks train, every;  // the run's rows; with the appended ones (self-influence)
  for (std::size_t b = 0; b < index.train.block_names.size(); ++b) {
    std::vector<at::Tensor> parts;
    for (std::size_t s = 0; s < index.train.shards.size(); ++s)
      parts.push_back(index.train.float_rows(s, b, 0, index.train.shards[s][b].size(0)));
    if (run_shards < parts.size()) every.push_back({index.train.block_names[b], torch::cat(parts)});
    parts.resize(run_shards);
    train.push_back({index.train.block_names[b], torch::cat(parts).contiguous()});
    if (const auto tokens = index.record.factor_tokens[b]; tokens > 0) {
      const std::string factors = (index.dir / "factors" / index.train.block_names[b]).string();
      train.back().activation_covariance = load_npy(factors + ".activation.npy");
      train.back().gradient_covariance = load_npy(factors + ".gradient.npy");
      train.back().factor_tokens = tokens;
    }
  }
  estimator->fit(train);
  for (std::size_t b = 0; b < queries.size(); ++b) {
    at::Tensor r = estimator->inverse_product(b, queries[b].values);
    if (const int e = score_exponent(*estimator, b); e != 0)
      r = r.to(torch::kDouble).mul_(std::ldexp(1.0, e));
    out.blocks.push_back({queries[b].name, r.to(torch::kFloat).contiguous()});
  }
  out.source = fmt::format("{} {} (fitted now, in memory)", name, plugin.info->version);
  if (want_self_influence) {
    log(
        fmt::format("explain: computing the self-influence of the {} training rows with {} (one inverse "
                    "product per row)",
                    n, name));
    out.self_influence = timed(out.self_influence_seconds,
                               [&] { return self_influence(*estimator, every.empty() ? train : every); });
  }
  return out;
}

std::vector<QueryRanking> rank_index_rows(const IndexRows& rows, const GradientBlocks& preconditioned,
                                          std::int64_t k, std::int64_t chunk_rows,
                                          const std::string& progress_label, const RowDivisors& divisors) {
  if (divisors.given.defined() && (divisors.given.dim() != 1 || divisors.given.size(0) != rows.rows()))
    throw Error(fmt::format("{} row divisors for an index of {} rows", divisors.given.numel(), rows.rows()));
  const at::Tensor row_scale =
      divisors.given.defined() ? reciprocal_or_zero(divisors.given).to(torch::kFloat) : at::Tensor();
  const bool unit_rows = divisors.norms;
  if (preconditioned.size() != rows.block_names.size())
    throw Error(fmt::format("{} query blocks for an index of {} blocks", preconditioned.size(),
                            rows.block_names.size()));
  const std::int64_t queries = preconditioned.at(0).values.size(0), n = rows.rows();
  const std::int64_t top = std::min(k, n);
  if (chunk_rows <= 0) {
    std::int64_t width = 0;
    for (const auto& block : preconditioned) width += block.values.size(1);
    chunk_rows = std::max<std::int64_t>(256, (std::int64_t{1} << 22) / std::max<std::int64_t>(1, width));
  }
  // Running top k per query and side (queries down, their best rows across), merged chunk by chunk.
  // Scores are computed queries x rows so that top k runs along contiguous memory.
  at::Tensor best[2], best_rows[2];  // 0: helpful (smallest), 1: harmful (largest)
  std::unique_ptr<Progress> progress;
  if (!progress_label.empty()) progress = std::make_unique<Progress>(progress_label, n, "rows");
  std::int64_t offset = 0;
  for (std::size_t s = 0; s < rows.shards.size(); ++s) {
    const std::int64_t shard_rows = rows.shards[s].empty() ? 0 : rows.shards[s][0].size(0);
    for (std::int64_t begin = 0; begin < shard_rows; begin += chunk_rows) {
      const std::int64_t count = std::min(chunk_rows, shard_rows - begin);
      at::Tensor scores, squared_norms;  // queries x count; count
      for (std::size_t b = 0; b < preconditioned.size(); ++b) {
        const at::Tensor block_rows = rows.float_rows(s, b, begin, count);
        at::Tensor part = matrix_product(preconditioned[b].values, block_rows.t());
        scores = b == 0 ? part.neg_() : scores.sub_(part);
        if (unit_rows)
          squared_norms =
              b == 0 ? squared_row_norms(block_rows) : squared_norms.add_(squared_row_norms(block_rows));
      }
      if (unit_rows) scores.mul_(reciprocal_or_zero(squared_norms.sqrt_()).unsqueeze(0));
      if (row_scale.defined()) scores.mul_(row_scale.narrow(0, offset + begin, count).unsqueeze(0));
      for (int side = 0; side < 2; ++side) {
        auto [values, where] = scores.topk(std::min(top, count), 1, /*largest=*/side == 1, /*sorted=*/false);
        where.add_(offset + begin);
        if (best[side].defined())
          values = torch::cat({best[side], values}, 1), where = torch::cat({best_rows[side], where}, 1);
        auto [kept, position] = values.topk(std::min(top, values.size(1)), 1, side == 1, /*sorted=*/true);
        best[side] = kept, best_rows[side] = where.gather(1, position);
      }
      if (progress) progress->advance(count);
    }
    offset += shard_rows;
  }
  std::vector<QueryRanking> out(static_cast<std::size_t>(queries));
  for (int side = 0; side < 2; ++side) {
    const at::Tensor values = best[side].contiguous(), where = best_rows[side].contiguous();
    const auto value = values.accessor<float, 2>();
    const auto row = where.accessor<std::int64_t, 2>();
    for (std::int64_t q = 0; q < queries; ++q)
      for (std::int64_t i = 0; i < values.size(1); ++i)
        (side == 0 ? out[static_cast<std::size_t>(q)].helpful : out[static_cast<std::size_t>(q)].harmful)
            .push_back({row[q][i], value[q][i]});
  }
  return out;
}

}  // namespace inflab
