#!/usr/bin/env bash
# The GPU check of issue 16: every paired speed ratio and the accuracy-per-minute figure, in one run
# of at most 8 minutes on one H100/H200.
#
#   bench/build_gpu_wheels.sh            # here, once, with the package index: fills .whl/
#   bench/gpu_check.sh                   # on the GPU machine (Python 3.12, torch, Lightning), .whl/ carried
#   bench/gpu_check.sh --device cpu --quick   # the dry run (tests/test_bench.py): tiny, synthetic, a minute
#
# What a bare GPU machine lacks comes from .whl/ (built by bench/build_gpu_wheels.sh): metareg and its
# plugins, kornia, gym (learn2learn imports it) and learn2learn's source with C files regenerated for
# Python 3.11+ (built there, without the index). Every line of figures is checked at the end by
# bench/gpu_check_lines.py: the exit status is 1 when one is missing or unreadable, 2 on bad usage.
# PYTHON picks the interpreter (default python3); OMNIGLOT_ZIP the data (default .whl/, then ../shared).
set -uo pipefail
cd "$(dirname "$0")/.."

device=cuda quick=0
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="${2:-}"; shift 2 || { echo "Error: --device needs cuda or cpu" >&2; exit 2; } ;;
        --quick) quick=1; shift ;;
        *) echo "Error: unknown argument '$1'; usage: bench/gpu_check.sh [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
    esac
done
case "$device" in cuda|cpu) ;; *) echo "Error: --device must be cuda or cpu, got '$device'" >&2; exit 2 ;; esac

PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
# The wheels are for the GPU machine's Python 3.12; a dry run uses the environment it is started in.
if [ "$device" = cuda ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "Error: the wheels in .whl/ did not install" >&2; exit 2; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    if ls .whl/learn2learn-*-src.tar.gz >/dev/null 2>&1 && ! "$PY" -c "import learn2learn" 2>/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/learn2learn-*-src.tar.gz \
            || echo "# learn2learn did not build here: the learn2learn lines will be missing"
    fi
fi

if [ "$quick" = 1 ]; then
    data=(--synthetic) tasks=(1) pairs=(--pairs 2 --warmup 1) budget=600
    episodes_args=(--synthetic --pairs 2) eval_args=(--synthetic --tasks 2 --pairs 2 --hidden 16)
    transform_args=(--batch 4 --size 28 --pairs 2) predict_args=(--queries 5 --pairs 2 --hidden 16)
    minute_args=(--quick --seconds 2 --test-num-tasks 4)
else
    zip="${OMNIGLOT_ZIP:-.whl/images_background.zip}"
    [ -f "$zip" ] || zip=../shared/data/omniglot/images_background.zip
    data=(--data "$zip") tasks=(32 128) pairs=(--pairs 40 --seconds 12) budget=150
    episodes_args=(--zip "$zip" --pairs 10) eval_args=(--zip "$zip" --pairs 10)
    transform_args=(--batch 256 --size 84 --pairs 10) predict_args=(--queries 256 --pairs 10)
    minute_args=(--seconds 60 --zip "$zip")
fi
log=$(mktemp)
run() {  # one benchmark, bounded, its failure reported and not fatal: the check at the end counts the lines
    timeout "$budget" "$PY" "$@" 2>&1 | grep -v -e '^W[0-9]' -e 'Gym' -e 'gym' | tee -a "$log"
    local status=${PIPESTATUS[0]}
    [ "$status" = 0 ] || echo "# failed (exit $status): $*" | tee -a "$log"
}

echo "# gpu_check: device=$device quick=$quick $("$PY" -c 'import torch; print("torch", torch.__version__,
    torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")' 2>/dev/null)" | tee -a "$log"
for t in "${tasks[@]}"; do
    run bench/bench_strategies.py --device "$device" --tasks "$t" "${data[@]}" "${pairs[@]}" \
        --compare protonet protonet-ref maml maml-ref
done
for t in "${tasks[@]}"; do
    run bench/bench_strategies.py --device "$device" --tasks "$t" "${data[@]}" "${pairs[@]}" --bf16 --channels-last \
        --compare protonet protonet-ref
done
run bench/bench_episodes.py "${episodes_args[@]}"
run bench/bench_transforms.py --devices "$device" "${transform_args[@]}"
run bench/bench_evaluation.py --device "$device" "${eval_args[@]}"
run bench/bench_predict.py --device "$device" "${predict_args[@]}"
run bench/omniglot_minute.py --device "$device" "${minute_args[@]}"
"$PY" bench/gpu_check_lines.py "$log" --device "$device" --tasks "${tasks[@]}"
status=$?
rm -f "$log"
exit $status
