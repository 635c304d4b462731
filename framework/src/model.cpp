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

at::Tensor Model::embed(const std::vector<std::string>&) {
  throw Error("this model does not produce sentence embeddings");
}

}  // namespace inflab
