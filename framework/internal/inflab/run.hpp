// What a run is given (where results and the stage cache go) and what it produces (per stage its
// seconds and whether the cache had it, per estimator its seconds and metrics). The stages and the
// orchestrator (pipeline.hpp) both use these; the stages need nothing else of the orchestrator.
#pragma once
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace inflab {

struct RunPaths {
  std::filesystem::path results_root = "results";
  std::filesystem::path cache_root;  // default: $INFLAB_CACHE or ~/.cache/inflab
};
std::filesystem::path default_cache_root();

struct EstimatorOutcome {
  std::string label;
  double seconds = 0;
  std::map<std::string, double> metrics;
};

struct RunOutcome {
  std::filesystem::path directory;
  std::map<std::string, double> stage_seconds;
  std::map<std::string, bool> stage_cached;
  std::vector<EstimatorOutcome> estimators;
  bool skipped = false;  // a finished run found on disk (resume)
};

}  // namespace inflab
