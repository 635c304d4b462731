#include "inflab/scoring.hpp"

#include <fmt/format.h>

#include "inflab/config.hpp"
#include "inflab/error.hpp"
#include "inflab/registry.hpp"

namespace inflab {

ScoredBlocks score_with_estimator(const Registry& registry, const std::string& estimator_name,
                                  const std::vector<std::string>& assignments, const std::string& mode,
                                  const GradientBlocks& train, const GradientBlocks& queries) {
  if (mode != "aggregate" && mode != "pairwise")
    throw Error(fmt::format("mode: expected aggregate or pairwise, found '{}'", mode));
  const PluginRecord& record = registry.find(PluginKind::Estimator, estimator_name);
  Options options = options_from_assignments(fmt::format("estimator '{}'", estimator_name),
                                             record.info->options(), assignments);
  check_blocks(train, queries);  // before the fit, which would otherwise meet a mismatch first
  auto estimator = registry.create_as<Estimator>(PluginKind::Estimator, estimator_name, options);
  estimator->fit(train);
  ScoredBlocks out;
  out.scores = mode == "aggregate" ? score_aggregate(*estimator, train, queries)
                                   : score_pairwise(*estimator, train, queries);
  out.diagnostics = estimator->diagnostics();
  return out;
}

}  // namespace inflab
