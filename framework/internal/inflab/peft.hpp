// Hugging Face PEFT LoRA adapters in and out: a directory with adapter_config.json and
// adapter_model.safetensors, tensors named "base_model.model.<module>.lora_A.weight" (r x in) and
// "...lora_B.weight" (out x r), scale lora_alpha / r. inflab's layers map to modules through
// PeftCounterpart::peft_module (inflab/model.hpp); layers without a Hugging Face counterpart (an inflab
// classifier head) go to inflab_head.safetensors in the same directory.
#pragma once
#include <filesystem>
#include <string>

namespace inflab {

class Model;

// `model_name` is the model plugin's name, for messages.
// Writes `model`'s LoRA adapters (the layers that have one) atomically into `directory`.
// Throws when the model has no Hugging Face counterpart (it does not implement PeftCounterpart).
void export_peft_adapter(Model& model, const std::string& model_name, const std::filesystem::path& directory);

// Loads an adapter directory into `model`'s LoRA layers. Every mismatch is an error naming the
// file and the tensor or key: another base model, a rank or alpha other than the model's LoRA
// configuration, a tensor for a module the model has no LoRA on, a LoRA layer with no tensor, a
// shape. Only safetensors is read (a pickled adapter_model.bin is refused with what to do).
void import_peft_adapter(Model& model, const std::string& model_name, const std::filesystem::path& directory);

}  // namespace inflab
