#!/usr/bin/env bash
# Every GPU check of eqmar in one call on a lent GPU machine (docs/benchmarks.md, "GPU checks").
#
# Prepare once on the development machine with `bash bench/device/prepare.sh`, then call the device
# tool with: command "bash bench/device/run_checks.sh", carry [".device"], timeout_s 590.
#
# Steps (STEPS="tests synthesis ..." runs a subset, in this order):
#   env        GPU, driver and package versions; astra.use_cuda()
#   tests      the CUDA tests: tests/test_ct_cuda.py, the conformance test on ASTRA CUDA, and the
#              EQ-Reg tests parametrised over devices (their [cuda] cases)
#   synthesis  bench/bench_synthesis.py on ASTRA CUDA at 640geo, and the CPU path on this machine
#   cli        data_tools/synthesize_mar.py --device cuda with worker processes: pairs/s with I/O
#   inference  bench/bench_inference.py on CUDA: DICDNet images/s and memory at 416 x 416
#   overhead   bench/bench_eqreg_overhead.py on CUDA for DICDNet and BasicUNet (with --decompose)
# Each step has its own time limit, so one that hangs leaves time for the rest. Logs and JSON land
# in $OUT (the files the device tool brings back); a summary table is printed last.
set -uo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:-/tmp/eqmar-device-checks}
KIT=${EQMAR_DEVICE_KIT:-.device}
SITE=/tmp/eqmar-site
STEPS=${STEPS:-env tests synthesis cli inference overhead}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
printf '| step | exit | seconds |\n|---|---|---|\n' > "$SUMMARY"

if [ ! -d "$KIT/wheels" ]; then
    echo "$KIT/wheels is missing: run bash bench/device/prepare.sh here first and carry $KIT" >&2
    exit 2
fi
KIT=$(cd "$KIT" && pwd)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$KIT"/wheels/*.whl \
    || { echo "installing the carried wheels failed" >&2; exit 3; }
# ASTRA finds its CUDA libraries beside itself ($ORIGIN/../nvidia/*/lib): cudart came as a wheel,
# cuFFT 11 is the stand-in (ASTRA's own FFT algorithms are never called by eqmar)
mkdir -p "$SITE/nvidia/cufft/lib"
cp "$KIT/lib/libcufft.so.11" "$SITE/nvidia/cufft/lib/"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export EQMAR_CONFORMANCE_DIR="$KIT/conformance"

failed=0
step() {  # step NAME LIMIT_S COMMAND...: run COMMAND (a program or a function below) under a time limit
    local name=$1 limit=$2
    shift 2
    case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
    echo "== $name (limit ${limit}s)"
    local start rc
    start=$(date +%s)
    timeout "$limit" bash -c '"$@"' step "$@" 2>&1 | tee -a "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || failed=1
    printf '| %s | %s | %s |\n' "$name" "$rc" "$(( $(date +%s) - start ))" >> "$SUMMARY"
}

env_report() {
    nvidia-smi -L
    python3 - <<'EOF'
import platform, astra, monai, numpy, odl, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| numpy", numpy.__version__,
      "| monai", monai.__version__, "| odl", odl.__version__, "| astra", astra.__version__)
print("torch sees:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
print("astra.use_cuda():", astra.use_cuda())
EOF
}

cli_throughput() {
    local data=/tmp/eqmar-cli-cuda start seconds pairs
    rm -rf "$data"
    start=$(date +%s.%N)
    python3 data_tools/synthesize_mar.py --out "$data" --split test --demo-count 4 --device cuda --workers 8 \
        --no-progress || return $?
    seconds=$(python3 -c "import sys, time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$start")
    pairs=$(find "$data" -name '[0-9]*.h5' | wc -l)
    echo "synthesize_mar.py --device cuda --workers 8: $pairs pairs (640geo, gzip h5 written) in $seconds s" \
         "= $(python3 -c "import sys; print(f'{int(sys.argv[1]) / float(sys.argv[2]):.1f}')" "$pairs" "$seconds") pairs/s"
}

synthesis() {
    python3 bench/bench_synthesis.py --device cuda --repeats 20 --sizes 128 256 416 --views 640 \
        --json "$OUT/synthesis_cuda.json" || return $?
    # the CPU path on the same machine, for the ratio
    python3 bench/bench_synthesis.py --device cpu --repeats 5 --skip-640geo --sizes 416 --views 640 \
        --json "$OUT/synthesis_cpu_same_machine.json"
}

overhead() {
    python3 bench/bench_eqreg_overhead.py --device cuda --backbone dicdnet --batch 16 --size 64 --steps 40 \
        --decompose || return $?
    python3 bench/bench_eqreg_overhead.py --device cuda --backbone basicunet --batch 16 --size 64 --steps 100 \
        --decompose
}

export -f env_report cli_throughput synthesis overhead
export OUT

step env 60 env_report
step tests 240 python3 -m pytest -p no:cacheprovider -q -rs -k cuda --junitxml "$OUT/gpu_tests.xml" \
    tests/test_ct_cuda.py tests/test_conformance_syndeeplesion.py tests/test_eqreg_trainer.py \
    tests/test_equivariance_residual.py tests/test_equivariance_groups.py
step synthesis 150 synthesis
step cli 120 cli_throughput
step inference 120 python3 bench/bench_inference.py --device cuda --batches 1 4 16 --repeats 20 --e2e-repeats 3 \
    --cli-runs 0 --json "$OUT/inference_cuda.json" --markdown "$OUT/inference_cuda.md"
step overhead 180 overhead

echo
cat "$SUMMARY"
exit "$failed"
