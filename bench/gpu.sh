#!/usr/bin/env bash
# bench/gpu.sh OUT_DIR — the GPU checks of the fused Triton kernels, in one go, on one NVIDIA GPU.
#
#   1. picks a Python: ./.venv if it has torch, triton, timm and pytest, else python3 if it has them
#      (the repo runs from source via PYTHONPATH, nothing is installed), else a new .venv-gpu with
#      `pip install -e .[dev]` (needs a package index); stops early if that Python sees no GPU;
#   2. CUDA correctness, engine level: ViT-B/16 fused engine == PyTorch engine (fp16, bf16, token and
#      mean pooling, batch 1 and 32) + the dispatch tests;
#   3. `restune bench multitask --device cuda` for ViT-B/16, fp16 and bf16, batch 1 and 32, token and
#      mean pooling, 1 and 19 heads: backbone, fused engine, PyTorch engine, per-stage Triton engine,
#      naive per-head loop, 19 full models — all in one process per dtype, interleaved;
#   4. `restune bench train-memory` on CUDA, if that command exists; with RESTUNE_SD_DIR set to a local
#      Stable Diffusion v1.5 diffusers directory, also `restune bench generate` (10 styles x 2 prompts,
#      512², one pass vs sequential) and `restune bench train-memory --diffusion` on it;
#   5. `restune bench tuners --device cuda` at N = 2,000 (token and mean pooling), if the server's packages
#      are installed;
#   6. the full native kernel test product (tests/kernels -m cuda), with the time that is left.
#
# Writes into OUT_DIR: summary.json (every step: status, exit code, seconds, and the ratios of the
# multitask runs), gpu.log (all output), multitask-*.json/.png, train-memory/ if it ran.
# Every step has its own timeout; a failing step is recorded and the script goes on. Whole run:
# within 8 minutes on one H100: the steps share a 470 s budget (GPU_SH_BUDGET_S), each capped by its
# own timeout, and the last step (the full kernel product) gets whatever is left.
set -u
OUT=${1:?usage: bench/gpu.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # native kernels: Triton must come up compiled
LOG="$OUT/gpu.log"
STEPS="$OUT/.steps.tsv"
: >"$LOG"
: >"$STEPS"
START=$SECONDS
TOTAL_BUDGET=${GPU_SH_BUDGET_S:-470}

log() { echo "[gpu.sh $(date +%H:%M:%S) +$((SECONDS - START))s] $*" | tee -a "$LOG"; }

# step NAME TIMEOUT_S CMD...: run with a timeout, log everything, record the outcome; never exits.
step() {
    local name=$1 limit=$2
    shift 2
    if [ "$limit" -le 5 ]; then
        log "SKIP $name: no time left"
        printf '%s\t%s\t%s\t%s\n' "$name" skipped "" 0 >>"$STEPS"
        return 0
    fi
    log "START $name (timeout ${limit}s): $*"
    local t0=$SECONDS rc status
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((SECONDS - t0))" >>"$STEPS"
    log "END $name: $status (rc $rc, $((SECONDS - t0))s)"
    return 0
}

left() { echo $((TOTAL_BUDGET - (SECONDS - START))); }

# -- 1. Python ----------------------------------------------------------------------------------
READY='import torch, triton, timm, pytest'
PY=""
for cand in "$REPO/.venv/bin/python" python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "$READY" >>"$LOG" 2>&1; then
        PY=$(command -v "$cand")
        break
    fi
done
if [ -z "$PY" ]; then
    log "no Python with torch, triton, timm and pytest: creating .venv-gpu (pip install -e .[dev])"
    step setup-venv 300 bash -c \
        "python3 -m venv --system-site-packages .venv-gpu && .venv-gpu/bin/pip install -q -e '.[dev]'"
    if .venv-gpu/bin/python -c "$READY" >>"$LOG" 2>&1; then PY="$REPO/.venv-gpu/bin/python"; fi
fi
if [ -z "$PY" ]; then
    log "FATAL: no Python with torch and triton; nothing else can run"
    printf '%s\t%s\t%s\t%s\n' python failed 1 0 >>"$STEPS"
elif ! "$PY" -c 'import torch; assert torch.cuda.is_available()' >>"$LOG" 2>&1; then
    log "FATAL: $PY sees no CUDA device; this script is for a machine with an NVIDIA GPU"
    printf '%s\t%s\t%s\t%s\n' cuda failed 1 0 >>"$STEPS"
    SUMMARY_ONLY=1
else
    log "python: $PY"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >>"$LOG" 2>&1 || true
    "$PY" -c 'import torch, triton, timm, platform
print("python", platform.python_version(), "torch", torch.__version__, "triton", triton.__version__,
      "timm", timm.__version__, "gpu", torch.cuda.get_device_name())' 2>&1 | tee -a "$LOG"
fi

XDIST=()
if [ -n "$PY" ] && "$PY" -c "import xdist" >/dev/null 2>&1; then XDIST=(-n 8); fi

# `restune ...`: the command line, or — when it cannot be built here (a dependency missing on this
# machine) — a parser holding only the bench commands.
restune() {
    if "$PY" -m restune bench --help >/dev/null 2>&1; then
        "$PY" -m restune "$@"
    else
        echo "(the full command line is unavailable here; running the bench commands directly)"
        "$PY" - "$@" <<'PYEOF'
import argparse, sys, types
from bench import commands
parser = argparse.ArgumentParser(prog="restune")
top = parser.add_subparsers(dest="command", required=True)
groups = types.SimpleNamespace(top=top, bench=top.add_parser("bench").add_subparsers(dest="b", required=True),
                               train=top.add_parser("train").add_subparsers(),
                               tuners=top.add_parser("tuners").add_subparsers())
commands.register(groups)
args = parser.parse_args(sys.argv[1:])
sys.exit(args.handler(args))
PYEOF
    fi
}
export -f restune
export PY

if [ -n "$PY" ] && [ -z "${SUMMARY_ONLY:-}" ]; then
    # -- 2. engine-level CUDA correctness (fast) ---------------------------------------------------
    step tests-engine-cuda 120 "$PY" -m pytest -q -p no:cacheprovider -m "cuda or not interpreter" \
        tests/kernels/test_engine_triton.py tests/kernels/test_dispatch.py tests/restuning/test_engine.py -rA

    # -- 3. multitask benchmark, fp16 and bf16 -----------------------------------------------------
    for dtype in float16 bfloat16; do
        step "bench-multitask-$dtype" 100 bash -c "restune bench multitask --device cuda \
            --backbone vit_base_patch16_224 --dtype $dtype --batch 1,32 --pooling token,avg --tasks 1,19 \
            --methods backbone,engine,engine_torch,engine_stage,naive,full_models --backend auto \
            --repeats 20 --warmup 3 --out-dir '$OUT'"
    done

    # -- 4. training memory on CUDA, if the command exists ----------------------------------------
    if restune bench train-memory --help >"$OUT/.tm-help" 2>&1; then
        TM_ARGS=()
        grep -q -- "--device" "$OUT/.tm-help" && TM_ARGS+=(--device cuda)
        grep -q -- "--out-dir" "$OUT/.tm-help" && TM_ARGS+=(--out-dir "$OUT/train-memory")
        grep -q -- "--no-progress" "$OUT/.tm-help" && TM_ARGS+=(--no-progress)
        step bench-train-memory 75 bash -c "restune bench train-memory ${TM_ARGS[*]}"
    else
        log "SKIP bench-train-memory: 'restune bench train-memory' is not available in this checkout"
        printf '%s\t%s\t%s\t%s\n' bench-train-memory skipped "" 0 >>"$STEPS"
    fi
    rm -f "$OUT/.tm-help"

    # -- 4b. Stable Diffusion style tuners, only when SD weights are here ---------------------------
    # RESTUNE_SD_DIR: a local SD v1.5 diffusers directory (safetensors); nothing is downloaded. Unset by
    # default, so the budget above is unchanged.
    if [ -n "${RESTUNE_SD_DIR:-}" ] && [ -d "${RESTUNE_SD_DIR:-}" ]; then
        step bench-generate-sd 150 bash -c "restune bench generate --device cuda --diffusion-model \
            '$RESTUNE_SD_DIR' --styles 10 --prompts 2 --steps 25 --tuners random --repeats 2 --warmup 1 \
            --no-progress --out-dir '$OUT'"
        step bench-train-memory-sd 90 bash -c "restune bench train-memory --diffusion --diffusion-model \
            '$RESTUNE_SD_DIR' --device cuda --no-progress --out-dir '$OUT/train-memory'"
    else
        log "SKIP bench-generate-sd: set RESTUNE_SD_DIR to a local Stable Diffusion v1.5 diffusers directory"
        printf '%s\t%s\t%s\t%s\n' bench-generate-sd skipped "" 0 >>"$STEPS"
    fi

    # -- 5. thousands of tuners on the GPU: N = 2,000 vs 5 (needs the server's packages) ----------------
    if "$PY" -c "import fastapi, uvicorn, multipart, prometheus_client" >/dev/null 2>&1; then
        step bench-tuners-2000 150 bash -c "restune bench tuners --device cuda --counts 2000 --pooling token,avg \
            --mixes 3:zipf --window-s 8 --rounds 2 --puts 5 --out-dir '$OUT'"
    else
        log "SKIP bench-tuners-2000: fastapi/uvicorn are not installed in this Python (carry their wheels)"
        printf '%s\t%s\t%s\t%s\n' bench-tuners-2000 skipped "" 0 >>"$STEPS"
    fi

    # -- 6. the full native kernel product, with the time that is left ------------------------------
    step tests-kernels-cuda "$(left)" "$PY" -m pytest -q -p no:cacheprovider -m cuda "${XDIST[@]}" \
        tests/kernels/test_bypass_kernels.py tests/kernels/test_routed_kernel.py --durations=15 -rfE
fi

# -- summary ------------------------------------------------------------------------------------
SUMMARY_PY=${PY:-python3}
"$SUMMARY_PY" - "$OUT" "$STEPS" "$((SECONDS - START))" <<'PYEOF' 2>&1 | tee -a "$LOG"
import glob, json, os, sys
out, steps_file, elapsed = sys.argv[1], sys.argv[2], int(sys.argv[3])
steps = []
for line in open(steps_file):
    name, status, rc, secs = line.rstrip("\n").split("\t")
    steps.append({"step": name, "status": status, "rc": int(rc) if rc else None, "seconds": int(secs)})
summary = {"elapsed_s": elapsed, "steps": steps, "all_ok": all(s["status"] in ("ok", "skipped") for s in steps)}
try:
    import torch
    summary["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    summary["torch"] = torch.__version__
    import triton
    summary["triton"] = triton.__version__
except Exception as exc:  # the summary is written whatever happened
    summary["environment_error"] = repr(exc)
multitask = {}
for path in sorted(glob.glob(os.path.join(out, "multitask-*.json"))):
    data = json.load(open(path))
    multitask[os.path.basename(path)] = {"dtype": data.get("config", {}).get("dtype"),
                                         "engine_path": data.get("config", {}).get("engine_path"),
                                         "ratios": data.get("ratios")}
summary["multitask"] = multitask
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(json.dumps(summary, indent=2))
PYEOF
rm -f "$STEPS"
log "done in $((SECONDS - START))s; results in $OUT"
exit 0
