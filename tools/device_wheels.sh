#!/usr/bin/env bash
# Fetches the wheels a lent GPU machine lacks (tools/device-requirements.txt) into .whl/
# for its Python (3.12, CPython, manylinux x86-64), from PyPI, here: that machine has no
# network. outputs_device.sh installs them there (--no-index --no-deps --target /tmp/site).
#
#   tools/device_wheels.sh            # then name .whl in the device call's carry
#
# Binary wheels only; --no-deps, because the list is already the whole closure minus what
# the machine has (a second version of a package there would shadow its own). Prints the
# total size: the device tool carries at most 64 MiB of carried paths in all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
req=tools/device-requirements.txt
mkdir -p .whl
# a wheel left from an older list would be installed too: keep only the listed ones
"$PY" - "$req" <<'EOF'
import re, sys
from pathlib import Path
want = {re.sub(r"[-_.]+", "_", l.split("==")[0]).lower() + "-" + l.split("==")[1].strip()
        for l in Path(sys.argv[1]).read_text().splitlines()
        if l.strip() and not l.startswith("#")}
for w in Path(".whl").glob("*.whl"):
    name, version = w.name.split("-")[:2]
    if f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}" not in want:
        print(f"removing {w} (not in {sys.argv[1]})")
        w.unlink()
EOF
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any \
  -d .whl -r "$req"
n=$(ls .whl/*.whl | wc -l)
listed=$(grep -cv '^\s*\(#\|$\)' "$req")
[ "$n" -eq "$listed" ] || { echo "error: $n wheels in .whl/ for $listed listed packages" >&2; exit 1; }
echo "$n wheels in .whl/: $(du -sh .whl | cut -f1) (the device tool carries 64 MiB in all)"
