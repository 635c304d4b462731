// EK-FAC (George et al. 2018): K-FAC's eigenbasis, with the eigenvalues replaced by the second
// moments of the per-example gradients projected into that basis (the best diagonal there).
#include "kronecker.hpp"

namespace {

class Ekfac : public inflab::KroneckerEstimator {
 protected:
  const char* method() const override { return "ekfac"; }
  at::Tensor eigenvalues(const inflab::KroneckerBasis& basis,
                         const inflab::GradientBlock& block) const override {
    return inflab::corrected_eigenvalues(basis, block.values);
  }
};

std::vector<inflab::OptionSpec> options() { return inflab::damping_option_specs(); }

}  // namespace

INFLAB_PLUGIN(Estimator, "ekfac", "1.0.0",
              "EK-FAC: K-FAC eigenbasis with eigenvalues corrected from the per-example gradients", options,
              Ekfac)
