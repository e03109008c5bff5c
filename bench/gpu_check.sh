#!/usr/bin/env bash
# The GPU check: one prepared script for a machine with one CUDA GPU, its own PyTorch (2.4 or later),
# Python 3.12 and no internet.
#
#   bench/gpu_check.sh --download          # here, beforehand: the wheels it may need, into .whl/ (ignored)
#   bench/gpu_check.sh OUT                 # there: everything below, results in OUT/ (under 8 minutes)
#   bench/gpu_check.sh OUT --dry-run       # the same on the CPU on tiny graphs (what the test suite runs)
#
# 1. installs, from .whl/ and without the network, the project's dependencies that the machine lacks
#    (pydantic, pyyaml, pytest, ...: GPU images carry torch, numpy and scipy, not these);
# 2. records the card, the driver and the versions (OUT/machine.txt);
# 3. runs `pytest -m gpu` (the CUDA tests: kernels, layers, schedules, mixed precision; OUT/pytest-gpu.txt);
# 4. runs bench/compare.py on CUDA: the floor, alternating and simultaneous (and the DGL floor where DGL
#    is installed) on ppi-batch k = 2 and 4 and physics k = 2, in fp32 and in bf16;
# 5. writes OUT/gpu_check.json (every run's figures, the pytest summary) and OUT/gpu_check.md (the tables).
# Each step has its own time limit; a step that fails or runs out is recorded and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# the lock's versions of what a bare GPU image lacks (pure Python, or built for CPython 3.12 x86_64)
PINS=$(grep -iE '^(pydantic|pydantic_core|pydantic-settings|annotated-types|typing-inspection|typing_extensions|python-dotenv|PyYAML|pytest|iniconfig|pluggy|packaging|Pygments)==' requirements.lock)

if [ "${1:-}" = "--download" ]; then
  mkdir -p .whl
  # shellcheck disable=SC2086
  exec "$PYTHON" -m pip download -q -d .whl --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    --platform any $PINS
fi

out=${1:?usage: bench/gpu_check.sh OUT [--dry-run] | --download}
mode=${2:-}
mkdir -p "$out"
device=cuda; settings=(--setting ppi-batch:2 --setting ppi-batch:4 --setting physics:2); epochs=()
if [ "$mode" = "--dry-run" ]; then
  device=cpu; settings=(--setting small:2); epochs=(--epochs 2)
fi

step() {  # step NAME SECONDS COMMAND...: run it with a limit, log to OUT/NAME.txt, note how it ended
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.txt" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - t0))" | tee -a "$out/steps.txt"
}

# 1. missing dependencies, from .whl/ only
missing=()
for pair in pydantic:pydantic pydantic_settings:pydantic-settings yaml:PyYAML pytest:pytest; do
  "$PYTHON" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  # shellcheck disable=SC2086
  step install 120 "$PYTHON" -m pip install --no-index --find-links .whl --no-deps $PINS
fi

# 2. the machine
step machine 30 bash -c "nvidia-smi || true; $PYTHON -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else \"no CUDA device\")'"

# 3. the CUDA tests (they skip, saying so, where there is no CUDA device)
step pytest-gpu 240 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py

# 4. the benchmark, fp32 and bf16 (the DGL variants leave themselves out where DGL is absent)
for precision in fp32 bf16; do
  step "compare-$precision" 300 "$PYTHON" bench/compare.py "${settings[@]}" "${epochs[@]}" --device "$device" \
    --precision "$precision" --variants none,dgl-floor,alternating,simultaneous \
    --out "$out/compare-$precision.json" --markdown "$out/compare-$precision.md"
done

# 5. one JSON and one Markdown file
"$PYTHON" - "$out" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
steps = [line.split() for line in (out / "steps.txt").read_text().splitlines()]
report = {
    "machine": (out / "machine.txt").read_text() if (out / "machine.txt").exists() else None,
    "steps": {name: {"rc": int(rc[3:]), "seconds": int(sec[8:])} for name, rc, sec in steps},
    "pytest_gpu": ((out / "pytest-gpu.txt").read_text().strip().splitlines() or [""])[-1],
    "compare": {},
}
md = ["# GPU check", "", "```", report["machine"] or "(no machine information)", "```", "",
      f"pytest -m gpu: {report['pytest_gpu']}", "", "| step | rc | seconds |", "|---|---:|---:|"]
md += [f"| {n} | {s['rc']} | {s['seconds']} |" for n, s in report["steps"].items()]
for precision in ("fp32", "bf16"):
    path = out / f"compare-{precision}.json"
    if path.exists():
        report["compare"][precision] = json.loads(path.read_text())
        md += ["", f"## {precision}", "", (out / f"compare-{precision}.md").read_text()]
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
(out / "gpu_check.md").write_text("\n".join(md) + "\n")
print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
EOF
