"""`import inflab` against independent oracles: the CLI on the same files (equal exactly), DataInf and
Exact written out in float64 NumPy, PyTorch tensors against NumPy arrays, the arrays' own memory
(no copy), the metrics files a run writes, and inflab's error messages.

Run by ctest (python_module) with PYTHONPATH=build/python and INFLAB_BUILD=build."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

# inflab first: it pins OpenBLAS's kernels (docs/performance.md, "Pinned kernels") only if nothing
# loaded OpenBLAS before it, as NumPy would; then this process computes as the CLI does.
import inflab  # noqa: I001
import numpy as np
import pytest

BUILD = Path(os.environ.get("INFLAB_BUILD", Path(__file__).resolve().parents[2] / "build"))
SOURCE = Path(__file__).resolve().parents[2]
CLI = BUILD / "bin" / "inflab"
# Small real subsets: Fashion-MNIST, a pretrained MLP, a LoRA fine-tuned for one epoch.
SMALL = ["dataset.n_train=120", "dataset.n_validation=40", "dataset.n_pretrain=600", "training.epochs=1",
         "model.lora.rank=2"]


def cli(*args, **kwargs):
    return subprocess.run([str(CLI), "--quiet", *args], check=True, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Real gradients of the quickstart's model on a small subset, written by `inflab gradients`."""
    work = tmp_path_factory.mktemp("store")
    sets = [a for s in SMALL for a in ("--set", s)]
    cli("gradients", str(SOURCE / "experiments" / "quickstart.toml"), *sets, "--out", str(work / "g"),
        "--cache", str(work / "cache"))
    blocks = json.loads((work / "g" / "blocks.json").read_text())["blocks"]
    names = [b["name"] for b in blocks]
    train = {n: np.load(work / "g" / "train" / f"{n}.npy", mmap_mode="r") for n in names}
    query = {n: np.load(work / "g" / "query" / f"{n}.npy", mmap_mode="r") for n in names}
    return work, train, query


def cli_scores(work, estimator, mode, *sets):
    out = work / f"{estimator}_{mode}_{len(sets)}.npy"
    cli("score", "--gradients", str(work / "g"), "--estimator", estimator, "--mode", mode, "--out", str(out),
        *[a for s in sets for a in ("--set", s)])
    return np.load(out)


@pytest.mark.parametrize("estimator,mode,options,sets", [
    ("datainf", "aggregate", {}, []),
    ("datainf", "pairwise", {}, []),
    ("exact", "aggregate", {"damping_scale": 0.5}, ["damping_scale=0.5"]),
    ("lissa", "aggregate", {"iterations": 7, "variant": "reference_code", "scale": 1},
     ["iterations=7", "variant=reference_code", "scale=1"]),
    ("hessian_free", "pairwise", {}, []),
])
def test_scores_equal_the_cli_on_the_same_files(store, estimator, mode, options, sets):
    work, train, query = store
    # Same library, same thread count, same order of operations: equal to the last bit.
    from_python = inflab.score(train, query, estimator, mode, **options)
    from_cli = cli_scores(work, estimator, mode, *sets)
    assert from_python.dtype == np.float32
    assert from_python.shape == from_cli.shape
    assert np.array_equal(from_python, from_cli)


@pytest.mark.parametrize("estimator,normalise", [("hessian_free", "unit"), ("datainf", "relatif"),
                                                  ("arnoldi", "none")])
def test_normalised_scores_equal_the_cli(store, estimator, normalise):
    work, train, query = store
    from_python = inflab.score(train, query, estimator, "pairwise", normalise=normalise)
    out = work / f"{estimator}_{normalise}.npy"
    cli("score", "--gradients", str(work / "g"), "--estimator", estimator, "--mode", "pairwise",
        "--normalise", normalise, "--out", str(out))
    assert np.array_equal(from_python, np.load(out))


def test_unit_normalised_hessian_free_is_the_gradient_cosine(store):
    _, train, query = store
    g = np.concatenate([np.asarray(train[n], dtype=np.float64) for n in train], axis=1)
    v = np.concatenate([np.asarray(query[n], dtype=np.float64) for n in train], axis=1)
    cosine = -(g @ v.T) / np.linalg.norm(g, axis=1)[:, None] / np.linalg.norm(v, axis=1)[None, :]
    got = inflab.score(train, query, "hessian_free", "pairwise", normalise="unit").astype(np.float64)
    assert np.abs(got - cosine).max() <= 1e-5
    with pytest.raises(inflab.Error, match="cosine"):
        inflab.score(train, query, "hessian_free", normalise="cosine")


def datainf_float64(train, query, damping_scale=0.1):
    """The paper's DataInf (paper-facts.md), per block, in float64: an independent oracle."""
    scores = 0.0
    for name in train:
        g = np.asarray(train[name], dtype=np.float64)
        v = np.asarray(query[name], dtype=np.float64).mean(axis=0)
        n, d = g.shape
        norms = (g * g).sum(axis=1)
        lam = damping_scale * norms.sum() / (n * d)
        r = (v[None, :] - ((g @ v) / (lam + norms))[:, None] * g).sum(axis=0) / (n * lam)
        scores = scores - g @ r
    return scores


def exact_float64(train, query, damping_scale=0.1):
    scores = 0.0
    for name in train:
        g = np.asarray(train[name], dtype=np.float64)
        v = np.asarray(query[name], dtype=np.float64).mean(axis=0)
        n, d = g.shape
        lam = damping_scale * (g * g).sum() / (n * d)
        scores = scores - g @ np.linalg.solve(g.T @ g / n + lam * np.eye(d), v)
    return scores


def test_datainf_and_exact_match_float64_oracles(store):
    _, train, query = store
    for estimator, oracle in (("datainf", datainf_float64), ("exact", exact_float64)):
        expected = oracle(train, query)
        got = inflab.score(train, query, estimator).astype(np.float64)
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), estimator


def test_float32_arrays_are_not_copied_and_others_are_converted():
    rng = np.random.default_rng(0)
    contiguous = rng.standard_normal((50, 8)).astype(np.float32)
    addresses = inflab._inflab._block_addresses({"w": contiguous})
    assert addresses == [contiguous.ctypes.data]
    as_float64 = contiguous.astype(np.float64)
    transposed = np.asfortranarray(contiguous)
    for other in (as_float64, transposed):
        assert inflab._inflab._block_addresses({"w": other}) != [other.ctypes.data]
    query = rng.standard_normal((5, 8)).astype(np.float32)
    reference = inflab.score({"w": contiguous}, {"w": query}, "datainf")
    for other in (as_float64, transposed):
        got = inflab.score({"w": other}, {"w": query}, "datainf")
        assert np.allclose(got, reference, rtol=1e-5, atol=1e-7)


def test_pytorch_tensors_score_as_their_arrays(store):
    torch = pytest.importorskip("torch")
    _, train, query = store
    train_t = {n: torch.from_numpy(np.array(a)) for n, a in train.items()}
    query_t = {n: torch.from_numpy(np.array(a)).requires_grad_(True) for n, a in query.items()}
    first = next(iter(train_t))
    assert inflab._inflab._block_addresses({first: inflab._as_array(train_t[first])}) == \
        [train_t[first].data_ptr()]  # a CPU float32 tensor is read where it lies
    expected = inflab.score(train, query, "datainf", "pairwise")
    assert np.array_equal(inflab.score(train_t, query_t, "datainf", "pairwise"), expected)


def test_diagnostics_report_the_damping_rule(store):
    _, train, query = store
    _, diagnostics = inflab.score(train, query, "datainf", diagnostics=True, damping_scale=0.2)
    for name, g in train.items():
        g = np.asarray(g, dtype=np.float64)
        expected = 0.2 * (g * g).sum() / g.size
        assert diagnostics[f"{name}.lambda"] == pytest.approx(expected, rel=1e-5)


def test_errors_name_the_block_the_option_and_the_plugin():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((20, 6)).astype(np.float32)
    q = rng.standard_normal((3, 6)).astype(np.float32)
    with pytest.raises(inflab.Error, match=r"block 'w': training and query gradients must be 2-D with equal widths"):
        inflab.score({"w": w}, {"w": q[:, :4]})
    bad = w.copy()
    bad[7, 2] = np.nan
    with pytest.raises(inflab.Error, match=r"train\['w'\]: 1 rows contain NaN or Inf, the first is row 7"):
        inflab.score({"w": bad}, {"w": q})
    with pytest.raises(inflab.Error, match=r"query\['w'\]: expected floating-point gradients, found dtype int64"):
        inflab.score({"w": w}, {"w": q.astype(np.int64)})
    with pytest.raises(inflab.Error, match=r"train\['w'\]: expected a 2-D array"):
        inflab.score({"w": w[0]}, {"w": q})
    with pytest.raises(inflab.Error, match=r"unknown estimator plugin 'datainff' \(did you mean 'datainf'\?\)"):
        inflab.score({"w": w}, {"w": q}, "datainff")
    with pytest.raises(inflab.Error, match=r"no option 'damping_scal' \(did you mean 'damping_scale'\?\)"):
        inflab.score({"w": w}, {"w": q}, damping_scal=0.1)
    with pytest.raises(inflab.Error, match=r"block 'v' has 19 training rows but block 'w' has 20"):
        inflab.score({"w": w, "v": w[:19]}, {"w": q, "v": q})
    with pytest.raises(inflab.Error, match=r"the query set is empty"):
        inflab.score({"w": w}, {"w": q[:0]})
    with pytest.raises(inflab.Error, match=r"mode: expected aggregate or pairwise, found 'pairs'"):
        inflab.score({"w": w}, {"w": q}, mode="pairs")
    with pytest.raises(inflab.Error, match=r"train: no gradient blocks"):
        inflab.score({}, {"w": q})
    assert issubclass(inflab.Error, RuntimeError)


def test_plugins_lists_every_kind_with_options():
    found = {(p["kind"], p["name"]) for p in inflab.plugins()}
    for expected in [("estimator", "datainf"), ("estimator", "ekfac"), ("dataset", "fashion_mnist"),
                     ("model", "mlp_lora")]:
        assert expected in found
    datainf = next(p for p in inflab.plugins("estimator") if p["name"] == "datainf")
    assert "damping_scale" in {o["name"] for o in datainf["options"]}
    with pytest.raises(inflab.Error, match="kind: expected one of"):
        inflab.plugins("estimators")


def test_run_returns_the_metrics_it_writes(tmp_path):
    overrides = {k: v for k, v in (s.split("=") for s in SMALL)}
    overrides = {k: int(v) for k, v in overrides.items()}
    outcome = inflab.run(SOURCE / "experiments" / "quickstart.toml", set=overrides, out=tmp_path / "results",
                         cache=tmp_path / "cache", quiet=True)
    assert len(outcome) == 1 and not outcome[0]["skipped"]
    directory = Path(outcome[0]["directory"])
    with open(directory / "metrics.csv") as f:
        written = list(csv.DictReader(f))
    assert written, "metrics.csv is empty"
    for row in written:
        got = outcome[0]["estimators"][row["estimator"]][row["metric"]]
        # metrics.csv keeps 8 significant digits, seconds to the microsecond
        tolerance = dict(abs=1e-6) if row["metric"] == "seconds" else dict(rel=1e-7, abs=1e-12)
        assert got == pytest.approx(float(row["value"]), **tolerance)
    # A second call finds the finished run and reports the same metrics without recomputing.
    again = inflab.run(SOURCE / "experiments" / "quickstart.toml", set=overrides, out=tmp_path / "results",
                       cache=tmp_path / "cache", quiet=True)
    assert again[0]["skipped"]
    assert again[0]["estimators"]["datainf"]["auc"] == pytest.approx(outcome[0]["estimators"]["datainf"]["auc"], rel=1e-7)
    with pytest.raises(inflab.Error, match=r"training\.epochz"):
        inflab.run(SOURCE / "experiments" / "quickstart.toml", set={"training.epochz": 1}, quiet=True)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))


PINNED_VARIABLES = ("OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def numerics_of_fresh_python(code, **variables):
    """inflab.numerics() in a new interpreter whose environment pins nothing (as a user's shell)."""
    env = {k: v for k, v in os.environ.items()
           if k not in PINNED_VARIABLES and not k.startswith("INFLAB_PRESET_") and k != "INFLAB_KERNELS"}
    env.update(variables)
    done = subprocess.run([sys.executable, "-c", code + "\nimport json\nprint(json.dumps(inflab.numerics()))"],
                          env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def cpu_flags():
    with open("/proc/cpuinfo") as cpuinfo:
        return next(line.split() for line in cpuinfo if line.startswith("flags"))


@pytest.mark.skipif("avx2" not in cpu_flags() or "fma" not in cpu_flags(), reason="pinned kernels need AVX2 and FMA")
def test_import_pins_kernels_unless_openblas_was_loaded_first_or_native_is_asked():
    pinned, _ = numerics_of_fresh_python("import inflab")
    assert pinned["requested"] == "pinned" and pinned["pinned"], pinned
    assert pinned["blas_kernel"] == "Haswell" and pinned["aten_capability"] == "avx2"
    native, _ = numerics_of_fresh_python("import inflab", INFLAB_KERNELS="native")
    assert native["requested"] == "native" and not native["pinned"]
    # NumPy first: OpenBLAS chose its kernels already; inflab says so (log and numerics) and goes on.
    late, stderr = numerics_of_fresh_python("import numpy\nimport inflab")
    if late["blas_kernel"] == "Haswell":
        pytest.skip("this processor's own OpenBLAS kernels are the pinned ones")
    assert not late["pinned"] and "OPENBLAS_CORETYPE=Haswell" in late["note"], late
    assert "kernels not pinned" in stderr
