#!/usr/bin/env bash
# eqmar's GPU tests and GPU benchmarks in one call, on any machine with an NVIDIA GPU and eqmar
# installed (e.g. `pip install -e ".[all,test]"`). See docs/benchmarks.md, "GPU checks".
#
#   bash bench/gpu_checks.sh                      # every step
#   bash bench/gpu_checks.sh tests inference      # a subset (or STEPS="tests inference")
#   bash bench/gpu_checks.sh --help
#
# Run it from anywhere: it works in the project root (tests/, bench/, data_tools/ are used from there).
set -uo pipefail

ALL_STEPS="env tests synthesis cli inference overhead"

usage() {
    cat <<EOF
usage: bash bench/gpu_checks.sh [--help] [STEP ...]

Runs eqmar's GPU tests and GPU benchmarks on a machine with an NVIDIA GPU and eqmar installed.

Steps (in this order; give names as arguments or in STEPS="..." to run a subset):
  env        GPU, driver and package versions; whether torch and ASTRA see CUDA      (limit  60 s)
  tests      every test with "cuda" in its name: ASTRA CUDA projector and simulator
             against the CPU path and analytic values, the conformance test on CUDA
             (needs the sample, see EQMAR_CONFORMANCE_DIR), the [cuda] cases of the
             EQ-Reg tests                                                           (limit 240 s)
  synthesis  bench/bench_synthesis.py on ASTRA CUDA at 640geo, and the CPU path on
             the same machine for the ratio                                         (limit 150 s)
  cli        data_tools/synthesize_mar.py --device cuda --workers 8: pairs/s with
             the h5 files written                                                   (limit 120 s)
  inference  bench/bench_inference.py on CUDA: DICDNet images/s and memory, 416 x 416 (limit 120 s)
  overhead   bench/bench_eqreg_overhead.py --device cuda --decompose, DICDNet and
             BasicUNet                                                              (limit 180 s)

Environment:
  PYTHON          interpreter with eqmar installed (default: python3)
  OUT             folder for logs, JSON and summary.md (default: /tmp/eqmar-gpu-checks)
  STEPS           steps to run, space-separated (default: all; arguments take precedence)
  TIMEOUT_FACTOR  multiply every step's time limit by this integer (default: 1)
  EQMAR_CONFORMANCE_DIR  the SynDeepLesion conformance sample (default: ../shared/conformance/syndeeplesion)

Exit status: 0 every step passed; 1 a step failed or ran out of time; 2 usage error;
3 no CUDA GPU visible (nothing checked beyond the env step).
EOF
}

args=()
for arg in "$@"; do
    case $arg in
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu_checks.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
        *) args+=("$arg") ;;
    esac
done
if [ ${#args[@]} -gt 0 ]; then
    STEPS="${args[*]}"
fi
STEPS=${STEPS:-$ALL_STEPS}
for name in $STEPS; do
    case " $ALL_STEPS " in
        *" $name "*) ;;
        *) echo "gpu_checks.sh: unknown step '$name' (steps: $ALL_STEPS)" >&2; exit 2 ;;
    esac
done
TIMEOUT_FACTOR=${TIMEOUT_FACTOR:-1}
case $TIMEOUT_FACTOR in
    ''|*[!0-9]*|0) echo "gpu_checks.sh: TIMEOUT_FACTOR must be a positive integer" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.." || exit 2

PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/eqmar-gpu-checks}
export PYTHON OUT PYTHONUNBUFFERED=1
mkdir -p "$OUT" || exit 2
SUMMARY="$OUT/summary.md"
printf '| step | result | exit | seconds |\n|---|---|---|---|\n' > "$SUMMARY"

selected() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# --- is there a GPU? checked once, before any step ----------------------------------------------
gpu_reason=""
if ! command -v nvidia-smi >/dev/null 2>&1; then
    gpu_reason="nvidia-smi not found"
elif ! nvidia-smi -L >/dev/null 2>&1; then
    gpu_reason="nvidia-smi lists no GPU"
elif ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    gpu_reason="torch.cuda.is_available() is False for $PYTHON (or torch is not installed)"
fi

failed=0
step() {  # step NAME LIMIT_S COMMAND...: run COMMAND (a program or a function below) under a time limit
    local name=$1 limit=$(( $2 * TIMEOUT_FACTOR ))
    shift 2
    selected "$name" || return 0
    echo "== $name (limit ${limit}s)"
    local start rc result
    start=$(date +%s)
    timeout -k 10 "$limit" bash -c '"$@"' step "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) result=passed ;;
        124|137) result="timed out"; failed=1 ;;
        *) result=failed; failed=1 ;;
    esac
    printf '| %s | %s | %s | %s |\n' "$name" "$result" "$rc" "$(( $(date +%s) - start ))" >> "$SUMMARY"
}

env_report() {
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || nvidia-smi -L
    else
        echo "nvidia-smi: not found"
    fi
    "$PYTHON" - <<'EOF'
import importlib, platform

print("python", platform.python_version())
for name in ("eqmar", "torch", "numpy", "monai", "odl", "astra"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '?')}")
    except Exception as err:  # report every package, whatever is missing
        print(f"  {name}: not importable ({type(err).__name__}: {err})")
try:
    import torch
    if torch.cuda.is_available():
        print("torch sees:", torch.cuda.get_device_name(0), "| CUDA", torch.version.cuda)
    else:
        print("torch sees: no CUDA GPU")
except Exception:
    print("torch sees: no CUDA GPU (torch not importable)")
try:
    import astra
    cuda = astra.use_cuda()
    print("astra.use_cuda():", cuda, "" if cuda else "(the ASTRA CUDA tests skip; the synthesis and cli steps fail)")
except Exception:
    print("astra.use_cuda(): ASTRA not importable")
EOF
}

cli_throughput() {
    local data start seconds pairs rc
    data=$(mktemp -d "${TMPDIR:-/tmp}/eqmar-cli-cuda.XXXXXX") || return 1
    start=$(date +%s.%N)
    "$PYTHON" data_tools/synthesize_mar.py --out "$data" --split test --demo-count 4 --device cuda --workers 8 \
        --no-progress
    rc=$?
    if [ "$rc" -eq 0 ]; then
        seconds=$("$PYTHON" -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$start")
        pairs=$(find "$data" -name '[0-9]*.h5' | wc -l)
        echo "synthesize_mar.py --device cuda --workers 8: $pairs pairs (640geo, gzip h5 written) in $seconds s" \
             "= $("$PYTHON" -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]):.1f}')" "$pairs" "$seconds") pairs/s"
    fi
    rm -rf "$data"
    return "$rc"
}

synthesis() {
    "$PYTHON" bench/bench_synthesis.py --device cuda --repeats 20 --sizes 128 256 416 --views 640 \
        --json "$OUT/synthesis_cuda.json" || return $?
    # the CPU path on the same machine, for the ratio
    "$PYTHON" bench/bench_synthesis.py --device cpu --repeats 5 --skip-640geo --sizes 416 --views 640 \
        --json "$OUT/synthesis_cpu_same_machine.json"
}

overhead() {
    "$PYTHON" bench/bench_eqreg_overhead.py --device cuda --backbone dicdnet --batch 16 --size 64 --steps 40 \
        --decompose || return $?
    "$PYTHON" bench/bench_eqreg_overhead.py --device cuda --backbone basicunet --batch 16 --size 64 --steps 100 \
        --decompose
}

export -f env_report cli_throughput synthesis overhead

echo "eqmar GPU checks: steps '$STEPS', python $PYTHON, output in $OUT"
step env 60 env_report

gpu_steps=""
for name in $STEPS; do
    [ "$name" = env ] || gpu_steps="$gpu_steps $name"
done
if [ -n "$gpu_reason" ]; then
    if [ -n "$gpu_steps" ]; then
        echo "no CUDA GPU visible ($gpu_reason): nothing to check" | tee "$OUT/no_gpu.txt"
        for name in $gpu_steps; do
            printf '| %s | skipped: no GPU | - | 0 |\n' "$name" >> "$SUMMARY"
        done
        echo
        cat "$SUMMARY"
        exit 3
    fi
    echo "no CUDA GPU visible ($gpu_reason)"
    echo
    cat "$SUMMARY"
    exit "$failed"
fi

step tests 240 "$PYTHON" -m pytest -p no:cacheprovider -q -rs -k cuda --junitxml "$OUT/gpu_tests.xml" tests
step synthesis 150 synthesis
step cli 120 cli_throughput
step inference 120 "$PYTHON" bench/bench_inference.py --device cuda --batches 1 4 16 --repeats 20 --e2e-repeats 3 \
    --cli-runs 0 --json "$OUT/inference_cuda.json" --markdown "$OUT/inference_cuda.md"
step overhead 180 overhead

echo
cat "$SUMMARY"
exit "$failed"
