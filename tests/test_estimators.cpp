// Each estimator against an independent dense float64 oracle on random problems.
#include <torch/torch.h>

#include <catch2/catch.hpp>

#include "helpers.hpp"
#include "inflab/error.hpp"
#include "inflab/estimator.hpp"
#include "inflab/registry.hpp"
#include "inflab/scoring.hpp"

using Catch::Matchers::Contains;

namespace {

std::unique_ptr<inflab::Estimator> make(const std::string& name,
                                        std::map<std::string, inflab::Value> set = {}) {
  return test::make<inflab::Estimator>(inflab::PluginKind::Estimator, name, set);
}

struct Problem {
  inflab::GradientBlocks train, queries;
};

// Gradients with unequal scales per example, as real per-example gradients have.
Problem random_problem(std::vector<std::int64_t> widths, std::int64_t n, std::int64_t q, std::uint64_t seed) {
  torch::manual_seed(seed);
  Problem p;
  for (std::size_t b = 0; b < widths.size(); ++b) {
    auto scales = torch::rand({n, 1}) * 2 + 0.1;
    p.train.push_back({"block" + std::to_string(b), (torch::randn({n, widths[b]}) * scales).contiguous()});
    p.queries.push_back({"block" + std::to_string(b), torch::randn({q, widths[b]})});
  }
  return p;
}

double lambda_rule(const torch::Tensor& g) {  // 0.1 * (1/(n d)) * sum_i ||g_i||^2, by hand
  auto G = g.to(torch::kDouble);
  return 0.1 * G.pow(2).sum().item<double>() / (G.size(0) * G.size(1));
}

// score(k, q) = - sum_l g_kl . r_lq with r_lq = inverse(l)(v_lq), all in float64.
torch::Tensor oracle_scores(
    const Problem& p, const std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>& solve) {
  torch::Tensor scores;
  for (std::size_t b = 0; b < p.train.size(); ++b) {
    auto G = p.train[b].values.to(torch::kDouble);
    auto V = p.queries[b].values.to(torch::kDouble);
    auto R = solve(G, V);  // d x Q
    auto s = -G.mm(R);
    scores = scores.defined() ? scores + s : s;
  }
  return scores;
}

double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a.to(torch::kDouble) - b.to(torch::kDouble)).norm() / b.to(torch::kDouble).norm()).item<double>();
}

torch::Tensor exact_solve(const torch::Tensor& G, const torch::Tensor& V) {
  auto n = G.size(0), d = G.size(1);
  auto M = G.t().mm(G) / n + lambda_rule(G) * torch::eye(d, torch::kDouble);
  return torch::linalg::solve(M, V.t(), true);
}

const std::vector<std::tuple<std::vector<std::int64_t>, std::int64_t, std::int64_t>> kShapes{
    {{8}, 40, 1},         // n > d, one query
    {{30}, 12, 3},        // n < d, several queries
    {{6, 25, 3}, 20, 5},  // several blocks of both kinds
};

}  // namespace

TEST_CASE("DataInf equals the explicit average of inverted rank-one-plus-ridge matrices",
          "[estimators][datainf]") {
  for (auto [widths, n, q] : kShapes) {
    auto p = random_problem(widths, n, q, 7);
    auto oracle = oracle_scores(p, [](const torch::Tensor& G, const torch::Tensor& V) {
      const auto n = G.size(0), d = G.size(1);
      const double lambda = lambda_rule(G);
      auto R = torch::zeros({d, V.size(0)}, torch::kDouble);
      for (int64_t i = 0; i < n; ++i) {
        auto g = G[i].unsqueeze(1);
        auto M = g.mm(g.t()) + lambda * torch::eye(d, torch::kDouble);
        R += torch::linalg::solve(M, V.t(), true);
      }
      return R / n;
    });
    auto estimator = make("datainf");
    estimator->fit(p.train);
    auto scores = inflab::score_pairwise(*estimator, p.train, p.queries);
    INFO("n=" << n << " q=" << q << " blocks=" << widths.size());
    CHECK(relative_error(scores, oracle) < 1e-5);
  }
}

TEST_CASE("Exact equals a dense solve of (G + lambda I) v, on both paths", "[estimators][exact]") {
  for (auto [widths, n, q] : kShapes) {
    auto p = random_problem(widths, n, q, 11);
    auto oracle = oracle_scores(p, exact_solve);
    for (std::string method : {"auto", "cholesky", "woodbury"}) {
      auto estimator = make("exact", {{"method", method}});
      estimator->fit(p.train);
      auto scores = inflab::score_pairwise(*estimator, p.train, p.queries);
      INFO("method=" << method << " n=" << n << " q=" << q);
      CHECK(relative_error(scores, oracle) < 1e-5);
    }
  }
}

TEST_CASE("Exact picks Woodbury when n < d and refuses blocks over the memory budget",
          "[estimators][exact]") {
  auto p = random_problem({50, 5}, 10, 2, 3);
  auto estimator = make("exact");
  estimator->fit(p.train);
  auto d = estimator->diagnostics();
  CHECK(d["block0.woodbury"] == 1.0);
  CHECK(d["block1.woodbury"] == 0.0);
  auto small_budget = make("exact", {{"memory_budget_mb", 0.001}});
  REQUIRE_THROWS_WITH(small_budget->fit(p.train),
                      Contains("block0") && Contains("MiB") && Contains("memory_budget_mb"));
}

TEST_CASE("LiSSA converges to Exact and reports its residual", "[estimators][lissa]") {
  auto p = random_problem({6, 10}, 50, 3, 5);
  auto oracle = oracle_scores(p, exact_solve);
  auto lissa = make("lissa", {{"iterations", std::int64_t{3000}}});
  lissa->fit(p.train);
  auto scores = inflab::score_pairwise(*lissa, p.train, p.queries);
  CHECK(relative_error(scores, oracle) < 1e-3);
  CHECK(lissa->diagnostics()["block0.relative_residual"] < 1e-3);
  // Too few iterations: the residual says so.
  auto short_run = make("lissa", {{"iterations", std::int64_t{2}}});
  short_run->fit(p.train);
  inflab::score_pairwise(*short_run, p.train, p.queries);
  CHECK(short_run->diagnostics()["block0.relative_residual"] > 1e-2);
}

TEST_CASE("LiSSA's reference-code variant converges toward (G - lambda I)^-1 v", "[estimators][lissa]") {
  // n >> d keeps G well conditioned, so G - lambda I stays positive definite for a small lambda.
  auto p = random_problem({5}, 200, 2, 9);
  const double lambda = 0.05;
  auto oracle = oracle_scores(p, [&](const torch::Tensor& G, const torch::Tensor& V) {
    auto M = G.t().mm(G) / G.size(0) - lambda * torch::eye(G.size(1), torch::kDouble);
    return torch::linalg::solve(M, V.t(), true);
  });
  auto variant = make("lissa", {{"variant", std::string("reference_code")},
                                {"damping", lambda},
                                {"iterations", std::int64_t{4000}},
                                {"scale", 20.0}});
  variant->fit(p.train);
  CHECK(relative_error(inflab::score_pairwise(*variant, p.train, p.queries), oracle) < 1e-3);
}

TEST_CASE("Mini-batch LiSSA stays near Exact", "[estimators][lissa]") {
  auto p = random_problem({4}, 400, 1, 13);
  auto oracle = oracle_scores(p, exact_solve);
  auto lissa = make("lissa", {{"iterations", std::int64_t{600}}, {"batch_size", std::int64_t{200}}});
  lissa->fit(p.train);
  CHECK(relative_error(inflab::score_pairwise(*lissa, p.train, p.queries), oracle) < 0.1);
}

TEST_CASE("Hessian-free is the plain negative gradient dot product", "[estimators][hessian_free]") {
  auto p = random_problem({7, 3}, 9, 4, 17);
  auto oracle = oracle_scores(p, [](const torch::Tensor&, const torch::Tensor& V) { return V.t(); });
  auto estimator = make("hessian_free");
  estimator->fit(p.train);
  CHECK(relative_error(inflab::score_pairwise(*estimator, p.train, p.queries), oracle) < 1e-6);
}

TEST_CASE("the damping rule: 0.1 x mean squared gradient entry, or a fixed value", "[estimators][damping]") {
  auto p = random_problem({12, 4}, 30, 1, 19);
  auto estimator = make("datainf");
  estimator->fit(p.train);
  auto d = estimator->diagnostics();
  CHECK(d["block0.lambda"] == Approx(lambda_rule(p.train[0].values)).epsilon(1e-6));  // float32 row norms
  CHECK(d["block1.lambda"] == Approx(lambda_rule(p.train[1].values)).epsilon(1e-6));
  auto scaled = make("datainf", {{"damping_scale", 0.5}});
  scaled->fit(p.train);
  CHECK(scaled->diagnostics()["block0.lambda"] == Approx(5 * lambda_rule(p.train[0].values)));
  auto fixed = make("datainf", {{"damping", 0.25}});
  fixed->fit(p.train);
  CHECK(fixed->diagnostics()["block1.lambda"] == 0.25);
  REQUIRE_THROWS_WITH(make("datainf", {{"damping_scale", 0.0}}), Contains("damping_scale must be > 0"));
  REQUIRE_THROWS_WITH(make("exact", {{"damping", -1.0}}), Contains("damping must be > 0"));
}

TEST_CASE("aggregate mode equals pairwise scores averaged over queries", "[estimators][scoring]") {
  auto p = random_problem({10, 20}, 15, 6, 23);
  for (std::string name : {"datainf", "exact", "hessian_free", "lissa"}) {
    auto estimator = make(name);
    estimator->fit(p.train);
    auto pairwise = inflab::score_pairwise(*estimator, p.train, p.queries);
    auto aggregate = inflab::score_aggregate(*estimator, p.train, p.queries);
    INFO(name);
    CHECK(relative_error(aggregate, pairwise.mean(1)) < 1e-5);
  }
}

TEST_CASE("matrix_product equals a float64 mm for one row, one column, transposed views and matrices",
          "[estimators][scoring]") {
  torch::manual_seed(41);
  const auto G = torch::randn({37, 23}), row = torch::randn({1, 23}), column = torch::randn({37, 1});
  const std::vector<std::pair<torch::Tensor, torch::Tensor>> cases{
      {row, G.t()},               // one query against the training rows (DataInf, aggregate)
      {column.t(), G},            // coefficients back onto the rows
      {G, row.t()},               // the scores of one query
      {G.t(), column},            // a transposed (non-contiguous) left side
      {torch::randn({5, 37}), G}  // several queries: the matrix path
  };
  for (const auto& [a, b] : cases) {
    auto product = inflab::matrix_product(a, b);
    auto oracle = a.to(torch::kDouble).mm(b.to(torch::kDouble));
    INFO(a.sizes() << " x " << b.sizes());
    REQUIRE(product.sizes() == oracle.sizes());
    CHECK(relative_error(product, oracle) < 1e-6);
  }
  CHECK_THROWS(inflab::matrix_product(row, G));  // 1 x 23 by 37 x 23: mm's own shape error
}

TEST_CASE("mismatched train and query blocks are refused by name", "[estimators][scoring]") {
  auto p = random_problem({4, 5}, 6, 2, 29);
  p.queries[1].values = torch::randn({2, 6});
  auto estimator = make("hessian_free");
  REQUIRE_THROWS_WITH(inflab::score_pairwise(*estimator, p.train, p.queries), Contains("block1"));
}

TEST_CASE("numerical edge cases give finite answers or clear errors, never silent NaN scores",
          "[estimators][edge]") {
  for (std::string name : {"datainf", "exact", "lissa", "cg", "hessian_free"}) {
    INFO(name);
    // n = 1 and d = 1.
    inflab::GradientBlocks one{{"w", torch::tensor({{2.0f}}), {}, {}}},
        one_query{{"w", torch::tensor({{1.0f}}), {}, {}}};
    auto e = make(name);
    e->fit(one);
    CHECK(torch::isfinite(inflab::score_pairwise(*e, one, one_query)).all().item<bool>());
    // Duplicate training examples and a near-singular block: finite.
    auto row = torch::randn({1, 6});
    inflab::GradientBlocks dup{{"w", row.repeat({10, 1}).contiguous(), {}, {}}},
        q{{"w", torch::randn({2, 6}), {}, {}}};
    auto d = make(name, {{"damping", 1e-8}});
    d->fit(dup);
    CHECK(torch::isfinite(inflab::score_pairwise(*d, dup, q)).all().item<bool>());
  }
  // An all-zero block: the damping rule has nothing to scale; the error says what to do.
  inflab::GradientBlocks zero{{"fc1.lora_B", torch::zeros({5, 4}), {}, {}}};
  REQUIRE_THROWS_WITH(make("datainf")->fit(zero), Contains("'fc1.lora_B'") &&
                                                      Contains("every training gradient is zero") &&
                                                      Contains("fixed damping"));
  // NaN in the gradients: scoring stops and names the block instead of writing NaN scores.
  auto bad = torch::randn({6, 3});
  bad[2][1] = std::numeric_limits<float>::quiet_NaN();
  inflab::GradientBlocks nan_block{{"fc2.lora_A", bad, {}, {}}},
      nan_query{{"fc2.lora_A", torch::randn({1, 3}), {}, {}}};
  for (std::string name : {"datainf", "cg", "lissa", "hessian_free"}) {
    auto e = make(name, {{"damping", 0.1}});
    INFO(name);
    REQUIRE_THROWS_WITH(
        [&] {
          e->fit(nan_block);
          inflab::score_pairwise(*e, nan_block, nan_query);
        }(),
        Contains("fc2.lora_A") && Contains("not finite"));
  }
  // An empty query set is named as what it is (its mean gradient used to surface as "not finite").
  inflab::GradientBlocks train_block{{"fc2.lora_A", torch::randn({6, 3}), {}, {}}},
      no_queries{{"fc2.lora_A", torch::zeros({0, 3}), {}, {}}};
  auto e = make("datainf");
  e->fit(train_block);
  REQUIRE_THROWS_WITH(inflab::score_aggregate(*e, train_block, no_queries),
                      Contains("query set is empty") && !Contains("not finite"));
  REQUIRE_THROWS_WITH(inflab::score_pairwise(*e, train_block, no_queries), Contains("query set is empty"));
}

TEST_CASE("scores follow the gradients' scale exactly, from 1e-20 to 1e19, and never underflow silently",
          "[estimators][scale]") {
  // Unit-scale gradients (inside the range that is never rescaled) with K-FAC
  // factors for a 4 x 3 layer; the same problem multiplied by c. A block's contribution is
  // -g . M^-1 v with M of degree k in g (2: every damped Gauss-Newton method, 0: Hessian-free), so
  // scaling train and queries by c multiplies the scores by c^(2-k), training gradients alone
  // (and the factors) by c^(1-k).
  torch::manual_seed(3);
  const std::int64_t n = 30, q = 4, in = 3, out = 4;
  // Largest entries in [1, 2): the range a rescaled block is brought to, so x 2^60 maps back exactly.
  auto in_one_two = [](torch::Tensor t) {
    return t / std::exp2(std::floor(std::log2(t.abs().max().item<double>())));
  };
  inflab::GradientBlock block{"w", in_one_two(torch::randn({n, out * in}))};
  const auto a = torch::randn({n, in}), s = torch::randn({n, out});
  block.activation_covariance = a.t().mm(a) / n;
  block.gradient_covariance = s.t().mm(s) / n;
  block.factor_tokens = n;
  const inflab::GradientBlocks train{block}, queries{{"w", in_one_two(torch::randn({q, out * in}))}};
  auto scaled = [](inflab::GradientBlocks blocks, double c) {
    for (auto& b : blocks) {
      b.values = (b.values.to(torch::kDouble) * c).to(torch::kFloat);
      if (b.has_factors())
        b.gradient_covariance = (b.gradient_covariance.to(torch::kDouble) * c * c).to(torch::kFloat);
    }
    return blocks;
  };
  auto& registry = test::registry();
  for (const std::string name :
       {"datainf", "exact", "lissa", "cg", "kfac", "ekfac", "hessian_free", "arnoldi"}) {
    const int k = name == "hessian_free" ? 0 : 2;
    const auto unit = inflab::score_with_estimator(registry, name, {}, "pairwise", train, queries)
                          .scores.to(torch::kDouble);
    REQUIRE(unit.abs().max().item<double>() > 0);
    // Both sides scaled. Hessian-free's scores and K-FAC's gradient factor hold c^2, which float32
    // itself holds only for |log10 c| < 19.
    const bool squares = k == 0 || name == "kfac" || name == "ekfac";
    const std::vector<double> both = squares ? std::vector<double>{1e-18, 1e-8, 1e8, 1e18}
                                             : std::vector<double>{1e-20, 1e-10, 1e-4, 1e4, 1e10, 1e19};
    for (double c : both) {
      INFO(name << ", train and queries x " << c);
      const auto got =
          inflab::score_with_estimator(registry, name, {}, "pairwise", scaled(train, c), scaled(queries, c))
              .scores.to(torch::kDouble);
      CHECK(relative_error(got / std::pow(c, 2 - k), unit) < 1e-4);
    }
    for (double c :
         squares ? std::vector<double>{1e-18, 1e18} : std::vector<double>{1e-20, 1e-10, 1e10, 1e19}) {
      INFO(name << ", train x " << c);
      const auto got = inflab::score_with_estimator(registry, name, {}, "pairwise", scaled(train, c), queries)
                           .scores.to(torch::kDouble);
      CHECK(relative_error(got / std::pow(c, 1 - k), unit) < 1e-4);
    }
    // Powers of two: the rescaling is exact, so the scores are the unit ones to the bit.
    const double two60 = std::ldexp(1.0, 60);
    const auto exact_power = inflab::score_with_estimator(registry, name, {}, "pairwise",
                                                          scaled(train, two60), scaled(queries, two60))
                                 .scores.to(torch::kDouble);
    if (k == 2) CHECK(torch::equal(exact_power, unit));
  }
  // Where there is no degree to undo (a fixed damping), an underflow is an error, not zeros.
  CHECK_THROWS_WITH(inflab::score_with_estimator(registry, "datainf", {"damping=1e30"}, "pairwise",
                                                 scaled(train, 1e-20), scaled(queries, 1e-20)),
                    Contains("underflowed"));
}

TEST_CASE("nonfinite_rows finds NaN and Inf rows and is not fooled by finite values whose sum overflows",
          "[estimators][edge]") {
  auto g = torch::randn({70000, 64});  // more than one 4 Mi-value chunk
  CHECK(inflab::nonfinite_rows(g).count == 0);
  auto huge = torch::full({100, 8}, 3e38f);  // finite, but any float32 sum of two overflows
  CHECK(inflab::nonfinite_rows(huge).count == 0);
  g[69000][3] = std::numeric_limits<float>::quiet_NaN();
  g[66000][0] = std::numeric_limits<float>::infinity();
  g[66001][1] = -std::numeric_limits<float>::infinity();
  const auto found = inflab::nonfinite_rows(g);
  CHECK(found.count == 3);
  CHECK(found.first == 66000);
  huge[42][5] = std::numeric_limits<float>::quiet_NaN();
  CHECK(inflab::nonfinite_rows(huge).first == 42);
}

namespace {
// Arnoldi's formula with the top-p eigenpairs of G^T G / n from a dense float64 eigensolver.
torch::Tensor arnoldi_solve(const torch::Tensor& G, const torch::Tensor& V, int64_t p) {
  const auto n = G.size(0), d = G.size(1);
  const double lambda = lambda_rule(G);
  auto [values, vectors] = torch::linalg::eigh(G.t().mm(G) / n, "L");  // ascending
  p = std::min(p, d);
  auto top = values.narrow(0, d - p, p), u = vectors.narrow(1, d - p, p);
  auto coordinates = u.t().mm(V.t());  // p x Q
  return V.t() / lambda + u.mm(coordinates * (1 / (top + lambda) - 1 / lambda).unsqueeze(1));
}
}  // namespace

TEST_CASE("Arnoldi equals its formula on the dense top-p eigenpairs, and Exact at p = d",
          "[estimators][arnoldi]") {
  for (auto [widths, n, q] : kShapes) {
    auto p = random_problem(widths, n, q, 29);
    for (int64_t rank : {2, 5}) {
      // As many Lanczos steps as the widest block: the Krylov space is then the whole space.
      auto oracle = oracle_scores(
          p, [&](const torch::Tensor& G, const torch::Tensor& V) { return arnoldi_solve(G, V, rank); });
      auto estimator = make("arnoldi", {{"rank", rank}, {"iterations", std::int64_t{30}}});
      estimator->fit(p.train);
      INFO("rank " << rank << " n=" << n << " q=" << q << " blocks=" << widths.size());
      CHECK(relative_error(inflab::score_pairwise(*estimator, p.train, p.queries), oracle) < 1e-4);
    }
    auto full = make("arnoldi", {{"rank", std::int64_t{30}}, {"iterations", std::int64_t{30}}});
    full->fit(p.train);
    CHECK(relative_error(inflab::score_pairwise(*full, p.train, p.queries), oracle_scores(p, exact_solve)) <
          1e-4);
  }
}

TEST_CASE("Arnoldi's default Lanczos steps find a decaying spectrum's top eigenpairs",
          "[estimators][arnoldi]") {
  // Gradients whose second moment decays geometrically, as real ones do: 3 x rank steps suffice.
  torch::manual_seed(31);
  const int64_t n = 400, d = 120, rank = 8;
  auto G = (torch::randn({n, d}) * torch::pow(0.85, torch::arange(d, torch::kFloat))).contiguous();
  Problem p{{{"w", G}}, {{"w", torch::randn({3, d})}}};
  auto oracle = oracle_scores(
      p, [&](const torch::Tensor& g, const torch::Tensor& V) { return arnoldi_solve(g, V, rank); });
  auto estimator = make("arnoldi", {{"rank", rank}});
  estimator->fit(p.train);
  CHECK(relative_error(inflab::score_pairwise(*estimator, p.train, p.queries), oracle) < 1e-3);
  auto diagnostics = estimator->diagnostics();
  auto g = G.to(torch::kDouble);
  auto eigenvalues = std::get<0>(torch::linalg::eigh(g.t().mm(g) / n, "L"));
  const double share = (eigenvalues.narrow(0, d - rank, rank).sum() / eigenvalues.sum()).item<double>();
  CHECK(diagnostics["w.captured_share"] == Approx(share).epsilon(1e-4));
  CHECK(diagnostics["w.iterations"] == 3 * rank);
  CHECK(diagnostics["w.ritz_residual"] < 1e-2);
  REQUIRE_THROWS_WITH(make("arnoldi", {{"rank", std::int64_t{10}}, {"iterations", std::int64_t{4}}}),
                      Contains("iterations (4) must be >= rank (10)"));
}

TEST_CASE("normalised scores: unit divides by both gradients' norms, relatif by sqrt(self-influence)",
          "[estimators][scoring][normalise]") {
  auto p = random_problem({6, 9}, 25, 4, 37);
  auto raw = oracle_scores(p, exact_solve);  // n x q, float64
  auto norms = [](const inflab::GradientBlocks& blocks) {
    torch::Tensor sum;
    for (const auto& b : blocks) {
      auto s = b.values.to(torch::kDouble).pow(2).sum(1);
      sum = sum.defined() ? sum + s : s;
    }
    return sum.sqrt();
  };
  const auto train_norms = norms(p.train), query_norms = norms(p.queries);
  // Self-influence g_k . (G + lambda I)^{-1} g_k per block, by dense solves.
  torch::Tensor self = torch::zeros({25}, torch::kDouble);
  for (const auto& block : p.train) {
    auto G = block.values.to(torch::kDouble);
    self += (G * exact_solve(G, G).t()).sum(1);
  }
  auto exact = make("exact");
  exact->fit(p.train);
  using inflab::Normalisation;
  auto unit = inflab::score_normalised(*exact, p.train, p.queries, false, Normalisation::Unit);
  CHECK(relative_error(unit, raw / train_norms.unsqueeze(1) / query_norms.unsqueeze(0)) < 1e-5);
  auto relatif = inflab::score_normalised(*exact, p.train, p.queries, false, Normalisation::Relatif);
  CHECK(relative_error(relatif, raw / self.sqrt().unsqueeze(1)) < 1e-5);
  CHECK(relative_error(inflab::self_influence(*exact, p.train, 7), self) < 1e-5);  // chunks of 7 rows
  // Aggregate: the mean of the unit-norm queries, then divided by the training norms.
  auto unit_mean = inflab::score_normalised(*exact, p.train, p.queries, true, Normalisation::Unit);
  CHECK(relative_error(unit_mean, (raw / query_norms.unsqueeze(0)).mean(1) / train_norms) < 1e-5);
  auto relatif_mean = inflab::score_normalised(*exact, p.train, p.queries, true, Normalisation::Relatif);
  CHECK(relative_error(relatif_mean, raw.mean(1) / self.sqrt()) < 1e-5);
  // A zero training gradient scores 0, not NaN.
  auto zero = p;
  for (auto& block : zero.train) block.values[3].zero_();
  exact->fit(zero.train);
  for (auto normalisation : {Normalisation::Unit, Normalisation::Relatif}) {
    auto scores = inflab::score_normalised(*exact, zero.train, zero.queries, false, normalisation);
    CHECK(torch::isfinite(scores).all().item<bool>());
    CHECK(scores[3].abs().max().item<double>() == 0);
  }
  CHECK_THROWS_WITH(inflab::normalisation_from("cosine", "estimator 'x' normalise"),
                    Contains("estimator 'x' normalise") && Contains("\"cosine\"") && Contains("relatif"));
}

TEST_CASE("TracIn on one set of gradients is refused: it needs a run's checkpoints", "[estimators][tracin]") {
  auto p = random_problem({4}, 6, 2, 43);
  CHECK_THROWS_WITH(
      inflab::score_with_estimator(test::registry(), "tracin", {}, "pairwise", p.train, p.queries),
      Contains("tracin") && Contains("[checkpoints]") && Contains("hessian_free"));
}
