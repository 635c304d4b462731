// Kronecker-factored curvature (K-FAC / EK-FAC) for one block seen as a linear map
// W (out x in) with G_l ~ S (x) A, S = gradient_covariance, A = activation_covariance.
// Plugin-side code shared by the kfac and ekfac plugins (a static library, inflab_kronecker):
// the eigenbases and the inverse-vector product. The framework only captures the factors.
#pragma once
#include <ATen/core/Tensor.h>

#include <inflab/estimator.hpp>

namespace inflab {

struct KroneckerBasis {
  at::Tensor q_out, q_in;          // orthonormal eigenvectors (columns) of S and A, float64
  at::Tensor eigen_out, eigen_in;  // their eigenvalues, clamped at 0
  std::int64_t out = 0, in = 0;
};

// Eigendecomposes the block's two factors; throws, naming the block, when it has none.
KroneckerBasis kronecker_basis(const GradientBlock& block, const std::string& estimator);

// Rows (k x out*in) expressed in the basis: Q_out^T W Q_in for each row's W; k x out x in.
at::Tensor to_kronecker_basis(const KroneckerBasis& basis, const at::Tensor& rows);

// (Q (diag(eigenvalues) + lambda I) Q^T)^{-1} applied to each row of `queries`, where
// Q = Q_out (x) Q_in and `eigenvalues` is out x in (K-FAC: eigen_out eigen_in^T).
at::Tensor kronecker_inverse_product(const KroneckerBasis& basis, const at::Tensor& eigenvalues,
                                     double lambda, const at::Tensor& queries);

// EK-FAC's corrected eigenvalues: the mean over examples of the squared per-example gradients
// expressed in the Kronecker eigenbasis (George et al. 2018); processed in chunks of examples.
at::Tensor corrected_eigenvalues(const KroneckerBasis& basis, const at::Tensor& gradients,
                                 std::int64_t chunk = 1024);

struct KroneckerFit {
  KroneckerBasis basis;
  at::Tensor eigenvalues;
  double lambda;
};

// EK-FAC's damped inverse of one block, (Q (diag(corrected eigenvalues) + lambda I) Q^T)^{-1}, as a
// preconditioner for the iterative solvers (cg, lissa: option preconditioner = "ekfac"): cheap to
// apply (two small matrix products per row) and close to the block's own inverse, so the solvers
// need far fewer steps to the same answer.
struct EkfacPreconditioner {
  KroneckerBasis basis;
  at::Tensor eigenvalues;
  double lambda = 0;
  at::Tensor apply(const at::Tensor& rows) const {
    return kronecker_inverse_product(basis, eigenvalues, lambda, rows);
  }
};
EkfacPreconditioner ekfac_preconditioner(const GradientBlock& block, double lambda,
                                         const std::string& estimator);
// The "preconditioner" option the iterative solvers share ("none" | "ekfac"), and its check.
OptionSpec preconditioner_option_spec();
bool ekfac_preconditioned(const Options& options);  // throws naming the option on other values

// Base of the Kronecker-factored estimators: per block, the basis from the factors, the
// eigenvalues a subclass chooses, the shared damping rule, and the inverse-vector product.
class KroneckerEstimator : public BlockwiseEstimator<KroneckerFit> {
 public:
  at::Tensor inverse_product(std::size_t block, const at::Tensor& queries) override;
  // Eigenbases, eigenvalues and damping per block, as .npy files.
  bool save_fit(const std::string& dir) const override;
  bool load_fit(const std::string& dir, const GradientBlocks& train) override;
  // Factors are combined over ranks by the framework; EK-FAC's eigenvalues sum over ranks.
  bool supports_distributed() const override { return true; }

 protected:
  virtual const char* method() const = 0;
  virtual at::Tensor eigenvalues(const KroneckerBasis& basis, const GradientBlock& block) const = 0;
  KroneckerFit fit_block(const BlockFit& fit) override;
};

}  // namespace inflab
