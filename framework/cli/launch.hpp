// `inflab launch`: a process supervisor that starts N local ranks of `inflab run` (like torchrun on
// one machine) and stops the others when one fails.
#pragma once
#include <string>
#include <vector>

namespace inflab {

// Returns 0 when every rank succeeded; throws an Error naming the rank that failed first.
int command_launch(int ranks, const std::vector<std::string>& run_arguments, int threads, double timeout);

}  // namespace inflab
