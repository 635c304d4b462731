#include "inflab/metrics.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "inflab/error.hpp"

namespace inflab {

std::vector<double> mid_ranks(const std::vector<double>& values) {
  std::vector<std::size_t> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return values[a] < values[b]; });
  std::vector<double> ranks(values.size());
  for (std::size_t i = 0; i < order.size();) {
    std::size_t j = i;
    while (j + 1 < order.size() && values[order[j + 1]] == values[order[i]]) ++j;
    double rank = 0.5 * static_cast<double>(i + j) + 1.0;  // average of 1-based ranks i+1..j+1
    for (std::size_t k = i; k <= j; ++k) ranks[order[k]] = rank;
    i = j + 1;
  }
  return ranks;
}

double roc_auc(const std::vector<double>& scores, const std::vector<int>& labels) {
  if (scores.size() != labels.size())
    throw Error(fmt::format("roc_auc: {} scores but {} labels", scores.size(), labels.size()));
  auto ranks = mid_ranks(scores);
  double positives = 0, rank_sum = 0;
  for (std::size_t i = 0; i < labels.size(); ++i)
    if (labels[i]) positives += 1, rank_sum += ranks[i];
  double negatives = static_cast<double>(labels.size()) - positives;
  if (positives == 0 || negatives == 0) return std::nan("");
  return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives);
}

double pearson(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() != y.size() || x.size() < 2)
    throw Error(
        fmt::format("pearson: needs two equal-length vectors of at least 2 values, got "
                    "{} and {}",
                    x.size(), y.size()));
  double n = static_cast<double>(x.size());
  double mx = std::accumulate(x.begin(), x.end(), 0.0) / n;
  double my = std::accumulate(y.begin(), y.end(), 0.0) / n;
  double sxy = 0, sxx = 0, syy = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  if (sxx == 0 || syy == 0) return std::nan("");
  return sxy / std::sqrt(sxx * syy);
}

double spearman(const std::vector<double>& x, const std::vector<double>& y) {
  return pearson(mid_ranks(x), mid_ranks(y));
}

ClassDetection class_detection(const std::vector<double>& influence,
                               const std::vector<std::int64_t>& train_labels, std::int64_t query_label,
                               std::int64_t s) {
  if (influence.size() != train_labels.size())
    throw Error(
        fmt::format("class_detection: {} scores but {} labels", influence.size(), train_labels.size()));
  std::vector<int> same(train_labels.size());
  for (std::size_t i = 0; i < same.size(); ++i) same[i] = train_labels[i] == query_label;
  // The most influential examples are the most helpful ones: the most negative scores
  // (up-weighting them lowers the query loss), so rank by -influence.
  std::vector<double> helpfulness(influence.size());
  for (std::size_t i = 0; i < influence.size(); ++i) helpfulness[i] = -influence[i];
  ClassDetection result{roc_auc(helpfulness, same), 0.0};
  std::vector<std::size_t> order(influence.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return helpfulness[a] > helpfulness[b]; });
  std::int64_t top = std::min<std::int64_t>(s, static_cast<std::int64_t>(order.size()));
  std::int64_t hits = 0;
  for (std::int64_t i = 0; i < top; ++i) hits += same[order[i]];
  result.recall = top > 0 ? static_cast<double>(hits) / static_cast<double>(top) : std::nan("");
  return result;
}

}  // namespace inflab
