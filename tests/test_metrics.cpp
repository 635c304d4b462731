#include <catch2/catch.hpp>
#include <cmath>

#include "inflab/metrics.hpp"

TEST_CASE("roc_auc matches hand-computed values", "[metrics]") {
  // Pairs (positive, negative): (0.35,0.1) win, (0.35,0.4) loss, (0.8,0.1) win, (0.8,0.4) win.
  CHECK(inflab::roc_auc({0.1, 0.4, 0.35, 0.8}, {0, 0, 1, 1}) == Approx(0.75));
  // Ties count one half: positives {1, 2}, negatives {1, 0}: 0.5 + 1 + 1 + 1 over 4 pairs.
  CHECK(inflab::roc_auc({1, 1, 2, 0}, {1, 0, 1, 0}) == Approx(0.875));
  CHECK(inflab::roc_auc({3, 2, 1}, {1, 0, 0}) == Approx(1.0));
  CHECK(inflab::roc_auc({3, 2, 1}, {0, 0, 1}) == Approx(0.0));
  CHECK(std::isnan(inflab::roc_auc({1, 2}, {1, 1})));
}

TEST_CASE("pearson and spearman match hand-computed values", "[metrics]") {
  // sxy = 5, sxx = 2, syy = 114/9  ->  5 / sqrt(2 * 114 / 9)
  CHECK(inflab::pearson({1, 2, 3}, {2, 4, 7}) == Approx(5.0 / std::sqrt(2.0 * 114.0 / 9.0)));
  CHECK(inflab::pearson({1, 2, 3}, {3, 2, 1}) == Approx(-1.0));
  // Mid-ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4]: 4.5 / sqrt(4.5 * 5)
  CHECK(inflab::spearman({1, 2, 2, 3}, {10, 20, 30, 40}) == Approx(4.5 / std::sqrt(22.5)));
  auto ranks = inflab::mid_ranks({5, 1, 5, 3});
  CHECK(ranks == std::vector<double>{3.5, 1, 3.5, 2});
}

TEST_CASE("class detection ranks the most helpful (most negative) examples first", "[metrics]") {
  // helpfulness = -influence = [3, 1, -2, 2]; same class = [1, 0, 1, 1]
  auto result = inflab::class_detection({-3, -1, 2, -2}, {0, 1, 0, 0}, 0, 2);
  CHECK(result.recall == Approx(1.0));   // top two: examples 0 and 3, both class 0
  CHECK(result.auc == Approx(2.0 / 3));  // positives {3, -2, 2} against negative {1}
  auto one = inflab::class_detection({-3, -1, 2, -2}, {0, 1, 0, 0}, 1, 1);
  CHECK(one.recall == Approx(0.0));
}
