#include "evaluation.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <set>

#include "inflab/distributed.hpp"
#include "inflab/io.hpp"
#include "inflab/metrics.hpp"
#include "named_rows.hpp"
#include "sections.hpp"
#include "stages/stages.hpp"

namespace inflab {

std::vector<double> to_doubles(const at::Tensor& t) {
  torch::Tensor c = t.to(torch::kDouble).contiguous().reshape({-1});
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

struct EvaluationContext {
  const ExperimentConfig& config;
  Registry& registry;
  const RunPaths& paths;
  const GradientStore& store;
  RunOutcome& outcome;
  bool writer;
  bool aggregate;
  std::optional<GroundTruth> truth;                        // lds
  std::map<std::string, std::vector<double>> all_scores;   // pearson, spearman: every score
  std::map<std::string, std::vector<double>> per_example;  // loo: each example's on the mean query loss
};

namespace {

// Pairwise scores are averaged over queries: by linearity this equals the aggregate score.
std::vector<double> on_mean_query(const EvaluationContext& c, const at::Tensor& scores) {
  return to_doubles(c.aggregate ? scores : scores.mean(1));
}

void mislabel_auc(EvaluationContext& c, EstimatorOutcome& result, const at::Tensor& scores) {
  const std::vector<int> flipped(c.store.train_meta.flipped.begin(), c.store.train_meta.flipped.end());
  if (std::count(flipped.begin(), flipped.end(), 1) > 0)
    result.metrics["auc"] = roc_auc(on_mean_query(c, scores), flipped);
}

void keep_scores(EvaluationContext& c, EstimatorOutcome& result, const at::Tensor& scores) {
  c.all_scores[result.label] = to_doubles(scores);
}

template <double (*correlation)(const std::vector<double>&, const std::vector<double>&)>
void against_reference(EvaluationContext& c, std::vector<EstimatorOutcome>& estimators, const char* metric) {
  const auto& reference = c.all_scores.at(c.config.evaluation.reference);
  for (auto& e : estimators)
    if (auto found = c.all_scores.find(e.label); found != c.all_scores.end())
      e.metrics[metric] = correlation(found->second, reference);
}

// Paper Table 2: per query (a column of the n x q pairwise scores), the AUC of "same class as the
// query" against the influence ranking and the recall among the top s, s = training examples of
// the query's class (or, class_recall_at = "queries", the queries of its class: the diffusion
// notebook); both averaged over queries (the most helpful, i.e. most negative, ranked first).
void class_detection_metrics(EvaluationContext& c, EstimatorOutcome& result, const at::Tensor& scores) {
  const auto& train_labels = c.store.train_meta.labels;
  const auto& query_labels = c.store.query_meta.labels;
  if (train_labels.empty() || query_labels.size() != static_cast<std::size_t>(scores.size(1)))
    throw Error("metric class_detection needs the class labels of the training and query examples");
  const bool recall_at_queries = c.config.evaluation.class_recall_at == "queries";
  torch::Tensor columns = scores.to(torch::kDouble).contiguous();
  double auc = 0, recall = 0;
  for (std::int64_t q = 0; q < scores.size(1); ++q) {
    const auto label = query_labels[static_cast<std::size_t>(q)];
    const auto s = recall_at_queries ? std::count(query_labels.begin(), query_labels.end(), label)
                                     : std::count(train_labels.begin(), train_labels.end(), label);
    const ClassDetection d = class_detection(to_doubles(columns.select(1, q)), train_labels, label, s);
    auc += d.auc, recall += d.recall;
  }
  const double queries = static_cast<double>(scores.size(1));
  result.metrics["class_auc"] = auc / queries;
  result.metrics["class_recall"] = recall / queries;
}

// The ground-truth stage needs the model at its initialisation on the (cached) base: it runs its
// own chain data -> base -> ground_truth, so it is independent of whether gradients were cached.
void retrain_on_subsets(EvaluationContext& c) {
  auto chain = base_model(c.config, c.registry, c.paths, c.outcome);
  c.truth =
      ground_truth(stage_inputs("ground_truth", c.config), *chain.model, chain.data, c.paths, c.outcome);
}

// Linear datamodeling score (Park et al., TRAK, 2023). Per query, the Spearman correlation over the
// subsets between a subset's predicted effect, the sum of its examples' scores (a positive score
// means up-weighting the example raises the query's loss, so a subset's predicted loss grows with
// it), and the query's loss after fine-tuning on that subset; the mean over queries. Aggregate
// scores (against the mean query gradient) are correlated with the mean query loss instead.
void linear_datamodeling_score(EvaluationContext& c, EstimatorOutcome& result, const at::Tensor& scores) {
  const GroundTruth& truth = *c.truth;
  torch::Tensor effects = scores.to(torch::kDouble);
  if (c.aggregate) effects = effects.reshape({-1, 1});
  const torch::Tensor predicted = truth.subsets.to(torch::kDouble).matmul(effects).contiguous();
  const torch::Tensor measured = (c.aggregate ? truth.losses.mean(1, true) : truth.losses).contiguous();
  double total = 0;
  std::int64_t counted = 0;
  for (std::int64_t q = 0; q < predicted.size(1); ++q) {
    const double r = spearman(to_doubles(predicted.select(1, q)), to_doubles(measured.select(1, q)));
    if (!std::isnan(r)) total += r, ++counted;  // a query whose loss never changed has no ranking
  }
  result.metrics["lds"] = counted ? total / static_cast<double>(counted) : std::nan("");
}

void keep_per_example(EvaluationContext& c, EstimatorOutcome& result, const at::Tensor& scores) {
  c.per_example[result.label] = on_mean_query(c, scores);
}

// Leave-one-out. Each estimator's per-example score on the mean query loss predicts that removing
// example i changes the mean loss by about -score_i / n. The rows left out are every estimator's k
// most helpful and k most harmful (their union, so every estimator is judged on the same
// examples); per estimator, `loo` is the Pearson correlation over them of -score with the measured
// change, and `loo_sign` the share of its own 2k picks whose measured change has the predicted sign.
void leave_one_out_metrics(EvaluationContext& c, std::vector<EstimatorOutcome>& estimators) {
  const StageInputs inputs = stage_inputs("leave_one_out", c.config);
  const std::int64_t k = inputs.get_int("leave_one_out.examples");
  std::set<std::int64_t> chosen;
  std::map<std::string, std::vector<std::int64_t>> picks;
  for (const auto& entry : c.per_example) {  // not a structured binding: C++17 lambdas cannot capture one
    const std::vector<double>& scores = entry.second;
    std::vector<std::int64_t> order(scores.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return scores[a] < scores[b]; });
    const auto take = std::min<std::int64_t>(k, static_cast<std::int64_t>(order.size()) / 2);
    auto& mine = picks[entry.first];
    mine.assign(order.begin(), order.begin() + take);
    mine.insert(mine.end(), order.end() - take, order.end());
    chosen.insert(mine.begin(), mine.end());
  }
  const std::vector<std::int64_t> rows(chosen.begin(), chosen.end());
  // Its own chain data -> base -> leave_one_out, like the ground truth's.
  auto chain = base_model(c.config, c.registry, c.paths, c.outcome);
  const LeaveOneOut measured = leave_one_out(inputs, *chain.model, chain.data, rows, c.paths, c.outcome);
  std::map<std::int64_t, double> change;
  for (std::size_t i = 0; i < rows.size(); ++i) change[rows[i]] = measured.change[i];
  std::string csv = "row,measured_change";
  for (std::size_t r = 0; r < measured.change_per_seed.size(); ++r) csv += fmt::format(",change_seed{}", r);
  for (const auto& [label, scores] : c.per_example) csv += "," + label;
  csv += "\n";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    csv += fmt::format("{},{:.8g}", rows[i], measured.change[i]);
    for (const auto& changes : measured.change_per_seed) csv += fmt::format(",{:.8g}", changes[i]);
    for (const auto& [label, scores] : c.per_example) csv += fmt::format(",{:.8g}", scores[rows[i]]);
    csv += "\n";
  }
  if (c.writer) write_file_atomic(c.outcome.directory / "leave_one_out.csv", csv);
  for (auto& e : estimators) {
    auto found = c.per_example.find(e.label);
    if (found == c.per_example.end()) continue;
    std::vector<double> predicted;
    for (auto row : rows) predicted.push_back(-found->second[row]);
    e.metrics["loo"] = pearson(predicted, measured.change);
    double agree = 0;
    for (auto row : picks[e.label]) agree += (-found->second[row] > 0) == (change[row] > 0);
    e.metrics["loo_sign"] = agree / static_cast<double>(picks[e.label].size());
  }
}

}  // namespace

const std::vector<MetricDefinition>& metric_definitions() {
  static const std::vector<MetricDefinition> table{
      {.name = "auc",
       .rows = "auc: ROC AUC of the flipped training labels (mislabel detection)",
       .of_estimator = mislabel_auc},
      {.name = "pearson",
       .rows = "pearson: with the reference estimator's scores",
       .needs_reference = true,
       .of_estimator = keep_scores,
       .after_all = [](EvaluationContext& c,
                       std::vector<EstimatorOutcome>& e) { against_reference<pearson>(c, e, "pearson"); }},
      {.name = "spearman",
       .rows = "spearman: with the reference estimator's scores (mid-ranks)",
       .needs_reference = true,
       .of_estimator = keep_scores,
       .after_all = [](EvaluationContext& c,
                       std::vector<EstimatorOutcome>& e) { against_reference<spearman>(c, e, "spearman"); }},
      {.name = "class_detection",
       .rows = "class_auc, class_recall: per query, the query's class among the training examples",
       .needs_pairwise = true,
       .of_estimator = class_detection_metrics},
      {.name = "lds",
       .rows = "lds: linear datamodeling score against retraining on subsets",
       .section = "ground_truth",
       .options =
           {{"subsets", OptionType::Int, std::int64_t{100},
             "fine-tunings on random subsets of the training set (metric lds; at least 5 for a rank "
             "correlation)",
             false, between(5, 1e6)},
            {"fraction", OptionType::Double, 0.5,
             "share of the training examples in each subset (1: every subset is the whole set, a check)",
             false, Range{0, 1, true, false}},
            {"seed", OptionType::Int, std::int64_t{0}, "seed drawing the subsets"}},
       .retrains = true,
       .prepare = retrain_on_subsets,
       .of_estimator = linear_datamodeling_score},
      {.name = "loo",
       .rows = "loo, loo_sign: against retraining without single examples",
       .section = "leave_one_out",
       .options =
           {{"examples", OptionType::Int, std::int64_t{5},
             "per estimator, its k most helpful and k most harmful training examples are each left out "
             "(metric loo)",
             false, between(1, 1e6)},
            {"repeats", OptionType::Int, std::int64_t{3},
             "training seeds each removal (and the full fine-tuning) is repeated with; their mean is "
             "reported",
             false, between(1, 1e6)}},
       .retrains = true,
       .of_estimator = keep_per_example,
       .after_all = leave_one_out_metrics},
  };
  return table;
}

// [evaluation]: which metrics (the table above), and how the gradients they are computed from are
// kept (read by the gradients stage).
const SectionSchema& evaluation_section() {
  static const SectionSchema section{
      "evaluation",
      {
          {"metrics", OptionType::StringList, std::vector<std::string>{"auc"},
           "auc (mislabel detection), pearson, spearman (against the reference)"},
          {"reference", OptionType::String, std::string(),
           "estimator name correlations are measured against"},
          {"mode", OptionType::String, std::string("aggregate"),
           "aggregate (mean validation gradient) or pairwise"},
          {"gradient_batch_size", OptionType::Int, std::int64_t{64},
           "batch size of per-example gradient extraction", false, between(1, 1e9)},
          {"gradient_memory_mb", OptionType::Double, 4096.0,
           "training gradients larger than this are written to memory-mapped files during extraction", false,
           at_least(0)},
          {"gradient_dtype", OptionType::String, std::string("float32"),
           "float32 or float16 (stored; arithmetic is float32)"},
          {"blocks", OptionType::StringList, std::vector<std::string>{"*"},
           "glob patterns over block names taking part in influence, e.g. [\"*.lora_B\"] or [\"fc2.*\"]"},
          {"class_recall_at", OptionType::String, std::string("training"),
           "class_detection's recall counts the query's class among its s most helpful training examples: s "
           "= the class's \"training\" examples (the paper's text code) or its \"queries\" (the diffusion "
           "notebook)"},
      },
      [](Options& values) -> std::optional<SectionProblem> {
        if (auto problem = one_of(values, "evaluation", "mode", {"aggregate", "pairwise"})) return problem;
        if (auto problem = one_of(values, "evaluation", "class_recall_at", {"training", "queries"}))
          return problem;
        if (auto problem = one_of(values, "evaluation", "gradient_dtype", {"float32", "float16"},
                                  " (bfloat16 has no NumPy dtype)"))
          return problem;
        if (values.get_string_list("blocks").empty())
          return SectionProblem{
              "blocks",
              "key 'evaluation.blocks': expected at least one pattern (\"*\" selects every block), "
              "found []"};
        for (const auto& metric : values.get_string_list("metrics")) {
          const MetricDefinition* definition = find_metric(metric);
          if (!definition) {
            const std::string suggestion = closest_match(metric, metric_names());
            return SectionProblem{
                "metrics",
                fmt::format("key 'evaluation.metrics': unknown metric \"{}\"{}; known: {}", metric,
                            suggestion.empty() ? "" : fmt::format(" (did you mean \"{}\"?)", suggestion),
                            fmt::join(metric_names(), ", "))};
          }
          if (definition->needs_reference && values.get_string("reference").empty())
            return SectionProblem{
                "", fmt::format("metric \"{}\" needs evaluation.reference = \"<estimator name>\"", metric)};
          if (definition->needs_pairwise && values.get_string("mode") != "pairwise")
            return SectionProblem{"metrics",
                                  fmt::format("metric \"{}\" scores each query on its own: it needs "
                                              "evaluation.mode = \"pairwise\"",
                                              metric)};
        }
        return std::nullopt;
      }};
  return section;
}

EvaluationConfig evaluation_config(const Options& values) {
  return {.metrics = values.get_string_list("metrics"),
          .reference = values.get_string("reference"),
          .mode = values.get_string("mode"),
          .blocks = values.get_string_list("blocks"),
          .class_recall_at = values.get_string("class_recall_at")};
}

const MetricDefinition* find_metric(std::string_view name) { return find_named(metric_definitions(), name); }

std::vector<std::string> metric_names() { return names_of(metric_definitions()); }

Evaluation::Evaluation(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
                       const GradientStore& store, RunOutcome& outcome, bool writer)
    : context_(new EvaluationContext{config,
                                     registry,
                                     paths,
                                     store,
                                     outcome,
                                     writer,
                                     config.evaluation.mode == "aggregate",
                                     {},
                                     {},
                                     {}}) {
  for (const auto& definition : metric_definitions()) {  // the table's order: metrics.csv is sorted anyway
    const auto& wanted = config.evaluation.metrics;
    if (std::find(wanted.begin(), wanted.end(), definition.name) == wanted.end()) continue;
    if (definition.retrains && distributed_world_size() > 1)
      throw Error(
          fmt::format("metric \"{}\" retrains on one process; run the experiment without `inflab launch`",
                      definition.name));
    asked_.push_back(&definition);
  }
  for (const auto* definition : asked_)
    if (definition->prepare) definition->prepare(*context_);
}

Evaluation::~Evaluation() = default;

void Evaluation::of_estimator(EstimatorOutcome& result, const at::Tensor& scores) {
  for (const auto* definition : asked_)
    if (definition->of_estimator) definition->of_estimator(*context_, result, scores);
}

void Evaluation::after_all(std::vector<EstimatorOutcome>& estimators) {
  for (const auto* definition : asked_)
    if (definition->after_all) definition->after_all(*context_, estimators);
}

}  // namespace inflab
