#!/usr/bin/env bash
# Installs inflab into a temporary prefix, builds examples/out_of_tree_plugin against it with
# find_package(inflab), and checks that the installed inflab loads and runs the new plugin.
set -euo pipefail
build="$1"
source_dir="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$source_dir/examples/out_of_tree_plugin" -B "$work/build" \
  -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER_LAUNCHER=ccache >/dev/null
cmake --build "$work/build" >/dev/null
export INFLAB_PLUGIN_PATH="$work/build/plugins"
listing="$("$work/prefix/bin/inflab" plugins)"
grep -q "diagonal" <<<"$listing" || { echo "diagonal plugin not listed:"; echo "$listing"; exit 1; }
grep -q "datainf" <<<"$listing" || { echo "installed plugins not listed:"; echo "$listing"; exit 1; }

# Score a tiny gradient directory: block w, train g = [[1, 2], [3, 0]], query v = [[1, 1]].
mkdir -p "$work/g/train" "$work/g/query"
python3 - "$work/g" <<'PY'
import json, struct, sys
def npy(path, rows):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (len(rows), len(rows[0]))
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
        for row in rows:
            f.write(struct.pack("<%df" % len(row), *row))
npy(sys.argv[1] + "/train/w.npy", [[1, 2], [3, 0]])
npy(sys.argv[1] + "/query/w.npy", [[1, 1]])
json.dump({"blocks": [{"name": "w", "dim": 2}]}, open(sys.argv[1] + "/blocks.json", "w"))
PY
"$work/prefix/bin/inflab" score --gradients "$work/g" --estimator diagonal --set damping=1 --out "$work/s.npy"
# Diagonal: mean g^2 = [5, 2], + 1 -> [6, 3]; r = [1/6, 1/3]; scores = -(g . r) = [-5/6, -1/2].
python3 - "$work/s.npy" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack("<H", data[8:10])[0]
values = struct.unpack("<2f", data[10 + n:])
expected = (-5 / 6, -0.5)
assert all(abs(a - b) < 1e-6 for a, b in zip(values, expected)), (values, expected)
print("out-of-tree plugin scores", values)
PY
