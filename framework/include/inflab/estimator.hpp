// Estimator plugins see gradients only: per block an n x d_l float32 matrix. An estimator is a
// per-block preconditioner M_l^{-1}; the framework turns it into influence scores
//   I(k, q) = - sum_l g_kl . (M_l^{-1} v_ql)
// (positive = up-weighting k raises the query loss, i.e. harmful).
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

#include "inflab/plugin.hpp"

namespace inflab {

struct GradientBlock {
  std::string name;
  at::Tensor values;  // rows = examples, columns = the block's parameters (float32, contiguous)
  // Optional Kronecker factors of the block seen as a linear map W (out x in), whose rows are
  // flattened row-major into `values` (d = out * in). Training side only; may be undefined.
  //   activation_covariance: in x in,  mean over all tokens of a a^T
  //   gradient_covariance:   out x out, mean over examples of (sum over tokens of delta delta^T)
  // For one token per example, G_l = gradient_covariance (x) activation_covariance exactly when
  // every example has the same input (docs/estimators.md states the convention).
  at::Tensor activation_covariance, gradient_covariance;
  // Tokens the activation covariance averages over (rows of `values` are the examples); lets a
  // distributed run combine the shards' factors exactly.
  std::int64_t factor_tokens = 0;
  bool has_factors() const { return activation_covariance.defined() && gradient_covariance.defined(); }
};
using GradientBlocks = std::vector<GradientBlock>;

class Estimator : public Plugin {
 public:
  // Called once with the training gradients, before any inverse_product.
  virtual void fit(const GradientBlocks& train) = 0;
  // M_block^{-1} applied to every row of `queries` (q x d_block); returns q x d_block.
  virtual at::Tensor inverse_product(std::size_t block, const at::Tensor& queries) = 0;
  // Numbers worth reporting (damping, residuals, iterations), keyed "<block>.<what>".
  virtual std::map<std::string, double> diagnostics() const { return {}; }
  // Optional fit cache: estimators whose fit is expensive (K-FAC, EK-FAC) write their fitted
  // state to `dir` and read it back instead of fitting again. Return false when not supported.
  virtual bool save_fit(const std::string& dir) const {
    (void)dir;
    return false;
  }
  virtual bool load_fit(const std::string& dir, const GradientBlocks& train) {
    (void)dir, (void)train;
    return false;
  }
  // True when fit and inverse_product are correct with the training rows sharded over ranks:
  // every sum over training examples goes through inflab/distributed.hpp (sum_over_ranks,
  // rows_over_ranks, or the helpers below). Distributed runs refuse other estimators.
  virtual bool supports_distributed() const { return false; }
  // The degree k with M(c g) = c^k M(g) for this configuration: 2 for a damped Gauss-Newton whose
  // damping follows the gradients (the shared rule), 0 for no preconditioner, -1 for none (a fixed
  // damping, a fixed LiSSA scale). With k >= 0 the framework rescales blocks whose gradients are
  // very large or very small to unit size before fit and undoes it exactly after, so scores do not
  // underflow or overflow in float32.
  virtual int preconditioner_degree() const { return 2; }
  // True for estimators scored over the fine-tuning's checkpoints (TracIn): the framework fits and
  // scores the estimator on each checkpoint's gradients ([checkpoints] count = C in the experiment)
  // and sums the scores weighted by the learning rate of that stretch of training.
  virtual bool over_checkpoints() const { return false; }
};

// The damping rule shared by every estimator (paper-facts.md):
//   lambda_l = scale * (1 / (n d_l)) * sum_i ||g_il||^2, or a fixed value when one is given.
struct Damping {
  double scale = 0.1;
  double fixed = 0.0;  // > 0 overrides the rule
  // `block` names the block in the error when every gradient is zero (the rule has no scale then).
  double for_block(const at::Tensor& gradients, const std::string& block = "") const;
  // The same, from precomputed squared row norms (saves a pass over the gradients).
  double for_norms(const at::Tensor& squared_row_norms, std::int64_t dim,
                   const std::string& block = "") const;
};
std::vector<OptionSpec> damping_option_specs();
// Hands the heap's free pages back to the system (malloc_trim). glibc serves allocations up to
// 32 MiB from its heap once one that size was freed; a fit's d x d temporaries then stay resident
// between the factors kept (Exact on 25 blocks of 2,000: 1.6 GB resident for 0.8 GB of factors).
void return_freed_memory();
// a.mm(b) for 2-d a and b, as a matrix-vector product when a has one row or b one column (one
// query, aggregate mode, a power iteration): OpenBLAS 0.3.21's sgemm packs the whole matrix
// first, which made such products 3.5x one read pass.
at::Tensor matrix_product(const at::Tensor& a, const at::Tensor& b);
// ||g_i||^2 per row, without an n x d temporary.
at::Tensor squared_row_norms(const at::Tensor& gradients);
// Rows holding NaN or Inf: how many, and the first (-1 if none). Checked in chunks of rows, so a
// memory-mapped store is read once without an n x d temporary.
struct NonFiniteRows {
  std::int64_t count = 0, first = -1;
};
NonFiniteRows nonfinite_rows(const at::Tensor& gradients);
// G^T G (d x d) in float64, accumulated over chunks of rows: no n x d float64 copy of G.
// Summed over the ranks of a distributed run (each holds a shard of the rows).
at::Tensor gram_of_columns_float64(const at::Tensor& gradients);
// (G^T G / n + lambda I) applied to every row of r (Q x d), n and the sum over all ranks' rows:
// the Gauss-Newton product iterative solvers use; one all-reduce of Q x d per call.
at::Tensor gauss_newton_product(const at::Tensor& gradients, const at::Tensor& r, double lambda);
Damping damping_from(const Options& options);  // validates lambda > 0
// max over the rows of ||(G^T G / n + lambda I) r - v|| / ||v||: how far iterative solutions r of
// the damped system are from v (a rank-summed Gauss-Newton product, like gauss_newton_product).
double max_relative_residual(const at::Tensor& gradients, const at::Tensor& r, const at::Tensor& v,
                             double lambda);

// What fit_block sees of one training block.
struct BlockFit {
  std::size_t index;  // position of the block
  const GradientBlock& block;
  double lambda;             // the shared damping rule's value for this block
  at::Tensor squared_norms;  // ||g_i||^2 per training row (computed once for the rule)
};

// The skeleton shared by estimators that fit every block on its own: per block the damping
// lambda, the subclass's fitted State, and "<block>.lambda" in the diagnostics. A subclass holds
// only its mathematics: fit_block (one block) and inverse_product (reading state(b)); options
// beyond the damping go to configure_method.
template <class State>
class BlockwiseEstimator : public Estimator {
 public:
  void configure(const Options& options) final {
    damping_ = damping_from(options);
    configure_method(options);
  }
  void fit(const GradientBlocks& train) override {
    states_.clear(), names_.clear(), diagnostics_.clear();
    for (std::size_t b = 0; b < train.size(); ++b) {
      const GradientBlock& block = train[b];
      at::Tensor norms = squared_row_norms(block.values);
      const double lambda = damping_.for_norms(norms, block.values.size(1), block.name);
      names_.push_back(block.name);
      report(b, "lambda", lambda);
      states_.push_back(fit_block(BlockFit{b, block, lambda, norms}));
      return_freed_memory();
    }
  }
  std::map<std::string, double> diagnostics() const override { return diagnostics_; }
  int preconditioner_degree() const override { return damping_.fixed > 0 ? -1 : 2; }

 protected:
  virtual void configure_method(const Options& options) { (void)options; }
  virtual State fit_block(const BlockFit& fit) = 0;
  const State& state(std::size_t b) const { return states_.at(b); }
  std::size_t blocks() const { return states_.size(); }
  const std::string& block_name(std::size_t b) const { return names_.at(b); }
  void report(std::size_t b, const std::string& what, double value) {
    diagnostics_[names_.at(b) + "." + what] = value;
  }
  // A fit read back from a cache (load_fit): the blocks' names, states and lambdas.
  void restore(const GradientBlocks& train, std::vector<State> states, const std::vector<double>& lambdas) {
    names_.clear(), diagnostics_.clear();
    for (std::size_t b = 0; b < train.size(); ++b)
      names_.push_back(train[b].name), report(b, "lambda", lambdas[b]);
    states_ = std::move(states);
  }

 private:
  Damping damping_;
  std::vector<State> states_;
  std::vector<std::string> names_;
  std::map<std::string, double> diagnostics_;
};

}  // namespace inflab
