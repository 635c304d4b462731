// The framework's sections of an experiment file (private), each declared next to the code that
// reads it: its keys (type, default, range, help) and the checks a key's type and range cannot
// say. config.cpp validates a file against them and writes the resolved values; the stages read
// them through StageInputs. A new parameter is one line here in its section and one read.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "inflab/options.hpp"

namespace inflab {

// What a section's check found wrong: the key it concerns ("" = the section) and the message.
struct SectionProblem {
  std::string key;
  std::string message;
};

struct SectionSchema {
  std::string name;  // as written in the file: "training", "model.lora"
  std::vector<OptionSpec> options;
  // After each key's type and range: checks what they cannot say and fills the values derived from
  // others (model.lora alpha = rank when absent). Null: nothing to check.
  std::optional<SectionProblem> (*check)(Options& values) = nullptr;
};

const SectionSchema& dataset_section();      // stages/data.cpp: label noise (with the plugin's keys)
const SectionSchema& lora_section();         // stages/data.cpp: the adapters put on the model
const SectionSchema& training_section();     // stages/training.cpp: fine-tuning and pretraining
const SectionSchema& checkpoints_section();  // stages/training.cpp: fine-tuning checkpoints (TracIn)
const SectionSchema& queries_section();      // stages/gradients.cpp: generated query images
const SectionSchema& projection_section();   // stages/gradients.cpp: random projection of gradients
const SectionSchema& evaluation_section();   // evaluation.cpp: metrics and how gradients are kept

// For checks: nothing when `section`.`key` is one of `words`, else the problem naming them.
std::optional<SectionProblem> one_of(const Options& values, const std::string& section,
                                     const std::string& key, const std::vector<std::string>& words,
                                     const std::string& note = "");

}  // namespace inflab
