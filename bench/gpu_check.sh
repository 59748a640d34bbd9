#!/usr/bin/env bash
# Every CUDA path of lrpilot on a real GPU, as ONE command of a few minutes (issue 16).
#
#   bash bench/gpu_check.sh            # from the repository root
#
# Sections (each prints PASS / FAIL / SKIP with its reason; the script goes on after a
# failure; a summary table at the end):
#   1. pytest -m cuda      the cuda-marked tests (fit fp16 + GradScaler, finder fp16,
#                          CUDA memory probe with a real OOM)
#   2. fit_resume          lrpilot fit with fp16 AMP, SIGKILL mid-run, resume: final
#                          weights bit-identical to an uninterrupted run (and a control run)
#   3. finder              find_lr on CUDA with and without AMP: everything restored
#   4. memory              the CUDA memory probe under a real limit
#                          (set_per_process_memory_fraction) vs the largest batch that fits
#   5. ddp                 torchrun --nproc_per_node=1: lrpilot fit, and nccl + SyncBatchNorm
#   6. overhead            bench/gpu_overhead.py: lrpilot fit vs a performance-aware bare
#                          loop (CNN, launch-bound MLP), samples/s and the ratio
#   7. syncfree            bench/gpu_syncfree.py: no host sync in 20 steady-state steps
#                          (set_sync_debug_mode("error"), fp32 and fp16 + GradScaler), the
#                          syncs of a short fit, eager vs lagged steps/s
# Details of sections 2-5: bench/gpu_check.py.
#
# Wheels for packages the GPU image lacks (mnist1d, google-crc32c) go in .whl/ and are
# installed to /tmp/site. The log is tee'd to $OUT/gpu_check.log when $OUT is set.
# Without a CUDA device every section says SKIP and the script exits 0;
# GPU_CHECK_DEVICE=cpu runs sections 2-6 on the CPU instead (slow; to prove the logic).
# PYTHON selects the interpreter (default python3). Budget: a section is cut at
# GPU_CHECK_BUDGET_S (default 330) + 25 seconds from the start, and later ones are skipped.

set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-330}
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    exec > >(tee "$OUT/gpu_check.log") 2>&1
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
START=$(date +%s)

if compgen -G ".whl/*.whl" >/dev/null; then
    echo "== installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || echo "WARNING: wheel install failed"
    export PYTHONPATH=/tmp/site:$ROOT/src
else
    export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
fi

echo "== environment ($(date -u +%FT%TZ))"
command -v nvidia-smi >/dev/null && nvidia-smi -L
"$PY" - <<'EOF'
import importlib, platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, cuda available: "
      f"{torch.cuda.is_available()}" + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))
for name in ("lrpilot", "mnist1d", "google_crc32c", "sklearn", "tensorboard", "rich", "yaml", "hypothesis"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name:14} {getattr(mod, '__version__', '')} {getattr(mod, '__file__', '')}")
    except Exception as exc:
        print(f"  {name:14} MISSING ({type(exc).__name__}: {exc})")
EOF

HAS_CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
DEVICE=${GPU_CHECK_DEVICE:-cuda}
NAMES=()
STATUS=()
REASONS=()
SECONDS_USED=()

record() {  # name status reason seconds
    NAMES+=("$1"); STATUS+=("$2"); REASONS+=("$3"); SECONDS_USED+=("$4")
    echo "-- $1: $2 $3 (${4}s)"
}

over_budget() {
    [ $(( $(date +%s) - START )) -ge "$BUDGET" ]
}

run_section() {  # name timeout_s command...
    local name=$1 limit=$2; shift 2
    echo
    echo "== $name"
    if over_budget; then
        record "$name" SKIP "time budget of ${BUDGET}s used up" 0
        return
    fi
    if [ "$name" != pytest ] && [ "$DEVICE" = cuda ] && [ "$HAS_CUDA" != 1 ]; then
        record "$name" SKIP "no CUDA device on this machine (GPU_CHECK_DEVICE=cpu runs it on the CPU)" 0
        return
    fi
    local t0 out rc line left
    t0=$(date +%s)
    left=$(( BUDGET + 25 - (t0 - START) ))  # no section runs past the budget + 25 s
    [ "$left" -lt "$limit" ] && limit=$left
    out=$(mktemp)
    timeout -k 10 "$limit" bash -c '"$@"' bash "$@" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    line=$(grep '^RESULT ' "$out" | tail -1)
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        record "$name" FAIL "timed out after ${limit}s" $(( $(date +%s) - t0 ))
    elif [ -n "$line" ]; then
        set -- $line
        record "$name" "$3" "$(echo "$line" | cut -d' ' -f4-)" $(( $(date +%s) - t0 ))
    else
        record "$name" FAIL "exit $rc without a RESULT line" $(( $(date +%s) - t0 ))
    fi
    rm -f "$out"
}

pytest_cuda() {
    local files
    files=$(grep -l "pytest.mark.cuda" tests/*.py | tr '\n' ' ')
    echo "cuda-marked tests in: $files"
    local out rc
    out=$(mktemp)
    # shellcheck disable=SC2086
    "$PY" -m pytest -q -m cuda -rs -p no:cacheprovider -o addopts="" $files 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    local summary
    summary=$(tail -1 "$out")
    if [ "$rc" = 0 ] && grep -q " passed" "$out"; then
        echo "RESULT pytest PASS $summary"
    elif [ "$rc" = 0 ] || [ "$rc" = 5 ]; then
        echo "RESULT pytest SKIP no test ran: $summary (skip reasons above)"
    else
        echo "RESULT pytest FAIL exit $rc: $summary"
    fi
    rm -f "$out"
}

overhead() {
    if [ "$DEVICE" = cuda ] && [ "$HAS_CUDA" != 1 ]; then
        echo "RESULT overhead SKIP no CUDA device on this machine"
        return
    fi
    local extra=()
    [ "$DEVICE" = cpu ] && extra=(--repeats 1 --scale 0.25 --models mlp)  # the CNN is GPU-sized
    "$PY" bench/gpu_overhead.py --device "$DEVICE" "${extra[@]}" && \
        echo "RESULT overhead PASS measured (see the table; target ratio >= 0.97)" || \
        echo "RESULT overhead FAIL bench/gpu_overhead.py exited $?"
}

export PY DEVICE HAS_CUDA
export -f pytest_cuda overhead
run_section pytest 170 pytest_cuda
run_section syncfree 120 "$PY" bench/gpu_syncfree.py
SLOW=1; [ "$DEVICE" = cpu ] && SLOW=4  # the CPU proof trains the same runs more slowly
run_section fit_resume $((200 * SLOW)) "$PY" bench/gpu_check.py fit_resume --device "$DEVICE"
run_section finder $((100 * SLOW)) "$PY" bench/gpu_check.py finder --device "$DEVICE"
run_section memory 120 "$PY" bench/gpu_check.py memory --device "$DEVICE"
run_section ddp $((150 * SLOW)) "$PY" bench/gpu_check.py ddp --device "$DEVICE"
run_section overhead 180 overhead

echo
echo "== summary ($(( $(date +%s) - START )) s, device ${DEVICE}, cuda available: ${HAS_CUDA})"
printf '%-11s %-5s %5s  %s\n' section status secs reason
for i in "${!NAMES[@]}"; do
    printf '%-11s %-5s %5s  %s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECONDS_USED[$i]}" "${REASONS[$i]}"
done
FAILED=0
for s in "${STATUS[@]}"; do [ "$s" = FAIL ] && FAILED=1; done
exit $FAILED
