#!/usr/bin/env bash
# `pip install .` from the checkout into a fresh venv (Debian's Python and NumPy, no network):
# the installed package must stand alone, importing its own libinflab and plugins, not the build's.
set -euo pipefail
build="${1:?usage: pip_install.sh BUILD_DIR SOURCE_DIR}"
src="${2:?}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
/usr/bin/python3 -m venv --system-site-packages "$work/env"
INFLAB_BUILD_DIR="$build" "$work/env/bin/pip" install -q --no-build-isolation --no-deps --no-index \
  --no-cache-dir "$src" >"$work/pip.log" 2>&1 || { cat "$work/pip.log" >&2; exit 1; }
# The checkout's build tree is not used (pip may leave build/ and *.egg-info in the source).
cd "$work" && env -u PYTHONPATH INFLAB_PLUGIN_PATH= "$work/env/bin/python" - "$work/env" <<'PY'
import sys
import numpy as np
import inflab

env = sys.argv[1]
assert inflab.__file__.startswith(env), inflab.__file__
plugins = inflab.plugins()
assert {p["name"] for p in plugins} >= {"datainf", "exact", "lissa", "fashion_mnist", "mlp_lora"}
outside = [p["file"] for p in plugins if not p["file"].startswith(env)]
assert not outside, f"plugins loaded from outside the installed package: {outside}"
rng = np.random.default_rng(0)
g, v = rng.standard_normal((30, 5)).astype(np.float32), rng.standard_normal((4, 5)).astype(np.float32)
scores = inflab.score({"w": g}, {"w": v}, "hessian_free", "pairwise")
assert np.allclose(scores, -(g @ v.T), rtol=1e-5, atol=1e-5)  # Hessian-free: minus the dot products
maps = open("/proc/self/maps").read()
libraries = {line.split()[-1] for line in maps.splitlines() if "libinflab.so" in line}
assert libraries and all(l.startswith(env) for l in libraries), libraries
print(f"pip_install: inflab {inflab.__version__} from {inflab.__file__}, {len(plugins)} plugins")
PY
