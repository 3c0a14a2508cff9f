#!/usr/bin/env bash
# The GPU checks as one prepared script: the CUDA tests, then the GPU benchmark figures of
# docs/training.md (seconds per 50k-image WRN-40-2 epoch and the ratio to the reference loop,
# trials/hour with 1, 2, 4, 8 trials per device, one-pass distillation, bf16 vs fp32 accuracy,
# a packed study). Each step has its own time limit inside one overall budget, writes its own log
# and is skipped, not cut short, when the budget left cannot hold it.
#
#   benchmarks/gpu_check.sh prepare     # here: wheels the GPU image lacks + cifar10-mini into .device/
#   benchmarks/gpu_check.sh smoke       # here, on the CPU, tiny sizes: every command runs as written
#   benchmarks/gpu_check.sh run [STEP]  # on the GPU machine (all steps, or the ones named)
#
# On a machine with a GPU but without this project's dependencies, `prepare` first (it needs pip
# and the package index), copy the checkout with its .device/ folder, then `run`. Logs go to
# $OUT (default /tmp/gpu_check): summary.txt and one <step>.log each. GPU_CHECK_BUDGET (seconds,
# default 420) is the overall budget.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-}
[ $# -gt 0 ] && shift
OUT=${OUT:-/tmp/gpu_check}
BUDGET=${GPU_CHECK_BUDGET:-420}
DATA=${OPSWAP_CIFAR10_MINI:-}
WHEELS="pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 torch-pruning==1.6.1"

prepare() {
    grep -qx '/.device/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.device/' >> .git/info/exclude; }
    mkdir -p .device/whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .device/whl $WHEELS || exit 1
    local mini=${DATA:-../shared/data/cifar10-mini.npz}
    [ -f "$mini" ] && cp "$mini" .device/cifar10-mini.npz
    du -sh .device
    echo "copy this checkout with its .device/ folder to the GPU machine, then: bash benchmarks/gpu_check.sh run"
}

CUDA_TESTS=(
    tests/test_precision.py
    tests/test_training.py::test_cuda_bf16_channels_last_learns
    tests/test_resume.py::test_a_cuda_run_with_dropout_stopped_and_resumed_equals_an_uninterrupted_one
    tests/test_ensemble.py::test_cuda_ensemble_matches_separate_runs_closely
    tests/test_distill.py::test_cuda_distillation_matches_cpu_closely
    tests/test_study_runner.py::test_devices_this_machine_lacks_stop_a_local_run_before_anything_runs
)

case "$MODE" in
    prepare) prepare; exit ;;
    run)
        DEV=cuda
        if ls .device/whl/*.whl >/dev/null 2>&1; then
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target /tmp/site .device/whl/*.whl || exit 1
            export PYTHONPATH=/tmp/site
        fi
        DATA=${DATA:-.device/cifar10-mini.npz}
        TRAIN=(--models wrn-40-2,wrn-16-2 --steps 100 --batch-size 512 --precisions auto --repeats 1 --workers 8)
        PACK=(--concurrent 1,2,4,8 --trial-model wrn-16-2 --trial-epochs 2)
        DISTILL=(--steps 20 --batch-size 128 --precisions fp32,auto)
        PRECISION=(--models wrn-16-2,tf-cnn --seeds 0,1,2 --compile off)
        STUDY=(--seeds 0,1 --precisions auto --devices cuda --trials-per-device 1,4)
        ;;
    smoke)
        DEV=cpu
        DATA=${DATA:-../shared/data/cifar10-mini.npz}
        TRAIN=(--models wrn-10-1 --steps 2 --batch-size 16 --precisions auto --repeats 1 --workers 1)
        PACK=(--concurrent 1,2 --trial-model wrn-10-1 --trial-epochs 1 --trial-images 200 --batch-size 32)
        DISTILL=(--model wrn-10-1 --positions 1,2,3 --steps 2 --batch-size 8 --precisions fp32,auto)
        PRECISION=(--models tf-cnn --seeds 0,1 --epochs 1 --compile off)
        STUDY=(--data-fraction 0.05 --positions 1 --candidates baseline,mbconv --distill-steps 2 --precisions auto
               --devices cpu --trials-per-device 1,2)
        ;;
    *) sed -n 2,16p "$0"; exit 2 ;;
esac

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
WANTED=" $* "
START=$SECONDS

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2 left t0 rc
    shift 2
    [ "$WANTED" != "  " ] && [[ "$WANTED" != *" $name "* ]] && return
    left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt $((limit / 2)) ]; then
        echo "$name: skipped, ${left} s of the budget left" | tee -a "$OUT/summary.txt"
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo "== $name (limit ${limit} s): $*"
    t0=$SECONDS
    timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc after $((SECONDS - t0)) s$([ $rc = 124 ] && echo ' (time limit)')" | tee -a "$OUT/summary.txt"
    tail -n 30 "$OUT/$name.log"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
    echo "mode $MODE, budget $BUDGET s, data $DATA"
} | tee "$OUT/summary.txt"

step tests 150 python3 -m pytest -q -rs -p no:cacheprovider "${CUDA_TESTS[@]}"
step train 200 python3 benchmarks/train_throughput.py --device "$DEV" "${TRAIN[@]}"
step packing 200 python3 benchmarks/train_throughput.py --device "$DEV" "${PACK[@]}"
step distill 90 python3 benchmarks/distill_throughput.py --device "$DEV" "${DISTILL[@]}"
step precision 150 python3 benchmarks/precision_accuracy.py --data "$DATA" --device "$DEV" "${PRECISION[@]}" \
    --out "$OUT/precision.jsonl"
step study 200 python3 benchmarks/study_throughput.py "${STUDY[@]}"
echo "total $((SECONDS - START)) s" | tee -a "$OUT/summary.txt"
