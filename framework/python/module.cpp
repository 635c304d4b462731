// inflab's Python module (_inflab, wrapped by inflab/__init__.py): scoring of gradients held in
// NumPy arrays, the plugin list and experiment runs, through the same framework calls as the CLI.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "inflab/config.hpp"
#include "inflab/error.hpp"
#include "inflab/gradients.hpp"
#include "inflab/numerics.hpp"
#include "inflab/pipeline.hpp"
#include "inflab/progress.hpp"
#include "inflab/registry.hpp"
#include "inflab/runtime.hpp"
#include "inflab/scoring.hpp"

namespace py = pybind11;
using namespace inflab;

namespace {

// One registry for the process, loaded at first use and never unloaded: plugin code must stay
// mapped for as long as anything it made can be alive, and interpreter exit order is unknown.
const Registry& shared_registry() {
  static Registry* registry = [] {
    auto* r = new Registry();
    r->load_default_locations();
    return r;
  }();
  return *registry;
}

// Gradient blocks from a dict of block name -> NumPy array, in the dict's order. A C-contiguous
// native float32 array is wrapped where it lies (no copy: `keep` holds it for the call); other
// floating-point arrays are converted once. Errors name the side and the block.
GradientBlocks blocks_from(const py::dict& arrays, const char* side, std::vector<py::array>& keep) {
  GradientBlocks blocks;
  for (const auto& [key, value] : arrays) {
    if (!py::isinstance<py::str>(key))
      throw Error(fmt::format("{}: block names must be strings, found {}", side,
                              std::string(py::str(py::type::of(key).attr("__name__")))));
    const std::string name = py::cast<std::string>(key);
    const std::string where = fmt::format("{}['{}']", side, name);
    if (!py::isinstance<py::array>(value))
      throw Error(fmt::format("{}: expected a NumPy array or a PyTorch tensor, found {}", where,
                              std::string(py::str(py::type::of(value).attr("__name__")))));
    auto array = py::reinterpret_borrow<py::array>(value);
    if (array.ndim() != 2)
      throw Error(fmt::format("{}: expected a 2-D array (examples x values), found {} dimension(s)", where,
                              array.ndim()));
    const char kind = array.dtype().kind();
    if (kind != 'f')
      throw Error(fmt::format("{}: expected floating-point gradients, found dtype {}", where,
                              std::string(py::str(array.dtype()))));
    const bool wrappable = array.dtype().is(py::dtype::of<float>()) &&
                           (array.flags() & py::array::c_style) == py::array::c_style;
    if (!wrappable) array = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(array);
    keep.push_back(array);
    // Read-only arrays (np.load(mmap_mode="r")) are fine: nothing here writes to the gradients.
    at::Tensor values = at::from_blob(const_cast<void*>(array.data()), {array.shape(0), array.shape(1)},
                                      at::TensorOptions().dtype(at::kFloat));
    blocks.push_back({name, checked_gradient_values(values, where)});
  }
  if (blocks.empty()) throw Error(fmt::format("{}: no gradient blocks (an empty dict)", side));
  return blocks;
}

// A tensor handed to NumPy without a copy: the array owns a reference to it.
py::array to_numpy(const at::Tensor& tensor) {
  auto* owned = new at::Tensor(tensor.to(at::kFloat).contiguous());
  py::capsule owner(owned, [](void* p) { delete static_cast<at::Tensor*>(p); });
  std::vector<py::ssize_t> shape(owned->sizes().begin(), owned->sizes().end());
  return py::array_t<float>(shape, owned->data_ptr<float>(), owner);
}

py::tuple score(const py::dict& train, const py::dict& query, const std::string& estimator,
                const std::string& mode, const std::vector<std::string>& assignments,
                const std::string& normalise) {
  std::vector<py::array> keep;
  GradientBlocks train_blocks = blocks_from(train, "train", keep);
  GradientBlocks query_blocks = blocks_from(query, "query", keep);
  ScoredBlocks scored;
  {
    py::gil_scoped_release release;  // other Python threads run while inflab computes
    scored = score_with_estimator(shared_registry(), estimator, assignments, mode, train_blocks, query_blocks,
                                  normalise);
  }
  return py::make_tuple(to_numpy(scored.scores), scored.diagnostics);
}

// Where each block's tensor points: lets the tests check that float32 arrays are not copied.
std::vector<std::uintptr_t> block_addresses(const py::dict& arrays) {
  std::vector<py::array> keep;
  std::vector<std::uintptr_t> out;
  for (const auto& block : blocks_from(arrays, "train", keep))
    out.push_back(reinterpret_cast<std::uintptr_t>(block.values.data_ptr()));
  return out;
}

py::list plugins() {
  py::list out;
  for (const auto& record : shared_registry().plugins()) {
    py::list options;
    for (const auto& o : record.info->options()) {
      py::dict option;
      option["name"] = o.name;
      option["type"] = to_string(o.type);
      option["required"] = o.required;
      option["default"] = o.required ? std::string() : format_value(o.default_value);
      option["help"] = o.help;
      options.append(option);
    }
    py::dict plugin;
    plugin["kind"] = to_string(record.info->kind);
    plugin["name"] = record.info->name;
    plugin["version"] = record.info->version;
    plugin["description"] = record.info->description;
    plugin["file"] = record.file.string();
    plugin["options"] = options;
    out.append(plugin);
  }
  return out;
}

py::list run(const std::string& path, const std::vector<std::string>& overrides, const std::string& out,
             const std::string& cache, bool resume, bool replace, bool quiet) {
  Progress::set_quiet(quiet);
  std::vector<RunOutcome> outcomes;
  std::vector<std::string> names;
  {
    py::gil_scoped_release release;
    Registry registry;  // its own: an experiment may load plugins from paths it names
    registry.load_default_locations();
    const auto configs = load_experiment(path, overrides, registry);
    // This process's BLAS was loaded before inflab could choose: what it has is what runs (and
    // what the stage keys and the manifest record).
    if (!configs.empty()) select_kernels(requested_kernel_mode("", configs.front().kernels), false);
    for (const auto& config : configs) {
      names.push_back(config.run_name);
      outcomes.push_back(run_experiment(config, registry, RunPaths{out, cache}, resume, replace));
    }
  }
  py::list result;
  for (std::size_t k = 0; k < outcomes.size(); ++k) {
    py::dict estimators;
    for (const auto& e : outcomes[k].estimators) {
      py::dict metrics;
      for (const auto& [name, value] : e.metrics) metrics[py::str(name)] = value;
      if (e.label != "model") metrics["seconds"] = e.seconds;
      estimators[py::str(e.label)] = metrics;
    }
    py::dict entry;
    entry["run"] = names[k];
    entry["directory"] = outcomes[k].directory.string();
    entry["skipped"] = outcomes[k].skipped;
    entry["estimators"] = estimators;
    entry["stage_seconds"] = outcomes[k].stage_seconds;
    result.append(entry);
  }
  return result;
}

}  // namespace

PYBIND11_MODULE(_inflab, m) {
  m.doc() = "inflab's compiled core; use the inflab package";
  py::register_exception<Error>(m, "Error", PyExc_RuntimeError);  // inflab.Error, with inflab's message
  configure_threads(0);                              // as the CLI: $INFLAB_THREADS, else every core
  select_kernels(requested_kernel_mode(""), false);  // __init__.py set the environment if it could
  m.def("score", &score, py::arg("train"), py::arg("query"), py::arg("estimator"), py::arg("mode"),
        py::arg("assignments"), py::arg("normalise") = "none");
  m.def("plugins", &plugins);
  m.def("run", &run, py::arg("path"), py::arg("overrides"), py::arg("out"), py::arg("cache"),
        py::arg("resume"), py::arg("replace"), py::arg("quiet"));
  m.def("set_threads", &configure_threads, py::arg("threads"));
  m.def("threads", &current_threads);
  m.def("numerics", [] {
    const Numerics& n = current_numerics();
    py::dict out;
    out["key"] = n.key();
    out["summary"] = n.summary();
    out["requested"] = to_string(n.requested);
    out["pinned"] = n.pinned;
    out["blas_kernel"] = n.blas_kernel;
    out["aten_capability"] = n.aten_capability;
    out["onednn_isa"] = n.onednn_isa;
    out["processor"] = n.processor;
    out["note"] = n.note;
    return out;
  });
  m.def("version", &inflab_version);
  m.def("_block_addresses", &block_addresses);
}
