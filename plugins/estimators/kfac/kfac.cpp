// K-FAC: each block's Gauss-Newton matrix approximated by S (x) A, the Kronecker product of its
// output-gradient and activation second moments, inverted through both eigendecompositions:
//   r = Q (Lambda_S (x) Lambda_A + lambda I)^{-1} Q^T v,  Q = Q_S (x) Q_A.
#include <ATen/ops/outer.h>

#include "kronecker.hpp"

namespace {

class Kfac : public inflab::KroneckerEstimator {
 protected:
  const char* method() const override { return "kfac"; }
  at::Tensor eigenvalues(const inflab::KroneckerBasis& basis, const inflab::GradientBlock&) const override {
    return at::outer(basis.eigen_out, basis.eigen_in);
  }
};

std::vector<inflab::OptionSpec> options() { return inflab::damping_option_specs(); }

}  // namespace

INFLAB_PLUGIN(Estimator, "kfac", "1.0.0",
              "K-FAC: Kronecker-factored Gauss-Newton blocks (activation x output-gradient second moments)",
              options, Kfac)
