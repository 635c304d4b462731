// The metrics of `evaluation.metrics` (private): one table says, for each, what it needs and how it
// is computed. config.cpp validates against the table; run_experiment asks it for the metrics of
// each estimator's scores and, when every estimator is scored, for the ones that compare or retrain.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "inflab/options.hpp"

namespace at {
class Tensor;
}

namespace inflab {

class Registry;
struct ExperimentConfig;
struct GradientStore;
struct RunPaths;
struct RunOutcome;
struct EstimatorOutcome;
struct EvaluationContext;  // evaluation.cpp: the run, the store's labels and what the metrics gathered

struct MetricDefinition {
  std::string name;                 // as written in evaluation.metrics
  std::string_view rows;            // the metrics.csv rows it writes
  bool needs_reference = false;     // evaluation.reference names the estimator compared with
  bool needs_pairwise = false;      // evaluation.mode = "pairwise": one score per (training, query) pair
  std::string_view section;         // the configuration section only this metric reads ("" = none),
  std::vector<OptionSpec> options;  // and its keys (resolved only when the metric is asked for)
  bool retrains = false;            // fine-tunes again (ground truth): one process only
  // How it is computed; any of the three may be null. `prepare` runs before the estimators (the
  // retraining LDS compares with), `of_estimator` on each estimator's scores as they come, and
  // `after_all` once every estimator is scored.
  void (*prepare)(EvaluationContext&) = nullptr;
  void (*of_estimator)(EvaluationContext&, EstimatorOutcome&, const at::Tensor& scores) = nullptr;
  void (*after_all)(EvaluationContext&, std::vector<EstimatorOutcome>&) = nullptr;
};
const std::vector<MetricDefinition>& metric_definitions();
const MetricDefinition* find_metric(std::string_view name);
std::vector<std::string> metric_names();

struct EvaluationConfig;
// The typed [evaluation] section (sections.hpp: evaluation_section) from its validated values.
EvaluationConfig evaluation_config(const Options& values);

// One run's evaluation of the metrics its configuration asks for.
class Evaluation {
 public:
  Evaluation(const ExperimentConfig& config, Registry& registry, const RunPaths& paths,
             const GradientStore& store, RunOutcome& outcome, bool writer);
  ~Evaluation();
  Evaluation(const Evaluation&) = delete;
  Evaluation& operator=(const Evaluation&) = delete;
  void of_estimator(EstimatorOutcome& result, const at::Tensor& scores);
  void after_all(std::vector<EstimatorOutcome>& estimators);

 private:
  std::unique_ptr<EvaluationContext> context_;
  std::vector<const MetricDefinition*> asked_;
};

}  // namespace inflab
