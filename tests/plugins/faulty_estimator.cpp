// An estimator that fails on purpose (option `fault`), to test that a faulty plugin ends the run
// with an error naming it and that the outputs written before it stay intact.
#include <inflab/error.hpp>
#include <inflab/estimator.hpp>
#include <limits>
#include <stdexcept>

namespace {
class Faulty : public inflab::Estimator {
 public:
  void configure(const inflab::Options& options) override { fault_ = options.get_string("fault"); }
  void fit(const inflab::GradientBlocks&) override {
    if (fault_ == "throw") throw std::runtime_error("simulated failure in fit");
  }
  at::Tensor inverse_product(std::size_t, const at::Tensor& queries) override {
    if (fault_ == "wrong_shape") return queries.narrow(1, 0, 1);  // drops columns
    if (fault_ == "nan") return queries.mul(std::numeric_limits<float>::quiet_NaN());
    return queries;
  }

 private:
  std::string fault_;
};
std::vector<inflab::OptionSpec> options() {
  return {{"fault", inflab::OptionType::String, std::string("throw"), "throw | wrong_shape | nan | none"}};
}
}  // namespace

INFLAB_PLUGIN(Estimator, "faulty_estimator", "0.0.1", "fails on purpose (tests)", options, Faulty)
