// K-FAC, EK-FAC and CG against dense float64 oracles.
#include <torch/torch.h>

#include <catch2/catch.hpp>

#include "helpers.hpp"
#include "inflab/error.hpp"
#include "inflab/gradients.hpp"
#include "inflab/lora.hpp"
#include "inflab/registry.hpp"
#include "inflab/scoring.hpp"
#include "kronecker.hpp"

using Catch::Matchers::Contains;

namespace {

std::unique_ptr<inflab::Estimator> make(const std::string& name,
                                        std::map<std::string, inflab::Value> set = {}) {
  return test::make<inflab::Estimator>(inflab::PluginKind::Estimator, name, set);
}

double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  return ((a.to(torch::kDouble) - b.to(torch::kDouble)).norm() / b.to(torch::kDouble).norm()).item<double>();
}

// (G + lambda I)^{-1} V^T with G the per-example gradient second moment, float64.
torch::Tensor exact_inverse(const torch::Tensor& gradients, double lambda, const torch::Tensor& queries) {
  auto g = gradients.to(torch::kDouble);
  auto m = g.t().mm(g) / g.size(0) + lambda * torch::eye(g.size(1), torch::kDouble);
  return torch::linalg::solve(m, queries.to(torch::kDouble).t(), true).t();
}

// One token per example: g_i = delta_i a_i^T flattened row-major (= kron(delta_i, a_i)).
inflab::GradientBlock single_token_block(const torch::Tensor& activations, const torch::Tensor& deltas) {
  const auto n = activations.size(0);
  inflab::GradientBlock block{
      "w", torch::einsum("no,ni->noi", {deltas, activations}).reshape({n, -1}).contiguous(), {}, {}};
  block.activation_covariance = activations.t().mm(activations) / n;
  block.gradient_covariance = deltas.t().mm(deltas) / n;
  return block;
}

torch::Tensor random_orthogonal(int64_t k) {
  return std::get<0>(torch::linalg::qr(torch::randn({k, k}, torch::kDouble)));
}

}  // namespace

TEST_CASE("K-FAC equals Exact when the block is exactly a Kronecker product", "[estimators][kfac]") {
  torch::manual_seed(1);
  // Every example has the same input a: G = E[delta delta^T] (x) a a^T = S (x) A exactly.
  const int64_t n = 40, in = 5, out = 3;
  auto a = torch::randn({1, in}).expand({n, in}).contiguous();
  auto block = single_token_block(a, torch::randn({n, out}));
  auto queries = torch::randn({4, in * out});
  auto kfac = make("kfac", {{"damping", 0.05}});
  kfac->fit({block});
  CHECK(relative_error(kfac->inverse_product(0, queries), exact_inverse(block.values, 0.05, queries)) < 1e-5);
}

TEST_CASE("the engine's factors match the per-example gradient covariance in scale",
          "[estimators][kfac][gradients]") {
  auto options = inflab::default_options(
      "mlp_lora", test::registry().find(inflab::PluginKind::Model, "mlp_lora").info->options());
  options.set("hidden", std::vector<std::int64_t>{6});
  auto model = test::registry().create_as<inflab::Model>(inflab::PluginKind::Model, "mlp_lora", options);
  model->build({{8}, 4}, inflab::LoraConfig{2, 2.0, 0.0, {"fc*"}}, 3);
  {
    torch::NoGradGuard g;
    for (auto* l : model->lora_layers()) l->lora_b().normal_(0, 0.5);
  }
  torch::manual_seed(2);
  // Identical inputs, different labels: fc1's lora_A block sees one input, so its Gauss-Newton
  // matrix is exactly S (x) A, and the engine's factors must reproduce it, scale included.
  auto x = torch::randn({1, 8}).expand({30, 8}).contiguous();
  auto y = torch::randint(0, 4, {30}, torch::kLong);
  auto blocks = inflab::per_example_gradients(*model, x, y, 7, "", /*factors=*/true);
  REQUIRE(blocks[0].name == "fc1.lora_A");
  REQUIRE(blocks[0].has_factors());
  auto g = blocks[0].values.to(torch::kDouble);
  auto covariance = g.t().mm(g) / g.size(0);
  auto kronecker = torch::kron(blocks[0].gradient_covariance.to(torch::kDouble),
                               blocks[0].activation_covariance.to(torch::kDouble));
  CHECK(relative_error(kronecker, covariance) < 1e-5);
  // Every block's factors have the shapes of its linear map.
  CHECK(blocks[1].activation_covariance.size(0) == 2);  // lora_B input: the rank-2 hidden
  CHECK(blocks[1].gradient_covariance.size(0) == 6);    // lora_B output: fc1's width
}

TEST_CASE("EK-FAC equals Exact when the block is diagonal in the Kronecker eigenbasis",
          "[estimators][ekfac]") {
  torch::manual_seed(4);
  const int64_t n = 50, in = 4, out = 3;
  auto q_in = random_orthogonal(in), q_out = random_orthogonal(out);
  // Each example's gradient is one basis element q_out[:, j] q_in[:, k]^T times a scalar: in that
  // basis the second moment is diagonal, but not a Kronecker product of two diagonals.
  auto rows = torch::zeros({n, out * in}, torch::kDouble);
  for (int64_t i = 0; i < n; ++i) {
    int64_t j = i % out, k = (i / out) % in;
    rows[i] = (torch::randn({}, torch::kDouble) * torch::outer(q_out.select(1, j), q_in.select(1, k)))
                  .reshape({-1});
  }
  inflab::GradientBlock block{"w", rows.to(torch::kFloat).contiguous(), {}, {}};
  block.activation_covariance = q_in.mm(torch::diag(torch::tensor({4.0, 3.0, 2.0, 1.0}, torch::kDouble)))
                                    .mm(q_in.t())
                                    .to(torch::kFloat);
  block.gradient_covariance =
      q_out.mm(torch::diag(torch::tensor({3.0, 2.0, 1.0}, torch::kDouble))).mm(q_out.t()).to(torch::kFloat);
  auto queries = torch::randn({3, out * in});
  auto ekfac = make("ekfac", {{"damping", 0.1}});
  ekfac->fit({block});
  CHECK(relative_error(ekfac->inverse_product(0, queries), exact_inverse(block.values, 0.1, queries)) < 1e-4);
  auto kfac = make("kfac", {{"damping", 0.1}});
  kfac->fit({block});
  CHECK(relative_error(kfac->inverse_product(0, queries), exact_inverse(block.values, 0.1, queries)) > 1e-2);
}

TEST_CASE("EK-FAC approximates G at least as well as K-FAC, both are reported against Exact",
          "[estimators][ekfac]") {
  for (uint64_t seed : {5, 6, 7}) {
    torch::manual_seed(seed);
    const int64_t n = 60, in = 6, out = 4;
    auto block = single_token_block(torch::randn({n, in}) * torch::rand({n, 1}), torch::randn({n, out}));
    auto g = block.values.to(torch::kDouble);
    auto target = g.t().mm(g) / n;
    auto basis = inflab::kronecker_basis(block, "test");
    auto q = torch::kron(basis.q_out, basis.q_in);
    auto dense = [&](const torch::Tensor& eigenvalues) {
      return q.mm(torch::diag(eigenvalues.reshape({-1}))).mm(q.t());
    };
    double kfac_distance =
        (dense(torch::outer(basis.eigen_out, basis.eigen_in)) - target).norm().item<double>();
    double ekfac_distance =
        (dense(inflab::corrected_eigenvalues(basis, block.values)) - target).norm().item<double>();
    CHECK(ekfac_distance <= kfac_distance * (1 + 1e-9));
    auto queries = torch::randn({5, out * in});
    double lambda = 0.1 * (g.pow(2).sum().item<double>() / g.numel());
    auto exact = exact_inverse(block.values, lambda, queries);
    auto kfac = make("kfac"), ekfac = make("ekfac");
    kfac->fit({block}), ekfac->fit({block});
    double kfac_error = relative_error(kfac->inverse_product(0, queries), exact);
    double ekfac_error = relative_error(ekfac->inverse_product(0, queries), exact);
    WARN("seed " << seed << ": ||G - approx||_F K-FAC " << kfac_distance << ", EK-FAC " << ekfac_distance
                 << "; inverse-vector product relative error vs Exact: K-FAC " << kfac_error << ", EK-FAC "
                 << ekfac_error);
    CHECK(std::isfinite(kfac_error));
    CHECK(std::isfinite(ekfac_error));
  }
}

TEST_CASE("K-FAC and EK-FAC refuse blocks without factors, naming them", "[estimators][kfac]") {
  inflab::GradientBlocks blocks{{"fc9.lora_B", torch::randn({5, 6}), {}, {}}};
  REQUIRE_THROWS_WITH(make("kfac")->fit(blocks), Contains("fc9.lora_B") && Contains("factors"));
  REQUIRE_THROWS_WITH(make("ekfac")->fit(blocks), Contains("fc9.lora_B") && Contains("factors"));
}

TEST_CASE("CG matches Exact to its tolerance, batched over queries", "[estimators][cg]") {
  torch::manual_seed(8);
  for (auto [n, d] : std::vector<std::pair<int64_t, int64_t>>{{50, 12}, {10, 30}}) {
    inflab::GradientBlocks train{{"w", torch::randn({n, d}) * (torch::rand({n, 1}) + 0.1), {}, {}}};
    inflab::GradientBlocks queries{{"w", torch::randn({6, d}), {}, {}}};
    auto cg = make("cg", {{"tolerance", 1e-6}});
    cg->fit(train);
    auto g = train[0].values.to(torch::kDouble);
    double lambda = 0.1 * g.pow(2).sum().item<double>() / g.numel();
    CHECK(relative_error(cg->inverse_product(0, queries[0].values),
                         exact_inverse(train[0].values, lambda, queries[0].values)) < 1e-4);
    CHECK(cg->diagnostics()["w.relative_residual"] < 1e-5);
    CHECK(cg->diagnostics()["w.iterations"] <= d + 5);
  }
}

TEST_CASE("CG on an ill-conditioned block stays finite and reports its residual", "[estimators][cg]") {
  torch::manual_seed(9);
  // Rank-2 gradients in 40 dimensions with a tiny fixed damping: condition number ~1e12.
  auto basis = torch::randn({2, 40});
  inflab::GradientBlocks train{{"w", (torch::randn({30, 2}) * 1e3).mm(basis), {}, {}}};
  auto cg = make("cg", {{"damping", 1e-6}, {"max_iterations", std::int64_t{5}}});
  cg->fit(train);
  auto r = cg->inverse_product(0, torch::randn({3, 40}));
  CHECK(torch::isfinite(r).all().item<bool>());
  CHECK(std::isfinite(cg->diagnostics()["w.relative_residual"]));
}

TEST_CASE("a gradient directory keeps the Kronecker factors", "[gradients][kfac]") {
  test::TempDir dir;
  torch::manual_seed(10);
  inflab::GradientStore store;
  auto block = single_token_block(torch::randn({7, 3}), torch::randn({7, 2}));
  store.train = {block};
  store.query = {{"w", torch::randn({2, 6}), {}, {}}};
  inflab::save_gradient_store(dir.path, store);
  auto loaded = inflab::load_gradient_store(dir.path);
  REQUIRE(loaded.train[0].has_factors());
  CHECK(loaded.train[0].activation_covariance.equal(block.activation_covariance));
  CHECK(loaded.train[0].gradient_covariance.equal(block.gradient_covariance));
}

namespace {
// A block with Kronecker factors whose curvature spans four decades (anisotropic inputs and
// output gradients, independent of each other): EK-FAC is close to it but not equal.
inflab::GradientBlock ill_conditioned_block(std::uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t n = 300, in = 10, out = 6;
  auto input_scales = torch::logspace(0, 1.5, in), output_scales = torch::logspace(0, 0.5, out);
  return single_token_block(torch::randn({n, in}) * input_scales * (torch::rand({n, 1}) + 0.5),
                            torch::randn({n, out}) * output_scales);
}
}  // namespace

namespace {
// An iterative solver with and without the EK-FAC preconditioner on one block: both reach the
// dense solve (to `error`) and their residual target; the preconditioned one in at most a third
// of the iterations.
void check_preconditioned(const std::string& solver, std::map<std::string, inflab::Value> options,
                          double residual, double error, std::uint64_t seed) {
  auto block = ill_conditioned_block(seed);
  auto queries = torch::randn({4, block.values.size(1)});
  auto g = block.values.to(torch::kDouble);
  const double lambda = 0.1 * g.pow(2).sum().item<double>() / g.numel();  // the damping rule
  auto exact = exact_inverse(block.values, lambda, queries);
  std::map<std::string, double> iterations;
  for (std::string preconditioner : {"none", "ekfac"}) {
    options["preconditioner"] = preconditioner;
    auto estimator = make(solver, options);
    estimator->fit({block});
    auto solved = estimator->inverse_product(0, queries);
    INFO(solver << ", preconditioner " << preconditioner);
    CHECK(relative_error(solved, exact) < error);
    CHECK(estimator->diagnostics()["w.relative_residual"] <= residual);
    iterations[preconditioner] = estimator->diagnostics()["w.iterations"];
  }
  WARN(solver << " iterations to " << residual << ": plain " << iterations["none"]
              << ", EK-FAC-preconditioned " << iterations["ekfac"]);
  CHECK(iterations["ekfac"] * 3 <= iterations["none"]);
}
}  // namespace

TEST_CASE("CG preconditioned by EK-FAC gives Exact's answer in fewer iterations", "[estimators][cg]") {
  check_preconditioned("cg", {{"tolerance", 1e-6}}, 1e-5, 1e-4, 12);
}

TEST_CASE("LiSSA preconditioned by EK-FAC converges to Exact in fewer iterations", "[estimators][lissa]") {
  check_preconditioned("lissa", {{"iterations", std::int64_t{20000}}, {"tolerance", 1e-4}}, 1e-4, 1e-2, 13);
}

TEST_CASE("the EK-FAC preconditioner refuses blocks without factors and unknown values",
          "[estimators][cg][lissa]") {
  inflab::GradientBlocks blocks{{"fc9.lora_B", torch::randn({5, 6}), {}, {}}};
  for (std::string name : {"cg", "lissa"}) {
    INFO(name);
    REQUIRE_THROWS_WITH(make(name, {{"preconditioner", std::string("ekfac")}})->fit(blocks),
                        Contains("fc9.lora_B") && Contains("factors") && Contains("preconditioner"));
    REQUIRE_THROWS_WITH(make(name, {{"preconditioner", std::string("kfac")}}),
                        Contains("preconditioner") && Contains("\"kfac\""));
  }
}
