#!/usr/bin/env bash
# The CUDA path, checked and timed in one go on a machine with an NVIDIA GPU, from a checkout of
# this repository, with a Python that has torch (CUDA build), numpy, tokenizers, safetensors,
# typer and rich (chargen itself need not be installed: the checkout is put on PYTHONPATH and a
# `chargen` command that runs it on PATH).
#
#   bash scripts/gpu_check.sh DATA_DIR OUT_DIR [tests,speed,dropout,sample,train|prose]
#
# DATA_DIR holds tinyshakespeare.txt and names.txt; everything lands in OUT_DIR: the CUDA tests
# (tests/test_cuda.py), benchmarks/train_speed.py on cuda (bare loop, bare loop waiting for the
# GPU at every step, chargen's loop; batch 64 and 256), sampling on the GPU against numpy on the
# CPU's cores, and `chargen train` with nothing but a time budget on both corpora.
# Each part runs even when one before it failed; the last lines are a summary.
set -u
data=$(cd "$1" && pwd)
out=$(mkdir -p "$2" && cd "$2" && pwd)
parts=${3:-tests,speed,dropout,sample,train}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1  # tests/ and benchmarks/ are named from here
py=${PYTHON:-python3}
device=${DEVICE:-cuda}  # DEVICE=cpu runs the same steps on the CPU, to check this script without a GPU
export CHARGEN_TEST_DEVICE=$device
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 CHARGEN_CACHE_DIR="$out/cache"
mkdir -p "$out/bin"
printf '#!/bin/sh\nexec %s -m chargen "$@"\n' "$(command -v "$py")" > "$out/bin/chargen"
chmod +x "$out/bin/chargen"
export PATH="$out/bin:$PATH"
summary=()
step() {  # step NAME LIMIT COMMAND...: run (at most LIMIT s), log to OUT/NAME.log, time it, remember the outcome
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    summary+=("$name: rc $rc, $((SECONDS - t0)) s")
    echo "== $name: rc $rc, $((SECONDS - t0)) s"
    tail -n 25 "$out/$name.log"
}
{
    [[ $device == cuda ]] && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    lscpu | grep -E "Model name|^CPU\(s\)"
    "$py" -c "import sys, torch, numpy, tokenizers, safetensors, typer, rich; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'numpy', numpy.__version__, 'tokenizers', tokenizers.__version__, 'typer', typer.__version__)"
    git -C "$repo" rev-parse --short HEAD 2>/dev/null
} 2>&1 | tee "$out/machine.txt"

if [[ $parts == *tests* ]]; then
    step tests 150 "$py" -m pytest -p no:cacheprovider -q -rs -s tests/test_cuda.py tests/test_model.py
fi
if [[ $parts == *speed* ]]; then
    step speed64 120 "$py" benchmarks/train_speed.py --device "$device" --quick --seconds 1 --run-steps 300 \
        --run-configs 512:bf16,512:fp32 --data "$data/tinyshakespeare.txt" --json "$out/train_speed_cuda_b64.json"
    step speed256 90 "$py" benchmarks/train_speed.py --device "$device" --batch 256 --quick --hidden-grid 512,1024 --seconds 1 \
        --skip-runs --data "$data/tinyshakespeare.txt" --json "$out/train_speed_cuda_b256.json"
fi
if [[ $parts == *dropout* ]]; then  # what re-seeding cuDNN's dropout before each step costs (chargen's loop; the bare one does not)
    step dropout 60 "$py" benchmarks/train_speed.py --device "$device" --quick --hidden-grid 256 --dropout 0.1 --seconds 1 \
        --skip-runs --data "$data/tinyshakespeare.txt" --json "$out/train_speed_cuda_dropout.json"
fi
if [[ $parts == *sample* ]]; then
    sample() {
        for backend in numpy torch; do
            local extra=(); [[ $backend == torch ]] && extra=(--backend torch --device "$device")
            for n in 20000 100000; do
                TIMEFORMAT="$backend -n $n: %R s"
                time chargen sample -n $n --seed 1 "${extra[@]}" > "$out/sample_${backend}_$n.txt" || return 1
            done
        done
        for n in 20000 100000; do
            cmp "$out/sample_numpy_$n.txt" "$out/sample_torch_$n.txt" && echo "-n $n: the same names on both backends"
        done
        rm -f "$out"/sample_*_100000.txt
    }
    export out device
    export -f sample
    step sample 60 bash -c sample
fi
if [[ $parts == *train* || $parts == *prose* ]]; then  # "prose": that run alone
    step train_prose 80 chargen train "$data/tinyshakespeare.txt" --device "$device" --time ${PROSE_TIME:-50s} \
        --out "$out/runs/prose"
fi
if [[ $parts == *train* ]]; then
    step train_names 55 chargen train "$data/names.txt" --device "$device" --time 30s --out "$out/runs/names"
fi
for run in prose names; do
    [[ -d $out/runs/$run ]] && chargen sample -c "$out/runs/$run" -n 8 --seed 1 >> "$out/train_$run.log" 2>&1
done
echo "== summary"
printf '%s\n' "${summary[@]}"
