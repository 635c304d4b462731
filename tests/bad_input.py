#!/usr/bin/env python3
"""Bad input never crashes, never escapes, never overwrites (issue 31; docs/reliability.md).

A sweep of bad inputs, tried as a user would, across `inflab validate`, `run`, `score`, `index`, `explain`, the
environment, finished results and `import inflab`. Each case says what a user should get: a clear
error (exit 2, naming the key, flag, variable or file, and no stack trace or "internal error"), or
correct behaviour; and for results, that nothing finished was lost. Then a property test: random
values for every declared numeric option of a small quickstart, where `validate` and `run` must
agree (both refuse with the same message, or the run finishes).

    tests/bad_input.py BUILD_DIR [--table FILE.md] [--draws N] [--seed S]

Exits 1 when any case does not behave as expected; prints one line per case and the counts.
"""

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]
# The small quickstart the sweep runs (seconds a run): real Fashion-MNIST, a pretrained MLP.
SMALL = ["dataset.n_train=100", "dataset.n_validation=40", "dataset.n_pretrain=500", "model.hidden=[16]",
         "model.lora.rank=2", "training.epochs=2", "training.pretrain_epochs=1"]
CRASH_SIGNS = ("internal error", "frame #", "Exception raised from", "terminate called", "Traceback",
               "Segmentation fault", "core dumped", "what():")


class Sweep:
    def __init__(self, build: Path, work: Path, timeout: float = 600):
        self.timeout = timeout
        self.cli = build / "bin" / "inflab"
        self.build = build
        self.work = work
        self.rows = []  # (group, case, expected, outcome, ok)
        self.experiment = work / "small.toml"
        text = (SOURCE / "experiments" / "quickstart.toml").read_text()
        # One estimator keeps each run at a second or two.
        text = text[: text.index("[[estimator]]")] + '[[estimator]]\nplugin = "datainf"\n'
        self.experiment.write_text(text)
        self.env = dict(os.environ, INFLAB_THREADS="2")

    def inflab(self, *args, env=None, timeout=None):
        try:
            done = subprocess.run([str(self.cli), "--quiet", *map(str, args)], capture_output=True, text=True,
                                  env=env or self.env, timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            return -1, f"still running after {timeout or self.timeout} s (stopped)"
        return done.returncode, done.stdout + done.stderr

    def record(self, group, case, expected, ok, outcome):
        self.rows.append((group, case, expected, outcome, ok))
        print(f"{'ok  ' if ok else 'FAIL'} [{group}] {case}: {outcome}", flush=True)

    def expect_error(self, group, case, code, output, *needles, clean=True):
        """A clear error: exit 2 (CLI11's own codes for malformed flags), every needle in the message,
        no crash signs."""
        crash = [s for s in CRASH_SIGNS if s in output]
        first = next((line for line in output.splitlines() if line.strip()), "")[:160]
        if crash:
            return self.record(group, case, "clear error", False, f"crash ({crash[0]}): {first}")
        if code == 0:
            return self.record(group, case, "clear error", False, "accepted (exit 0)")
        missing = [n for n in needles if n not in output]
        # 2: inflab's errors; 100-127: CLI11's for a malformed command line (its message names the flag).
        if missing or (clean and code != 2 and not 100 <= code <= 127):
            return self.record(group, case, "clear error", False,
                               f"vague (exit {code}, lacks {missing}): {first}")
        self.record(group, case, "clear error", True, f"exit {code}: {first}")

    def expect_success(self, group, case, code, output, check=None):
        crash = [s for s in CRASH_SIGNS if s in output]
        problem = crash[0] if crash else (f"exit {code}" if code != 0 else (check() if check else ""))
        first = next((line for line in output.splitlines() if line.strip()), "")[:160]
        self.record(group, case, "works", not problem, problem or "works")

    # ---- values: every key validate must refuse, and run with the same message before any work ----
    def values(self):
        bad = {
            "training.learning_rate": ["-0.1", "0", "nan", "inf", "-inf", '"fast"'],
            "training.pretrain_learning_rate": ["0", "-1", "nan"],
            "training.epochs": ["-1", "1.5", "10000000"],
            "training.batch_size": ["0", "-3"],
            "training.weight_decay": ["-0.01", "nan"],
            "training.pretrain_epochs": ["-2"],
            "training.optimizer": ['"adamw"'],
            "model.hidden": ["[0]", "[-4]", "[16, 0]", '"wide"', "[1.5]"],
            "model.lora.rank": ["0", "-1", "100000"],
            "model.lora.alpha": ["0", "-2", "nan", "inf"],
            "model.lora.dropout": ["1.0", "-0.1", "nan"],
            "dataset.n_train": ["0", "-5", "9223372036854775807", "60001"],
            "dataset.n_validation": ["0", "10001"],
            "dataset.n_pretrain": ["-1", "70000"],
            "dataset.label_noise": ["1.0", "1.5", "-0.1", "nan"],
            "dataset.classes": ["[10]", "[-1]"],
            "dataset.plugin": ['"fashion"'],
            "evaluation.gradient_batch_size": ["0", "-1"],
            "evaluation.gradient_memory_mb": ["-1", "nan"],
            "evaluation.mode": ['"both"'],
            "evaluation.gradient_dtype": ['"int8"'],
            "evaluation.metrics": ['["auc", "accuracy"]'],
            "experiment.name": ['""', '"/tmp/inflab-absolute"', '"../../escape"', '"a/b"', '"' + "x" * 300 + '"',
                                '"."', '".."', '"sp ace"'],
            "experiment.repeats": ["0", "20000"],
            "experiment.seed": ['"one"'],
            "numerics.kernels": ['"fast"'],
            "task.name": ['"regression"'],
            "projection.kind": ['"dense"', "3"],
            "projection.dim": ["0", "-4", "nan", '"big"'],
            "projection.seed": ["-1", "1.5"],
        }
        for key, values in bad.items():
            for value in values:
                sets = [a for s in SMALL for a in ("--set", s)] + ["--set", f"{key}={value}"]
                code, output = self.inflab("validate", self.experiment, *sets)
                self.expect_error("validate", f"{key} = {value}", code, output, key)
                out = self.work / "values-out"
                code, output = self.inflab("run", self.experiment, *sets, "--out", out, "--cache",
                                           self.work / "values-cache")
                self.expect_error("run", f"{key} = {value}", code, output, key)
                # Nothing was written anywhere for a refused configuration (a name must not escape --out).
                escaped = [p for p in (Path("/tmp/inflab-absolute"), self.work.parent / "escape") if p.exists()]
                if escaped:
                    self.record("run", f"{key} = {value}: nothing written outside --out", "nothing", False,
                                f"wrote {escaped}")
                    for p in escaped:
                        shutil.rmtree(p, ignore_errors=True)
        # Runtime checks that depend on the model or data, not a range: still clear errors.
        for key, value, needle in [("model.lora.targets", '["nomatch"]', "nomatch"),
                                   ("evaluation.blocks", '["nomatch*"]', "nomatch*")]:
            sets = [a for s in SMALL for a in ("--set", s)] + ["--set", f"{key}={value}"]
            code, output = self.inflab("run", self.experiment, *sets, "--out", self.work / "values-out",
                                       "--cache", self.work / "values-cache")
            self.expect_error("run", f"{key} = {value}", code, output, needle)

    # ---- the command line and the environment ----
    def command_line(self):
        small = [a for s in SMALL for a in ("--set", s)]
        for flag, value, needle in [("--threads", "0", "--threads"), ("--threads", "-1", "--threads"),
                                    ("--threads", "abc", "--threads"), ("--kernels", "fast", "--kernels")]:
            code, output = self.inflab(flag, value, "validate", self.experiment)
            if flag == "--threads" and code == 0:  # validate does no work: run must refuse
                code, output = self.inflab(flag, value, "run", self.experiment, *small, "--out",
                                           self.work / "cli-out", "--cache", self.work / "values-cache")
            self.expect_error("flags", f"{flag} {value}", code, output, needle)
        for variable, value in [("INFLAB_THREADS", "0"), ("INFLAB_THREADS", "abc"), ("INFLAB_THREADS", "-2"),
                                ("INFLAB_THREADS", "100000"),
                                ("INFLAB_KERNELS", "fast"), ("INFLAB_DISTRIBUTED_TIMEOUT", "-1"),
                                ("INFLAB_DISTRIBUTED_TIMEOUT", "soon")]:
            env = dict(self.env, **{variable: value})
            code, output = self.inflab("run", self.experiment, *small, "--out", self.work / "cli-out", "--cache",
                                       self.work / "values-cache", env=env)
            self.expect_error("environment", f"{variable}={value}", code, output, variable)
        code, output = self.inflab("run", self.work / "missing.toml")
        self.expect_error("flags", "run a missing file", code, output, "missing.toml")
        code, output = self.inflab("run", self.work)
        self.expect_error("flags", "run a directory", code, output, str(self.work))
        code, output = self.inflab("validate", self.experiment, "--set", "noequals")
        self.expect_error("flags", "--set without =", code, output, "noequals")
        code, output = self.inflab("validate", self.experiment, "--set", "training.epoch=3")
        self.expect_error("flags", "--set unknown key", code, output, "training.epoch")
        a_file = self.work / "a-file"
        a_file.write_text("x")
        code, output = self.inflab("run", self.experiment, *small, "--out", a_file, "--cache",
                                   self.work / "values-cache")
        self.expect_error("folders", "--out is a file", code, output, "--out", str(a_file))
        code, output = self.inflab("run", self.experiment, *small, "--out", self.work / "cli-out", "--cache", a_file)
        self.expect_error("folders", "--cache is a file", code, output, "--cache", str(a_file))
        code, output = self.inflab("gradients", self.experiment, *small, "--out", a_file, "--cache",
                                   self.work / "values-cache")
        self.expect_error("folders", "gradients --out is a file", code, output, "--out", str(a_file))
        toml_error = self.work / "broken.toml"
        toml_error.write_text("[experiment\nname = 1\n")
        code, output = self.inflab("validate", toml_error)
        self.expect_error("files", "TOML syntax error", code, output, "broken.toml")
        unknown = self.work / "unknown.toml"
        unknown.write_text(self.experiment.read_text() + "\n[extra]\nkey = 1\n")
        code, output = self.inflab("validate", unknown)
        self.expect_error("files", "unknown section", code, output, "unknown.toml", "extra")
        sweep_kernels = self.work / "sweep_kernels.toml"
        sweep_kernels.write_text(self.experiment.read_text() + '\n[sweep]\n"numerics.kernels" = ["pinned", "native"]\n')
        code, output = self.inflab("validate", sweep_kernels)
        self.expect_error("files", "sweep over numerics.kernels", code, output, "numerics.kernels")

    # ---- inflab index build and inflab explain ----
    def index(self):
        small = [a for s in SMALL for a in ("--set", s)]
        cache = ["--cache", self.work / "values-cache"]
        index = self.work / "index"
        code, output = self.inflab("index", "build", self.experiment, *small, "--out", index, *cache)
        self.expect_success("index", "build a small index", code, output)
        a_file = self.work / "a-file"
        a_file.write_text("x")
        for case, args, needles in [
            ("build --out is a file", ["--out", a_file], ["--out", str(a_file)]),
            ("build --dtype int8", ["--out", self.work / "index-int8", "--dtype", "int8"], ["--dtype", "int8"]),
            ("build into another run's index", ["--out", index, "--set", "model.lora.rank=1"],
             ["holds the index of other gradients"]),
            ("build --fit typo", ["--out", self.work / "index-fit", "--fit", "datainf,lisa"], ["lisa"]),
            ("build --fit-budget-mb text", ["--out", self.work / "index-fit", "--fit-budget-mb", "lots"],
             ["--fit-budget-mb"]),
        ]:
            code, output = self.inflab("index", "build", self.experiment, *small, *args, *cache)
            self.expect_error("index", case, code, output, *needles)
        queries = self.work / "queries.jsonl"
        queries.write_text('{"prompt": "hello"}\nnot json\n')
        for case, args, needles in [
            ("explain a missing folder", [self.work / "missing-index", "--validation", "0"], ["missing-index"]),
            ("explain a folder that is not an index", [self.work, "--validation", "0"], ["not an index"]),
            ("explain without queries", [index], ["give queries"]),
            ("explain --validation -1", [index, "--validation", "-1"], ["--validation -1"]),
            ("explain --top 0", [index, "--validation", "0", "--top", "0"], ["--top"]),
            ("explain --estimator typo", [index, "--validation", "0", "--estimator", "datainff"], ["datainff"]),
            ("explain --set unknown option", [index, "--validation", "0", "--set", "dampin=1"], ["dampin"]),
            ("explain --response without --prompt", [index, "--validation", "0", "--response", "x"],
             ["--response"]),
            ("explain --queries with a bad line", [index, "--queries", queries], [f"{queries}:2"]),
            ("explain --prompt on a classifier", [index, "--prompt", "hello"], ["language model"]),
            ("explain --condition on a classifier", [index, "--condition", "0"], ["not a denoiser"]),
            ("explain --chunk-rows -1", [index, "--validation", "0", "--chunk-rows", "-1"], ["--chunk-rows"]),
            ("explain --normalise cosine", [index, "--validation", "0", "--normalise", "cosine"], ["--normalise"]),
            ("explain --estimator tracin", [index, "--validation", "0", "--estimator", "tracin"], ["[checkpoints]"]),
        ]:
            code, output = self.inflab("explain", *args, *cache)
            self.expect_error("index", case, code, output, *needles)
        pairs = self.work / "pairs.jsonl"
        pairs.write_text('{"prompt": "hello", "response": "world"}\n')
        record = (index / "index.json").read_bytes()
        for case, args, needles in [
            ("append to a classifier's index", [index, pairs], ["language model", ".npy of inputs"]),
            ("append a missing file", [index, self.work / "missing.jsonl"], ["missing.jsonl"]),
            ("append to a folder that is not an index", [self.work, pairs], ["not an index"]),
        ]:
            code, output = self.inflab("index", "append", *args, *cache)
            self.expect_error("index", case, code, output, *needles)
        unchanged = (index / "index.json").read_bytes() == record
        self.record("index", "a refused append leaves the index", "unchanged", unchanged,
                    "unchanged" if unchanged else "index.json changed")
        # Damage: a changed byte, then a truncated index.json; each a clear error naming the file.
        block = next((index / "shards" / "00000").glob("*.npy"))
        data = bytearray(block.read_bytes())
        data[-1] ^= 0xFF
        block.write_bytes(bytes(data))
        code, output = self.inflab("explain", index, "--validation", "0", *cache)
        self.expect_error("index", "explain a changed gradient file", code, output, block.name)
        (index / "index.json").write_text('{"format": "inflab-index", "version": 1}')
        code, output = self.inflab("explain", index, "--validation", "0", *cache)
        self.expect_error("index", "explain an index of an earlier inflab", code, output, "version 1",
                          "inflab index build")
        (index / "index.json").write_text("{")
        code, output = self.inflab("explain", index, "--validation", "0", *cache)
        self.expect_error("index", "explain a truncated index.json", code, output, "index.json")

    # ---- inflab score on gradient directories ----
    def write_store(self, path, blocks, train, query, dtype="<f4"):
        (path / "train").mkdir(parents=True, exist_ok=True)
        (path / "query").mkdir(parents=True, exist_ok=True)
        for name, dim in blocks:
            for side, rows in (("train", train), ("query", query)):
                write_npy(path / side / f"{name}.npy", rows, dim, dtype)
        (path / "blocks.json").write_text(json.dumps({"blocks": [{"name": n, "dim": d} for n, d in blocks]}))

    def score(self):
        store = self.work / "store"
        self.write_store(store, [("a", 6), ("b", 4)], 20, 3)
        out = self.work / "scores.npy"
        code, output = self.inflab("score", "--gradients", store, "--estimator", "datainf", "--out", out)
        self.expect_success("score", "a valid store", code, output,
                            lambda: "" if out.exists() else "no scores written")
        before = digest(store)
        for target in (store / "train" / "a.npy", store / "scores.npy", store / "train" / "new.npy"):
            code, output = self.inflab("score", "--gradients", store, "--estimator", "datainf", "--out", target)
            self.expect_error("score", f"--out {target.relative_to(self.work)} inside the store", code, output,
                              "--out", "inside the gradient directory")
        self.record("score", "the store is untouched by refused outputs", "unchanged", digest(store) == before,
                    "unchanged" if digest(store) == before else "changed")
        cases = []
        twice = self.work / "store-twice"
        self.write_store(twice, [("a", 6)], 20, 3)
        (twice / "blocks.json").write_text(json.dumps({"blocks": [{"name": "a", "dim": 6}, {"name": "a", "dim": 6}]}))
        cases.append(("a block listed twice", twice, ["listed twice", "'a'"]))
        zero = self.work / "store-zero"
        self.write_store(zero, [("a", 6), ("z", 4)], 20, 3)
        write_npy(zero / "train" / "z.npy", 20, 4, "<f4", fill=0.0)
        cases.append(("an all-zero block", zero, ["'z'", "zero"]))
        wide = self.work / "store-wide"
        self.write_store(wide, [("a", 6)], 20, 3)
        write_npy(wide / "query" / "a.npy", 3, 7, "<f4")
        cases.append(("query wider than blocks.json", wide, ["a.npy", "6"]))
        ints = self.work / "store-int"
        self.write_store(ints, [("a", 6)], 20, 3, dtype="<i4")
        cases.append(("int32 gradients", ints, ["a.npy", "float32"]))
        big = self.work / "store-big-endian"
        self.write_store(big, [("a", 6)], 20, 3, dtype=">f4")
        cases.append(("big-endian gradients", big, ["a.npy", ">f4"]))
        nan = self.work / "store-nan"
        self.write_store(nan, [("a", 6)], 20, 3)
        write_npy(nan / "train" / "a.npy", 20, 6, "<f4", fill=float("nan"))
        cases.append(("NaN gradients", nan, ["a"]))
        missing = self.work / "store-missing"
        self.write_store(missing, [("a", 6)], 20, 3)
        (missing / "query" / "a.npy").unlink()
        cases.append(("a missing query file", missing, ["a.npy", "missing"]))
        truncated = self.work / "store-truncated"
        self.write_store(truncated, [("a", 6)], 20, 3)
        data = (truncated / "train" / "a.npy").read_bytes()
        (truncated / "train" / "a.npy").write_bytes(data[: len(data) // 2])
        cases.append(("a truncated file", truncated, ["a.npy"]))
        escape = self.work / "store-escape"
        self.write_store(escape, [("a", 6)], 20, 3)
        (escape / "blocks.json").write_text(json.dumps({"blocks": [{"name": "../a", "dim": 6}]}))
        cases.append(("a block name with a path", escape, ["../a"]))
        for case, path, needles in cases:
            code, output = self.inflab("score", "--gradients", path, "--estimator", "datainf", "--out",
                                       self.work / "s.npy")
            self.expect_error("score", case, code, output, *needles)
        for args, needle in [(["--estimator", "datainff"], "datainff"), (["--estimator", "datainf", "--mode", "both"], "both"),
                             (["--estimator", "datainf", "--blocks", "nomatch*"], "nomatch*"),
                             (["--estimator", "datainf", "--set", "damping_scale=0"], "damping_scale"),
                             (["--estimator", "datainf", "--set", "damping_scale=nan"], "damping_scale"),
                             (["--estimator", "datainf", "--set", "damping=-1"], "damping"),
                             (["--estimator", "lissa", "--set", "iterations=0"], "iterations"),
                             (["--estimator", "lissa", "--set", "scale=-2"], "scale"),
                             (["--estimator", "cg", "--set", "tolerance=-1"], "tolerance"),
                             (["--estimator", "cg", "--set", "max_iterations=0"], "max_iterations"),
                             (["--estimator", "exact", "--set", "memory_budget_mb=0"], "memory_budget_mb"),
                             (["--estimator", "kfac"], "factors"),
                             (["--estimator", "cg", "--set", "preconditioner=ekfac"], "factors"),
                             (["--estimator", "cg", "--set", "preconditioner=kfac"], "preconditioner"),
                             (["--estimator", "lissa", "--set", "tolerance=-1"], "tolerance"),
                             (["--estimator", "arnoldi", "--set", "rank=0"], "rank"),
                             (["--estimator", "arnoldi", "--set", "rank=8", "--set", "iterations=3"], "iterations"),
                             (["--estimator", "datainf", "--normalise", "cosine"], "normalise"),
                             (["--estimator", "tracin"], "[checkpoints]")]:
            code, output = self.inflab("score", "--gradients", store, *args, "--out", self.work / "s.npy")
            self.expect_error("score", " ".join(args), code, output, needle)

    # ---- finished results are kept ----
    def results(self):
        small = [a for s in SMALL for a in ("--set", s)]
        out, cache = self.work / "kept", self.work / "kept-cache"
        code, output = self.inflab("run", self.experiment, *small, "--out", out, "--cache", cache)
        self.expect_success("results", "a first run", code, output)
        run = out / "quickstart" / "run"
        before = digest(run)
        changed = small + ["--set", "model.lora.rank=3"]
        code, output = self.inflab("run", self.experiment, *changed, "--out", out, "--cache", cache)
        self.expect_error("results", "rerun of another configuration into the same --out", code, output,
                          str(run), "--replace", "[model.lora]", "rank = 3")
        self.record("results", "the finished run is untouched", "unchanged", digest(run) == before,
                    "unchanged" if digest(run) == before else "changed")
        code, output = self.inflab("run", self.experiment, *small, "--out", out, "--cache", cache)
        self.expect_success("results", "rerun of the same configuration is skipped", code, output,
                            lambda: "" if digest(run) == before else "the run was rewritten")
        # Killed while replacing (once its hidden folder exists): the old run stays whole.
        proc = subprocess.Popen([str(self.cli), "--quiet", "run", str(self.experiment), *changed,
                                 "--set", "training.epochs=100000", "--out", str(out), "--cache", str(cache),
                                 "--replace"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env)
        for _ in range(600):
            if any(p.name.startswith(".run.partial-") for p in run.parent.iterdir()) or proc.poll() is not None:
                break
            time.sleep(0.1)
        time.sleep(1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.record("results", "killed while replacing: the old run is whole", "unchanged",
                    digest(run) == before, "unchanged" if digest(run) == before else "changed")
        code, output = self.inflab("run", self.experiment, *changed, "--out", out, "--cache", cache, "--replace")
        leftovers = [p.name for p in run.parent.iterdir() if p.name.startswith(".")]

        def replaced():
            config = (run / "config.toml").read_text()
            if "rank = 3" not in config:
                return "config.toml is not the new one"
            if leftovers:
                return f"left {leftovers}"
            return ""

        self.expect_success("results", "--replace replaces it, nothing left behind", code, output, replaced)

    # ---- import inflab ----
    def python(self):
        script = r'''
import json, sys
import inflab
import numpy as np
cases = []
def attempt(name, call, *needles):
    try:
        call()
        cases.append((name, False, "accepted"))
    except inflab.Error as e:
        missing = [n for n in needles if n not in str(e)]
        cases.append((name, not missing, f"inflab.Error: {e}"[:160] if not missing else f"lacks {missing}: {e}"[:160]))
    except Exception as e:
        cases.append((name, False, f"{type(e).__name__}: {e}"[:160]))
t = np.ones((10, 6), np.float32)
attempt("width mismatch", lambda: inflab.score({"a": t}, {"a": np.ones((2, 5), np.float32)}), "'a'", "6", "5")
attempt("unknown estimator", lambda: inflab.score({"a": t}, {"a": t[:2]}, "datainff"), "datainff")
attempt("option out of range", lambda: inflab.score({"a": t}, {"a": t[:2]}, damping_scale=-1.0), "damping_scale")
attempt("not a dict", lambda: inflab.score([t], {"a": t[:2]}), "train")
attempt("a block given twice", lambda: inflab.score({"a": t, "b": t}, {"b": t[:2], "a": t[:2]}), "'a'")
try:
    import torch
    attempt("a sparse tensor", lambda: inflab.score({"a": torch.ones(10, 6).to_sparse()}, {"a": t[:2]}), "sparse")
    attempt("a meta tensor", lambda: inflab.score({"a": torch.empty(10, 6, device="meta")}, {"a": t[:2]}), "meta")
except ImportError:
    pass
attempt("set_threads(-1)", lambda: inflab.set_threads(-1), "set_threads", "-1")
attempt("set_threads(10**6)", lambda: inflab.set_threads(10**6), "set_threads")
attempt("run: a bad value", lambda: inflab.run(sys.argv[1], {"training.learning_rate": -0.1}, out=sys.argv[2]),
        "training.learning_rate")
print(json.dumps(cases))
'''
        env = dict(self.env, PYTHONPATH=str(self.build / "python"))
        done = subprocess.run([sys.executable, "-c", script, str(self.experiment), str(self.work / "py-out")],
                              capture_output=True, text=True, env=env)
        if done.returncode != 0:
            self.record("python", "the Python cases", "ran", False, done.stderr.strip().splitlines()[-1][:160])
            return
        for name, ok, outcome in json.loads(done.stdout.strip().splitlines()[-1]):
            self.record("python", name, "inflab.Error", ok, outcome)

    # ---- validate and run agree on random values ----
    def property(self, draws, seed):
        rng = random.Random(seed)
        # Every numeric option the small quickstart declares, with a few values users might type.
        keys = {
            "training.learning_rate": "double", "training.pretrain_learning_rate": "double",
            "training.epochs": "int", "training.batch_size": "int", "training.weight_decay": "double",
            "training.pretrain_epochs": "int", "model.lora.rank": "int", "model.lora.alpha": "double",
            "model.lora.dropout": "double", "dataset.n_train": "int", "dataset.n_validation": "int",
            "dataset.n_pretrain": "int", "dataset.label_noise": "double", "dataset.noise_seed": "int",
            "dataset.shuffle_seed": "int", "evaluation.gradient_batch_size": "int",
            "evaluation.gradient_memory_mb": "double", "experiment.seed": "int", "model.hidden": "intlist",
        }
        small_ints = [-3, -1, 0, 1, 2, 3, 7, 40, 64]
        doubles = [-1.0, -1e-3, 0.0, 1e-4, 3e-3, 0.1, 0.5, 0.99, 1.0, 2.0, "nan", "inf", "-inf"]
        for draw in range(draws):
            key, kind = rng.choice(sorted(keys.items()))
            if kind == "int":
                value = str(rng.choice(small_ints + [rng.randint(-10**6, 10**6), 2**63 - 1]))
            elif kind == "double":
                value = str(rng.choice(doubles))
            else:
                value = "[" + ", ".join(str(rng.choice(small_ints)) for _ in range(rng.randint(0, 2))) + "]"
            sets = [a for s in SMALL for a in ("--set", s)] + ["--set", f"{key}={value}"]
            v_code, v_output = self.inflab("validate", self.experiment, *sets)
            r_code, r_output = self.inflab("run", self.experiment, *sets, "--out", self.work / f"prop-{draw}",
                                           "--cache", self.work / "prop-cache")
            case = f"{key} = {value}"
            crash = [s for s in CRASH_SIGNS if s in v_output + r_output]
            if crash:
                self.record("property", case, "agree", False, f"crash: {crash[0]}")
            elif v_code == 0 and r_code == 0:
                self.record("property", case, "agree", True, "both accept; the run finished")
            elif v_code != 0 and r_code != 0:
                same = v_output.strip().splitlines()[-1] == r_output.strip().splitlines()[-1]
                self.record("property", case, "agree", same, "both refuse" + ("" if same else
                            f" but differently: {v_output.strip()[:80]} / {r_output.strip()[:80]}"))
            elif v_code == 0:
                self.record("property", case, "agree", False,
                            f"validate accepts, run fails: {r_output.strip().splitlines()[-1][:140]}")
            else:
                self.record("property", case, "agree", False, "validate refuses, run finishes")


def write_npy(path, rows, dim, dtype, fill=None):
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%d, %d), }" % (dtype, rows, dim)
    header += " " * (63 - len(header) % 64) + "\n"
    code = {"<f4": "<f", ">f4": ">f", "<i4": "<i"}[dtype]
    values = [fill if fill is not None else (0.01 * ((i * 7919) % 101) - 0.5) for i in range(rows * dim)]
    if code == "<i":
        values = [int(v * 100) for v in values]
    body = struct.pack(f"{code[0]}{rows * dim}{code[1]}", *values)
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + body)


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode())
        h.update(file.read_bytes())
    return h.hexdigest()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("build", type=Path)
    parser.add_argument("--table", type=Path, help="also write the results as a Markdown table")
    parser.add_argument("--draws", type=int, default=30, help="random draws of the property test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600, help="seconds one command may take")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "sweep"
        work.mkdir()
        sweep = Sweep(args.build.resolve(), work, args.timeout)
        for part in (sweep.values, sweep.command_line, sweep.index, sweep.score, sweep.results, sweep.python):
            part()
        sweep.property(args.draws, args.seed)
    failed = [r for r in sweep.rows if not r[4]]
    groups = {}
    for group, _, _, _, ok in sweep.rows:
        groups.setdefault(group, [0, 0])[0 if ok else 1] += 1
    print(f"\n{len(sweep.rows) - len(failed)} passed, {len(failed)} failed")
    if args.table:
        lines = ["| group | case | expected | result |", "| --- | --- | --- | --- |"]
        for group, case, expected, outcome, ok in sweep.rows:
            cell = outcome.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {group} | `{case[:70]}` | {expected} | {'' if ok else '**not as expected**: '}{cell} |")
        args.table.write_text("\n".join(lines) + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
