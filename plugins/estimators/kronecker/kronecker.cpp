#include "kronecker.hpp"

#include <ATen/ops/full.h>
#include <ATen/ops/linalg_eigh.h>
#include <ATen/ops/zeros.h>
#include <fmt/format.h>

#include <filesystem>
#include <inflab/distributed.hpp>
#include <inflab/error.hpp>
#include <inflab/io.hpp>

namespace inflab {

KroneckerBasis kronecker_basis(const GradientBlock& block, const std::string& estimator) {
  if (!block.has_factors())
    throw Error(fmt::format(
        "{}: block '{}' has no Kronecker factors. They are captured with the gradients by `inflab run` "
        "and `inflab gradients` (DIR/factors/<block>.activation.npy and .gradient.npy); gradients "
        "written elsewhere need those two files too (docs/gradient-store.md, \"K-FAC factors\")",
        estimator, block.name));
  KroneckerBasis basis;
  basis.in = block.activation_covariance.size(0);
  basis.out = block.gradient_covariance.size(0);
  if (basis.in * basis.out != block.values.size(1))
    throw Error(fmt::format("{}: block '{}' has {} columns but its factors are {} x {} and {} x {}",
                            estimator, block.name, block.values.size(1), basis.out, basis.out, basis.in,
                            basis.in));
  auto [eigen_in, q_in] = at::linalg_eigh(block.activation_covariance.to(c10::kDouble));
  auto [eigen_out, q_out] = at::linalg_eigh(block.gradient_covariance.to(c10::kDouble));
  basis.eigen_in = eigen_in.clamp_min(0);  // covariances are PSD; round-off may dip below 0
  basis.eigen_out = eigen_out.clamp_min(0);
  basis.q_in = q_in;
  basis.q_out = q_out;
  return basis;
}

at::Tensor to_kronecker_basis(const KroneckerBasis& basis, const at::Tensor& rows) {
  at::Tensor w = rows.to(c10::kDouble).reshape({rows.size(0), basis.out, basis.in});
  return basis.q_out.t().matmul(w).matmul(basis.q_in);
}

at::Tensor kronecker_inverse_product(const KroneckerBasis& basis, const at::Tensor& eigenvalues,
                                     double lambda, const at::Tensor& queries) {
  at::Tensor projected = to_kronecker_basis(basis, queries);
  projected.div_(eigenvalues.add(lambda));
  at::Tensor back = basis.q_out.matmul(projected).matmul(basis.q_in.t());
  return back.reshape({queries.size(0), basis.out * basis.in}).to(queries.scalar_type());
}

at::Tensor corrected_eigenvalues(const KroneckerBasis& basis, const at::Tensor& gradients,
                                 std::int64_t chunk) {
  const auto n = gradients.size(0);
  at::Tensor sum = at::zeros({basis.out, basis.in}, gradients.options().dtype(c10::kDouble));
  for (std::int64_t start = 0; start < n; start += chunk)
    sum.add_(
        to_kronecker_basis(basis, gradients.narrow(0, start, std::min(chunk, n - start))).square().sum(0));
  sum_over_ranks(sum);
  return sum.div_(static_cast<double>(rows_over_ranks(n)));
}

EkfacPreconditioner ekfac_preconditioner(const GradientBlock& block, double lambda,
                                         const std::string& estimator) {
  EkfacPreconditioner out{kronecker_basis(block, estimator + " (preconditioner = \"ekfac\")"), {}, lambda};
  out.eigenvalues = corrected_eigenvalues(out.basis, block.values);
  return out;
}

OptionSpec preconditioner_option_spec() {
  return {"preconditioner", OptionType::String, std::string("none"),
          "none, or ekfac: iterate on EK-FAC's damped inverse times the system (same answer, fewer steps; "
          "needs the blocks' Kronecker factors)"};
}

bool ekfac_preconditioned(const Options& options) {
  const std::string& value = options.get_string("preconditioner");
  if (value != "none" && value != "ekfac")
    throw Error(fmt::format("{}: preconditioner must be \"none\" or \"ekfac\", found \"{}\"", options.owner(),
                            value));
  return value == "ekfac";
}

KroneckerFit KroneckerEstimator::fit_block(const BlockFit& fit) {
  KroneckerBasis basis = kronecker_basis(fit.block, method());
  at::Tensor values = eigenvalues(basis, fit.block);
  return {std::move(basis), values, fit.lambda};
}

bool KroneckerEstimator::save_fit(const std::string& dir) const {
  namespace fs = std::filesystem;
  for (std::size_t b = 0; b < blocks(); ++b) {
    const KroneckerFit& block = state(b);
    fs::path base = fs::path(dir) / block_name(b);
    save_npy(base.string() + ".q_out.npy", block.basis.q_out);
    save_npy(base.string() + ".q_in.npy", block.basis.q_in);
    save_npy(base.string() + ".eigen_out.npy", block.basis.eigen_out);
    save_npy(base.string() + ".eigen_in.npy", block.basis.eigen_in);
    save_npy(base.string() + ".eigenvalues.npy", block.eigenvalues);
    save_npy(base.string() + ".lambda.npy",
             at::full({1}, block.lambda, at::TensorOptions().dtype(c10::kDouble)));
  }
  return true;
}

bool KroneckerEstimator::load_fit(const std::string& dir, const GradientBlocks& train) {
  namespace fs = std::filesystem;
  std::vector<KroneckerFit> blocks;
  std::vector<double> lambdas;
  for (const auto& block : train) {
    fs::path base = fs::path(dir) / block.name;
    if (!fs::exists(base.string() + ".lambda.npy")) return false;
    KroneckerFit loaded;
    loaded.basis.q_out = load_npy(base.string() + ".q_out.npy");
    loaded.basis.q_in = load_npy(base.string() + ".q_in.npy");
    loaded.basis.eigen_out = load_npy(base.string() + ".eigen_out.npy");
    loaded.basis.eigen_in = load_npy(base.string() + ".eigen_in.npy");
    loaded.basis.out = loaded.basis.q_out.size(0);
    loaded.basis.in = loaded.basis.q_in.size(0);
    loaded.eigenvalues = load_npy(base.string() + ".eigenvalues.npy");
    loaded.lambda = load_npy(base.string() + ".lambda.npy").item<double>();
    if (loaded.basis.out * loaded.basis.in != block.values.size(1)) return false;  // not this store's fit
    lambdas.push_back(loaded.lambda);
    blocks.push_back(std::move(loaded));
  }
  restore(train, std::move(blocks), lambdas);
  return true;
}

at::Tensor KroneckerEstimator::inverse_product(std::size_t b, const at::Tensor& queries) {
  const KroneckerFit& block = state(b);
  return kronecker_inverse_product(block.basis, block.eigenvalues, block.lambda, queries);
}

}  // namespace inflab
