// Defaults of the optional Model capabilities: a model that lacks one says so clearly.
#include "inflab/model.hpp"

#include "inflab/error.hpp"

namespace inflab {

at::Tensor Model::encode_texts(const std::vector<std::string>&) {
  throw Error("this model does not take text; choose a text model (e.g. minilm_lora) for a text dataset");
}

at::Tensor Model::probe_features(const at::Tensor&) { throw Error("this model has no probe features"); }
at::Tensor Model::probe_head(const at::Tensor&) { throw Error("this model has no probe head"); }

at::Tensor Model::token_mask(const at::Tensor&) { return {}; }

at::Tensor Model::token_logits(const at::Tensor& inputs, const at::Tensor& scored) {
  at::Tensor logits = forward(inputs);
  if (logits.dim() != 3)
    throw Error(
        "task causal_lm needs a model whose forward() gives logits per position (batch x positions x "
        "vocabulary); this model gives class logits");
  // Rows in row-major order of (batch, position), as the task's targets are read.
  return logits.reshape({-1, logits.size(2)}).index_select(0, scored.reshape({-1}).nonzero().squeeze(1));
}

at::Tensor Model::denoise(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  throw Error("task denoising needs a denoiser model (one that implements Model::denoise)");
}

at::Tensor Model::embed(const std::vector<std::string>&) {
  throw Error("this model does not produce sentence embeddings");
}

}  // namespace inflab
