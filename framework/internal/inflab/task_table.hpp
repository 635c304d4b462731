// The built-in tasks as one table (task.cpp): a new task is its Task class and one row. The
// configuration reads its options and what applies to it from here; make_task, task_names and
// task_option_specs (inflab/task.hpp) are computed from it.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "inflab/options.hpp"
#include "inflab/task.hpp"

namespace inflab {

struct TaskDefinition {
  std::string name;                 // task.name
  std::vector<OptionSpec> options;  // its own [task] keys (their help names the task)
  // The task for validated options; throws an Error naming the key ("key 'task.x': ...") when a
  // value is not one it takes.
  std::unique_ptr<Task> (*make)(const Options& options) = nullptr;
  bool trains_on_class_labels = false;  // dataset.label_noise (flipped class labels) applies
  bool generates_images = false;        // a denoiser: [queries] and `inflab sample` apply
};

const std::vector<TaskDefinition>& task_definitions();
const TaskDefinition* find_task(const std::string& name);  // null for an unknown name

}  // namespace inflab
