#!/usr/bin/env bash
# Everything issue 15 measures on a CUDA GPU, in one call: the CUDA tests, the paper's model (WavLM Large +
# RoBERTa Large + head) on torch eager, torch.compile, CUDA graphs (torch.compile's and captured by hand) at fp32
# and bf16, and training steps.
#
# usage (from the repository root; no install of crab-rt needed):
#   benchmarks/gpu_check.sh [--out DIR] [--archive FILE] [--budget SECONDS] [--tiny] [--only A,B] [--tests-k EXPR]
#     --out DIR       results folder (default /tmp/crab-gpu-check); copy its files to benchmarks/results/<machine>/
#     --archive FILE  a .tar.gz of DIR, rewritten after every part (and gpu_check.md copied beside it)
#     --budget S      wall-clock budget of the whole script, seconds (default 490): each part gets at most what
#                     is left of it less a reserve for the report; a part that no longer fits is skipped
#     --tiny          CPU rehearsal with tiny sizes (tests/test_gpu_check.py runs it; the compile parts run only
#                     when --only names them: torch.compile takes minutes on a small CPU)
#     --only A,B      run only these parts (the report always runs), e.g. a second call for what the first skipped
#     --tests-k EXPR  the tests part runs only the tests pytest's -k EXPR selects (default: all of them)
#   PYTHON=...        the interpreter (default python3)
#
# Parts, in order: env, tests, models-graphs-bf16 (the goal point, shapes compiled one by one), models-capture
# (CUDA graphs captured by hand, fp32 and bf16, the whole sweep), chain (the whole chain as one call at the goal
# point: eager, two streams, captured), models-eager, train, models-{graphs,compile}-{bf16,fp32}-dynamic
# (torch.compile for symbolic shapes, the whole sweep), head-gru.
#
# Each part is its own process under its own `timeout`, writes its results as they come and is recorded in
# DIR/parts.tsv (name, exit code, seconds, limit); a part that fails or runs out of time does not stop the
# others. Progress lines carry the time. crab-rt is imported from the source tree through an overlay folder of
# links (the wheel maps train/, export/, data/ and cli/ into crab_rt).
set -u -o pipefail

OUT=/tmp/crab-gpu-check
ARCHIVE=""
BUDGET=490
TINY=0
ONLY=""
TESTS_K=""
while (($#)); do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --archive) ARCHIVE=$2; shift 2 ;;
        --budget) BUDGET=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        --only) ONLY=",$2,"; shift 2 ;;
        --tests-k) TESTS_K=$2; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

START=$(date +%s)
RESERVE=25   # seconds kept for the report
MIN_PART=20  # a part is not started with less than this left
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[[ -n "$ARCHIVE" ]] && mkdir -p "$(dirname "$ARCHIVE")"
: > "$OUT/parts.tsv"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false

log() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - START ))s] gpu_check: $*"; }

archive() {
    [[ -z "$ARCHIVE" ]] && return 0
    tar -czf "$ARCHIVE.tmp" -C "$(dirname "$OUT")" "$(basename "$OUT")" && mv -f "$ARCHIVE.tmp" "$ARCHIVE"
}

# part NAME LIMIT COMMAND...: run COMMAND under `timeout` (LIMIT, or what is left of the budget if less), its
# output on the console and in DIR/NAME.log; skipped when under MIN_PART seconds are left.
part() {
    local name=$1 limit=$2 left
    [[ -n "$ONLY" && "$ONLY" != *",$name,"* ]] && return 0
    left=$(( START + BUDGET - RESERVE - $(date +%s) ))
    if (( left < MIN_PART )); then
        log "SKIP $name: ${left}s left of the ${BUDGET}s budget"
        printf '%s\tskipped (budget)\t0\t%s\n' "$name" "$limit" >> "$OUT/parts.tsv"
        return 0
    fi
    (( limit > left )) && limit=$left
    shift 2
    run_part "$name" "$limit" "$@"
}

run_part() {
    local name=$1 limit=$2 t0 rc
    shift 2
    log "START $name (limit ${limit}s)"
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" >> "$OUT/parts.tsv"
    log "END $name: exit $rc after $(( $(date +%s) - t0 ))s$( ((rc == 124)) && echo ' (time limit)')"
    archive
}

# The source-tree overlay: crab_rt/* plus train, export, data and cli as crab_rt's subpackages.
SRC=$(mktemp -d "${TMPDIR:-/tmp}/crab-src.XXXXXX")
mkdir "$SRC/crab_rt"
for f in "$ROOT"/crab_rt/*; do ln -s "$f" "$SRC/crab_rt/"; done
for pkg in train export data cli; do ln -s "$ROOT/$pkg" "$SRC/crab_rt/$pkg"; done
export PYTHONPATH="$SRC:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
# Not the working directory first on sys.path (python -m puts it there): its crab_rt/ lacks the subpackages.
export PYTHONSAFEPATH=1
trap 'rm -rf "$SRC"' EXIT
cd "$ROOT" || exit 2

log "results in $OUT, budget ${BUDGET}s, tiny=$TINY, python $PY"
{
    echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "nvidia-smi: not available"
    echo "== nvidia-smi query"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.sm,power.limit --format=csv 2>&1 || true
    echo "== uname"; uname -a
    echo "== cpus"; nproc
} 2>&1 | tee "$OUT/nvidia-smi.txt"

G=(-m crab_bench.gpu_check)
if (( TINY )); then
    # torch-cuda-graphs and torch-cuda-capture stop at once on a CPU: the rehearsal of a failing part
    EAGER=torch-cpu; COMPILE=torch-cpu-compile; GRAPHS=torch-cuda-graphs; CAPTURE=torch-cuda-capture
    PRESET=(--preset tiny)
    GOAL=(--batch 1 --audio-s 1 --text-tokens 8 --head-text-tokens 8 --ref-audio-s 1 --warmup 1 --repeat 3 --max-seconds 0.2)
    SWEEP=(--batch 1,2 --audio-s 1,2 --text-tokens 8,16 --head-text-tokens 8 --ref-audio-s 1 --warmup 1 --repeat 3
           --max-seconds 0.2)
    TRAIN=(--preset tiny --device cpu --micro-batch 2 --audio-s 1 --text-tokens 16 --amp off --warmup-steps 1 --steps 1)
    TESTS=(tests/test_cuda.py)
else
    EAGER=torch-cuda; COMPILE=torch-cuda-compile; GRAPHS=torch-cuda-graphs; CAPTURE=torch-cuda-capture
    PRESET=(--preset large)
    # the goal's point: batch 1, 4 s, 32 tokens
    GOAL=(--batch 1 --audio-s 4 --text-tokens 32 --head-text-tokens 32 --ref-audio-s 4 --warmup 3 --repeat 100
          --max-seconds 2)
    SWEEP=(--batch 1,4,8 --audio-s 1,2,4,8,12 --text-tokens 8,32,128 --head-text-tokens 32 --ref-audio-s 4 --warmup 3
           --repeat 30 --max-seconds 1)
    TRAIN=(--preset large --recipe iemocap --device cuda:0 --micro-batch 8 --audio-s 12,4 --text-tokens 128
           --amp off,bf16 --warmup-steps 1 --steps 3)
    TESTS=(tests/test_cuda.py tests/test_backends.py)
fi
[[ -n "$TESTS_K" ]] && TESTS+=(-k "$TESTS_K")

part env 60 "$PY" "${G[@]}" env --out "$OUT"
part tests 200 "$PY" -m pytest "${TESTS[@]}" -p no:cacheprovider -v -rA --junitxml="$OUT/tests.xml"
# the goal first (torch.compile's CUDA graphs, bf16, batch 1, 4 s, 32 tokens; static shapes: the kernels
# specialised to that one shape)
part models-graphs-bf16 200 "$PY" "${G[@]}" models --out "$OUT" --name graphs_bf16 "${PRESET[@]}" \
    --backend "$GRAPHS" --precisions bf16 --reference "${GOAL[@]}"
# CUDA graphs captured by hand: no compiler, so the whole sweep at both precisions (the head's GRU captured too)
part models-capture 200 "$PY" "${G[@]}" models --out "$OUT" --name capture "${PRESET[@]}" --backend "$CAPTURE" \
    --precisions bf16,fp32 "${SWEEP[@]}"
# the whole chain as one call at the goal point: eager, two streams, one captured CUDA graph
if (( TINY )); then
    part chain 60 "$PY" -m crab_bench.chain_probe --out "$OUT" --preset tiny --device cpu --warmup 1 --repeat 3
else
    part chain 90 "$PY" -m crab_bench.chain_probe --out "$OUT" --preset large --precision bf16
fi
part models-eager 150 "$PY" "${G[@]}" models --out "$OUT" --name eager "${PRESET[@]}" --backend "$EAGER" \
    --precisions fp32,bf16 --parity fp16 "${SWEEP[@]}"
part train 150 "$PY" "${G[@]}" train --out "$OUT" --name "${PRESET[1]}" "${TRAIN[@]}"
if (( ! TINY )) || [[ -n "$ONLY" ]]; then  # (torch.compile on a small CPU takes minutes: named parts only there)
    # torch.compile for symbolic shapes: a few compiles per part (batch 1 is its own) serve the whole sweep
    # (bf16 first; the compile parts after the graphs parts reuse the kernels they left in Triton's cache)
    for precision in bf16 fp32; do
        for mode in graphs compile; do
            backend=$GRAPHS; [[ $mode == compile ]] && backend=$COMPILE
            part "models-$mode-$precision-dynamic" 240 "$PY" "${G[@]}" models --out "$OUT" \
                --name "${mode}_${precision}_dynamic" "${PRESET[@]}" --backend "$backend" --dynamic-shapes \
                --precisions "$precision" "${SWEEP[@]}"
        done
    done
fi
if (( ! TINY )); then
    # the head's bi-GRU: two sequential GRUs (the model) against one fused bidirectional call
    part head-gru 60 "$PY" -m crab_bench.gru_probe --out "$OUT"
fi
run_part report "$RESERVE" "$PY" "${G[@]}" report --out "$OUT"
[[ -n "$ARCHIVE" && -f "$OUT/gpu_check.md" ]] && cp "$OUT/gpu_check.md" "$(dirname "$ARCHIVE")/"
log "done in $(( $(date +%s) - START ))s; parts:"
column -t -s $'\t' "$OUT/parts.tsv" 2>/dev/null || cat "$OUT/parts.tsv"
