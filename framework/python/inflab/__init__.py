"""inflab from Python: influence scores of LoRA gradients held in NumPy arrays or PyTorch tensors.

    import inflab
    scores = inflab.score(train, query, estimator="datainf")   # dicts: block name -> (rows, d) array
    inflab.plugins()                                           # every estimator, dataset and model
    inflab.run("experiments/quickstart.toml", set={"training.epochs": 2})

The computation is inflab's own (the same code as `inflab score`), so the scores equal the CLI's
on the same gradients. Float32 C-contiguous arrays (and CPU tensors) are read where they lie,
without a copy; other floating-point arrays are converted once. Errors raise inflab.Error
(a RuntimeError) with inflab's message. docs/python.md has a worked example.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

# Both below only take effect before NumPy (or torch) loads OpenBLAS and libgomp: they come first.
# Sleeping rather than spinning OpenMP threads (docs/performance.md, "Threads"); libgomp reads this
# when it loads, so it only takes effect if nothing in this process (torch, say) loaded it first.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def _pin_kernels_if_unloaded() -> None:
    """Pinned kernels (docs/performance.md, "Pinned kernels"): OpenBLAS reads its core type when it
    loads, so the environment is set here, before NumPy loads it, unless INFLAB_KERNELS=native or
    this process already holds an OpenBLAS (then inflab.numerics() says what runs). The variables
    are framework/src/numerics.cpp's kPinnedVariables: change them together."""
    if os.environ.get("INFLAB_KERNELS", "pinned") != "pinned":
        return
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split() for line in cpuinfo if line.startswith("flags")), [])
        with open("/proc/self/maps") as maps:
            loaded = "openblas" in maps.read()
    except OSError:
        return
    if "avx2" in flags and "fma" in flags and not loaded:
        os.environ.update(OPENBLAS_CORETYPE="Haswell", ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2",
                          DNNL_MAX_CPU_ISA="AVX2")


_pin_kernels_if_unloaded()

import numpy as np  # noqa: E402

from . import _inflab  # noqa: E402
from ._inflab import Error

__all__ = ["score", "plugins", "run", "set_threads", "threads", "numerics", "Error", "__version__"]
__version__ = _inflab.version()


def _as_array(value: Any, where: str = "tensor") -> Any:
    """A NumPy view of a PyTorch tensor (no copy on the CPU); anything else unchanged."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch.Tensor, without importing torch
        tensor = value.detach()
        if str(getattr(tensor, "layout", "torch.strided")) != "torch.strided":
            raise Error(f"{where}: a {tensor.layout} tensor; pass a dense one (tensor.to_dense())")
        if tensor.device.type == "meta":
            raise Error(f"{where}: a tensor on the meta device holds no values; pass one with data")
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        if str(tensor.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            tensor = tensor.float()
        try:
            return tensor.numpy()
        except (RuntimeError, TypeError) as error:
            raise Error(f"{where}: cannot read this tensor as an array ({error})") from None
    return value


def _blocks(side: str, blocks: Mapping[str, Any]) -> Dict[str, Any]:
    if not isinstance(blocks, Mapping):
        raise Error(f"{side}: expected a dict of block name -> (examples x values) array, "
                    f"found {type(blocks).__name__}")
    return {name: _as_array(values, f"{side}['{name}']") for name, values in blocks.items()}


def _option_text(key: str, value: Any) -> str:
    """key=value as `inflab score --set` takes it (the estimator parses it by the option's type)."""
    if isinstance(value, bool):
        return f"{key}={'true' if value else 'false'}"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"{key}={repr(float(value)) if isinstance(value, (float, np.floating)) else int(value)}"
    if isinstance(value, str):
        return f"{key}={value}"
    raise Error(f"option '{key}': expected a number, a bool or a string, found {type(value).__name__}")


def score(train: Mapping[str, Any], query: Mapping[str, Any], estimator: str = "datainf",
          mode: str = "aggregate", *, diagnostics: bool = False, normalise: str = "none",
          **options: Any):
    """Influence scores of every training example on the queries.

    train, query: dicts of block name -> array of per-example gradients (rows = examples, columns =
    the block's parameters flattened), the same names and widths on both sides, NumPy arrays or
    PyTorch tensors. estimator: a plugin name (inflab.plugins() lists them). mode: "aggregate"
    (the mean query gradient: n scores) or "pairwise" (n x q). options: the estimator's options,
    e.g. damping_scale=0.1 (see `inflab plugins datainf`). Positive = up-weighting the example
    raises the query loss (harmful). Returns a float32 array; with diagnostics=True, also the
    estimator's diagnostics (damping per block, residuals, ...). normalise: "none", "unit" (score
    divided by both gradients' norms) or "relatif" (divided by the square root of the training
    example's self-influence); docs/estimators.md, "Normalised scores".
    """
    assignments = [_option_text(k, v) for k, v in options.items()]
    scores, details = _inflab.score(_blocks("train", train), _blocks("query", query), estimator, mode,
                                    assignments, normalise)
    return (scores, details) if diagnostics else scores


def plugins(kind: Optional[str] = None) -> List[Dict[str, Any]]:
    """Every plugin found (estimator, dataset, model), each with its options; or those of one kind."""
    found = _inflab.plugins()
    if kind is not None:
        kinds = sorted({p["kind"] for p in found})
        if kind not in kinds:
            raise Error(f"kind: expected one of {', '.join(kinds)}, found '{kind}'")
        found = [p for p in found if p["kind"] == kind]
    return found


def _toml_value(value: Any, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise Error(f"set['{key}']: {value} has no TOML spelling inflab accepts")
        return repr(float(value))
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, key) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v, key)}" for k, v in value.items()) + "}"
    raise Error(f"set['{key}']: expected a number, bool, string, list or dict, found {type(value).__name__}")


def run(path: Union[str, os.PathLike], set: Optional[Union[Mapping[str, Any], Sequence[str]]] = None, *,
        out: Union[str, os.PathLike] = "results", cache: Union[str, os.PathLike] = "",
        resume: bool = True, replace: bool = False, quiet: bool = False) -> List[Dict[str, Any]]:
    """Runs an experiment file as `inflab run` does; returns one dict per run: its name, results
    directory, whether it was already finished (skipped), each estimator's metrics and seconds,
    and the stages' seconds. set: overrides, {"training.epochs": 2} or ["training.epochs=2"].
    A finished run of another configuration in `out` is an error unless replace=True.
    Data and weights must be prepared (`./inflab setup`); nothing is downloaded here."""
    if set is None:
        overrides: List[str] = []
    elif isinstance(set, Mapping):
        overrides = [f"{k}={_toml_value(v, k)}" for k, v in set.items()]
    elif isinstance(set, (list, tuple)):
        overrides = [str(s) for s in set]
    else:
        raise Error(f"set: expected a dict or a list of 'key=value' strings, found {type(set).__name__}")
    return _inflab.run(os.fspath(path), overrides, os.fspath(out), os.fspath(cache), resume, replace, quiet)


def set_threads(count: int) -> int:
    """LibTorch threads for inflab (and for torch in the same process: it is one library).
    0 = $INFLAB_THREADS, else every core (the default at import). Returns the count in effect."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 0 <= count <= 4096:
        raise Error(f"set_threads: expected an integer in [0, 4096] (0: $INFLAB_THREADS, else every core), "
                    f"found {count!r}")
    return _inflab.set_threads(int(count))


def threads() -> int:
    return _inflab.threads()


def numerics() -> Dict[str, Any]:
    """The kernels this process computes with: key (as stage keys and manifests record it), summary,
    requested ("pinned" unless INFLAB_KERNELS=native), pinned (whether they are), and a note saying
    why not (e.g. OpenBLAS was loaded before `import inflab`)."""
    return _inflab.numerics()
