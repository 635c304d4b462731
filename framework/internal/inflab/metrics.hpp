// Evaluation metrics on plain vectors (no LibTorch needed to use or test them).
#pragma once
#include <cstdint>
#include <vector>

namespace inflab {

// ROC AUC of `scores` for the positives in `labels` (1 = positive): the probability that a
// random positive outranks a random negative, ties counted one half (Mann-Whitney U).
double roc_auc(const std::vector<double>& scores, const std::vector<int>& labels);
double pearson(const std::vector<double>& x, const std::vector<double>& y);
double spearman(const std::vector<double>& x, const std::vector<double>& y);  // mid-ranks for ties
std::vector<double> mid_ranks(const std::vector<double>& values);             // 1-based

// Class detection for one query (paper Table 2): AUC of "same class as the query" against the
// influence ranking, and recall = share of same-class examples among the top s.
struct ClassDetection {
  double auc;
  double recall;
};
ClassDetection class_detection(const std::vector<double>& influence,
                               const std::vector<std::int64_t>& train_labels, std::int64_t query_label,
                               std::int64_t s);

}  // namespace inflab
