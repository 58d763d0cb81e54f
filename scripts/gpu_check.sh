#!/usr/bin/env bash
# The one GPU check: run on a machine with a CUDA GPU and torch already installed (no network).
#
#   OUT=/some/folder bash scripts/gpu_check.sh
#
# Installs this checkout without touching its dependencies, runs the CUDA-marked tests, and audits
# the sample configs on cpu and cuda. Writes at most 8 files, all directly in $OUT:
#   summary.txt        machine, torch, each step's exit code and time, and what differed cpu vs cuda
#   pytest.log         python -m pytest -m cuda (then tests/test_compile.py's: Inductor on CUDA)
#   runs.log           the install and the three gradaudit runs
#   <sample>.json      results.json of each run (seed_examples, torch_losses, precision, compile_examples)
#   reports.tar.gz     the HTML report folders
# Every step runs even when an earlier one fails; the exit code is 1 if any step broke.
# Knobs (for testing this script on a CPU machine): PYTHON, GPU_CHECK_INSTALL=0,
# GPU_CHECK_SAMPLES (default: "seed_examples torch_losses precision compile_examples").
set -u

cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=${OUT:-$REPO/gpu-check-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # works even where the install step cannot
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1
SUMMARY="$OUT/summary.txt"
RUNS_LOG="$OUT/runs.log"
: > "$SUMMARY"
: > "$RUNS_LOG"
STEPS=()
FAILED=0

say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME OKCODES LOG TIMEOUT CMD...: run one step, record its exit code and time.
step() {
  local name=$1 ok=$2 log=$3 limit=$4
  shift 4
  local start=$SECONDS rc
  echo "=== $name: $*" >> "$log"
  timeout --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  rc=$?
  local verdict=ok
  if [[ " $ok " != *" $rc "* ]]; then
    verdict=BROKEN
    FAILED=1
  fi
  [[ $rc -eq 124 || $rc -eq 137 ]] && verdict="BROKEN (timed out after ${limit}s)"
  echo "=== $name: exit $rc after $((SECONDS - start))s" >> "$log"
  STEPS+=("$(printf '%-28s exit %-3s %4ss  %s' "$name" "$rc" "$((SECONDS - start))" "$verdict")")
}

say "gradaudit GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if command -v nvidia-smi > /dev/null 2>&1; then
  say "nvidia-smi: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4)"
else
  say "nvidia-smi: not found"
fi
"$PY" - >> "$SUMMARY" 2>&1 <<'PYEOF'
import platform
import torch
print(f"python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"cuda available: {torch.cuda.is_available()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}")
PYEOF
CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
[[ $CUDA == 1 ]] || say "NOTE: torch sees no CUDA device: the cuda tests skip and cuda results are 'skip'"

if [[ ${GPU_CHECK_INSTALL:-1} == 1 ]]; then
  step install "0" "$RUNS_LOG" 120 "$PY" -m pip install --no-deps --no-build-isolation -e .
  if [[ $FAILED == 1 ]]; then  # not fatal: PYTHONPATH above runs this checkout all the same
    FAILED=0
    STEPS[-1]="${STEPS[-1]/BROKEN/failed, using PYTHONPATH}"
  fi
fi

# The CUDA tests: only the files that have some, so a test file that needs what this image lacks
# (a browser, xdist) cannot break the collection.
mapfile -t CUDA_TESTS < <(grep -l "mark.cuda" tests/test_*.py 2>/dev/null | grep -v "tests/test_compile.py")
if [[ ${#CUDA_TESTS[@]} -gt 0 ]]; then
  step "pytest -m cuda" "0" "$OUT/pytest.log" 150 \
    "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider "${CUDA_TESTS[@]}"
else
  STEPS+=("pytest -m cuda               no test file has a cuda mark: skipped")
fi

# torch.compile on CUDA (Inductor generates Triton kernels): its own step, since the compiles take
# a while; results land in pytest.log too.
if [[ -f tests/test_compile.py ]]; then
  step "pytest -m cuda compile" "0" "$OUT/pytest.log" 420 \
    "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider tests/test_compile.py
fi

# Exit 0 or 1 means the run finished and wrote its report (1: some case failed); 2+ is broken.
for sample in ${GPU_CHECK_SAMPLES:-seed_examples torch_losses precision compile_examples}; do
  config="sample_configs/$sample.yaml"
  if [[ ! -f $config ]]; then
    STEPS+=("$(printf '%-28s %s' "run $sample" "missing $config: skipped")")
    continue
  fi
  limit=90
  [[ $sample == compile_examples ]] && limit=420  # Inductor compiles, on cpu and on cuda (Triton)
  step "run $sample" "0 1" "$RUNS_LOG" "$limit" "$PY" -m gradaudit run "$config" -o "$WORK/$sample" \
    --json "$OUT/$sample.json" --device cpu --device cuda --jobs 4
done

if ls "$WORK"/*/index.html > /dev/null 2>&1; then
  (cd "$WORK" && tar czf "$OUT/reports.tar.gz" */index.html */results.json)
fi

say ""
say "steps:"
for line in "${STEPS[@]}"; do say "  $line"; done

# What differed between cpu and cuda, from the results files.
say ""
"$PY" - "$OUT" >> "$SUMMARY" 2>&1 <<'PYEOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
for path in sorted(out.glob("*.json")):
    doc = json.loads(path.read_text())
    by = {}
    for r in doc["results"]:
        by.setdefault(r["case"], {})[r["device"]] = r
    counts = {}
    for r in doc["results"]:
        counts.setdefault(r["device"], {}).setdefault(r["status"], 0)
        counts[r["device"]][r["status"]] += 1
    print(f"{path.name}: " + "; ".join(f"{d}: " + ", ".join(f"{n} {s}" for s, n in sorted(c.items()))
                                        for d, c in sorted(counts.items())))
    differ, compared = [], 0
    for case, devs in sorted(by.items()):
        cpu, cuda = devs.get("cpu"), devs.get("cuda")
        if not cpu or not cuda or cuda["status"] == "skip":
            continue
        compared += 1
        ids_cpu = sorted({f["id"] for f in cpu["findings"]})
        ids_cuda = sorted({f["id"] for f in cuda["findings"]})
        if cpu["status"] != cuda["status"] or ids_cpu != ids_cuda:
            differ.append(f"  {case}: cpu {cpu['status']} {ids_cpu} / cuda {cuda['status']} {ids_cuda}")
        for f in cuda["findings"]:
            if f["id"] == "device-mismatch":
                differ.append(f"  {case}: device-mismatch: {f['message']}")
        if cuda["status"] in ("error", "crash", "timeout"):
            message = (cuda.get("error") or {}).get("message", "")
            differ.append(f"  {case}: cuda {cuda['status']}: {message[:300]}")
    for r in doc["results"]:  # compiled entries on the GPU: what Inductor/Triton cost and did
        c = r.get("compile")
        if c and r["device"] != "cpu" and r["status"] != "skip":
            print(f"  compiled {r['case']} [{r['device']}]: {r['status']}, compile_s {c.get('compile_s')}, "
                  f"{c.get('compared_draws')} draws compared with eager"
                  + (f", not compared: {c['not_compared']}" if c.get("not_compared") else ""))
    if differ:
        print("\n".join(differ))
    else:
        print(f"  cpu and cuda agree on all {compared} cases audited on both" if compared
              else "  no case ran on cuda")
PYEOF

say ""
say "result: $([[ $FAILED == 0 ]] && echo 'every step ran' || echo 'SOME STEP BROKE: see the logs')"
exit $FAILED
