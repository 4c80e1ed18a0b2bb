#!/usr/bin/env bash
# The GPU check of curate: run once on a lent GPU machine, rehearsed on CPU in CI.
#
#   bash benchmarks/gpu_check.sh --receive          # on the GPU machine, one call per payload part
#   bash benchmarks/gpu_check.sh --receive --run    # the last part's call: install, then check
#   bash benchmarks/gpu_check.sh --cpu-rehearsal    # here and in CI: the same steps on CPU, small
#
# What the machine lacks (Ray, open_clip, the detectors, the CRAFT weights) is built here by
# `python scripts/gpu_payload.py` into .gpu/part-1 ... .gpu/part-N, each small enough to carry
# (64 MiB a call with the working tree). Each `--receive` call appends the parts it carries to
# /tmp/curate-gpu/parts (the machine stays warm between back-to-back calls). With all parts
# there, the payload's sha256 is checked, the wheels are installed into /tmp/curate-gpu/site
# (pip --no-index --no-deps --target) and the CRAFT weights put where CraftDetector finds them
# (CURATE_EASYOCR_MODEL_DIR).
#
# `--run` then, in well under 8 minutes on an H200:
#   1. writes the environment (nvidia-smi, torch, CUDA, onnxruntime's providers) to $OUT/env.txt;
#   2. runs benchmarks/gpu_bench.py: CRAFT and DBNet boxes and CLIP scores on the GPU against the
#      CPU on real images, the throughput of CRAFT and DBNet at 512 px and of CLIP ViT-B/32 and
#      ViT-L/14 in bf16, and `curate score` end to end with GPU actors over the sample shards
#      repeated to 5,043 samples (41 x 123 copies); table in $OUT/gpu_bench.txt, numbers in
#      $OUT/gpu_bench.json;
#   3. runs the tests marked gpu (pytest -m gpu), log in $OUT/gpu_tests.txt;
#   4. writes $OUT/summary.txt. The exit status is non-zero when a check failed.
#
# DBNet runs on the GPU only where onnxruntime has the CUDA provider (the onnxruntime-gpu
# package, built for the machine's CUDA); its wheel (about 200 MB) is too large to carry, so on
# a machine whose onnxruntime lacks the provider DBNet's rows say "CPUExecutionProvider".
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RECEIVE=0 RUN=0 REHEARSAL=0
for arg in "$@"; do
  case "$arg" in
    --receive) RECEIVE=1 ;;
    --run) RUN=1 ;;
    --cpu-rehearsal) REHEARSAL=1 RECEIVE=1 RUN=1 ;;
    *) echo "gpu_check.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
STATE=${CURATE_GPU_STATE:-/tmp/curate-gpu}
PY=${PYTHON:-python3}
[ -x "$REPO/.venv/bin/python" ] && [ "$REHEARSAL" = 1 ] && PY="$REPO/.venv/bin/python"
PAYLOAD=$REPO/.gpu
if [ "$REHEARSAL" = 1 ]; then
  STATE=$(mktemp -d)
  PAYLOAD=$STATE/payload
  "$PY" scripts/gpu_payload.py --rehearsal --out "$PAYLOAD" || exit 1
fi
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

if [ "$RECEIVE" = 1 ]; then
  mkdir -p "$STATE/parts"
  found=0
  for part in "$PAYLOAD"/part-*/payload.*; do
    [ -f "$part" ] || continue
    cp "$part" "$STATE/parts/" && found=$((found + 1))
    cp "$(dirname "$part")/manifest.json" "$STATE/manifest.json"
  done
  [ -f "$STATE/manifest.json" ] || { log "no payload part carried and none received before"; exit 1; }
  want=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['parts'])" "$STATE/manifest.json")
  have=$(ls "$STATE/parts" | wc -l)
  log "received $found part(s) this call; $have of $want there"
  if [ "$have" = "$want" ] && [ ! -f "$STATE/installed" ]; then
    (cd "$STATE/parts" && ls payload.* | sort -t. -k2 -n | xargs cat) > "$STATE/payload.tar"
    "$PY" - "$STATE/payload.tar" "$STATE/manifest.json" <<'EOF' || { log "payload sha256 mismatch: resend the parts"; exit 1; }
import hashlib, json, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    while chunk := f.read(1 << 24):
        h.update(chunk)
sys.exit(0 if h.hexdigest() == json.load(open(sys.argv[2]))["sha256"] else 1)
EOF
    mkdir -p "$STATE/unpacked" && tar -xf "$STATE/payload.tar" -C "$STATE/unpacked" && rm "$STATE/payload.tar"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STATE/site" \
      "$STATE"/unpacked/wheels/*.whl || { log "installing the wheels failed"; exit 1; }
    touch "$STATE/installed"
    log "payload verified and installed into $STATE/site"
  fi
fi
[ "$RUN" = 1 ] || exit 0
[ -f "$STATE/installed" ] || { log "not every payload part has arrived: run --receive with the others first"; exit 1; }

export PYTHONPATH="$REPO:$STATE/site${PYTHONPATH:+:$PYTHONPATH}"
export CURATE_EASYOCR_MODEL_DIR="$STATE/unpacked/easyocr" HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
if [ "$REHEARSAL" = 1 ]; then
  # The rehearsal payload holds a wheel of curate itself and a stub of the weights: check that
  # they arrived whole and import, then run the check against the real weights of this machine.
  (cd "$STATE" && PYTHONPATH="$STATE/site" "$PY" -c "import curate, sys; sys.exit(0 if '$STATE/site' in curate.__file__ else 1)") \
    || { log "the installed payload does not import"; exit 1; }
  unset CURATE_EASYOCR_MODEL_DIR
  export PYTHONPATH="$REPO${PYTHONPATH#*"$STATE/site"}"
fi
{ nvidia-smi 2>&1 || echo "no nvidia-smi"
  "$PY" -c "import torch, onnxruntime as ort, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, \
'onnxruntime', ort.__version__, ort.get_available_providers())"; } > "$OUT/env.txt" 2>&1
log "environment: $(tail -1 "$OUT/env.txt")"

status=0
bench_args=(--out "$OUT")
[ "$REHEARSAL" = 1 ] && bench_args+=(--tiny)
# GPU_BENCH_ARGS: extra gpu_bench.py arguments (the CI test of the rehearsal adds --no-end-to-end)
read -r -a extra_bench_args <<< "${GPU_BENCH_ARGS:-}"
bench_args+=("${extra_bench_args[@]}")
log "gpu_bench.py ${bench_args[*]}"
"$PY" benchmarks/gpu_bench.py "${bench_args[@]}" > "$OUT/gpu_bench.txt" 2>"$OUT/gpu_bench.err" || status=1
tail -25 "$OUT/gpu_bench.txt" | tee -a "$OUT/summary.txt"
[ "$status" = 0 ] || { log "gpu_bench.py failed"; tail -30 "$OUT/gpu_bench.err" | tee -a "$OUT/summary.txt"; }

# Only the modules that hold gpu tests are collected: the others import test-only packages
# (selenium, ...) that a GPU machine's image need not have.
mapfile -t gpu_modules < <(grep -rlE "pytest\.mark\.gpu" tests --include='test_*.py')
log "pytest -m gpu ${gpu_modules[*]}"
"$PY" -m pytest -q -m gpu -p no:cacheprovider "${gpu_modules[@]}" > "$OUT/gpu_tests.txt" 2>&1
rc=$?
[ "$rc" = 0 ] || [ "$rc" = 5 ] || status=1  # 5: no test ran (none collected)
tail -3 "$OUT/gpu_tests.txt" | tee -a "$OUT/summary.txt"
log "done: $([ "$status" = 0 ] && echo ok || echo FAILED); files in $OUT"
exit "$status"
