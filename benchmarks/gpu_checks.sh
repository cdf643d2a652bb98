#!/usr/bin/env bash
# Every GPU check of issue "Scale" section 2 in one run, for a lent GPU machine (the `device` tool's `run`), where a
# session has about 15 minutes of device time in all, machine start included. Prepare here first (downloads wheels
# the GPU image lacks into .whl/ and packs the data into .gpudata/, both git-ignored, ~55 MiB):
#
#     bash benchmarks/gpu_checks.sh prepare
#
# then run there, carrying both:
#
#     run(command="GPU_CHECKS_BUDGET=540 bash benchmarks/gpu_checks.sh", carry=[".whl", ".gpudata"], timeout_s=570)
#
# Steps, in the order the issue needs them, each under `timeout` and all within GPU_CHECKS_BUDGET seconds (default
# 540; a step is skipped when too little is left for it):
#   tests:      tests/test_gpu.py (bf16 against fp32, compiled layers, packed rows through varlen flash attention,
#               training);
#   e2e:        end_to_end.py on all of Alpaca with a random-weight 1B Llama (built once, as end_to_end.py builds it),
#               --compile, padded rows (the GPU's default), fine-tuning with Alpaca's own batch of 128 (406 optimizer
#               steps, not the default 8's 6,500, each an AdamW pass over all 1B weights) in forwards of up to 8,192
#               tokens (not 1,024: ~2 MB of activations a token for this model, well inside 80 GB); it gets all the
#               time left but 90 s, and when that runs out it still reports the stages it reached;
#   throughput: throughput.py with the same model on 512 GSM8K rows, --compile, packed (--pack on, one varlen flash
#               call a layer) then padded (--pack auto), as time allows: whether packing should be the GPU default;
#   tokenise:   tokenise.py on that model's tokenizer (the host's share of a pass, on the GPU machine's CPU) and a
#               pass over 2,048 rows on the GPU with the next chunk tokenised inline and ahead; only if time is left.
# `bash benchmarks/gpu_checks.sh throughput tokenise` runs only those steps: a second call on the same warm machine
# reuses the model built under $GPU_CHECKS_WORK. No GPU has run this script yet; the step times are estimates.
#
# What comes back from the device is limited (8 files, 16 MiB each): $OUT gets summary.json (rewritten after every
# step, so a run cut short still returns what it did), steps.log (the tail of each step's stderr) and test_gpu.log;
# the model, the caches and each step's own files stay in $GPU_CHECKS_WORK (default /tmp/davir-gpu-checks). The last
# line printed is the summary.
# GPU_CHECKS_SMALL=1 shrinks every step (a tiny model, a few rows) to check the script itself on a CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)


if [ "${1:-}" = "prepare" ]; then
    set -e
    mkdir -p .git/info
    grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >>.git/info/exclude
    grep -qx '/.gpudata/' .git/info/exclude || echo /.gpudata/ >>.git/info/exclude
    platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
    # What the GPU image lacks (KINDS.md's package list), at requirements.txt's versions; pure-Python ones as any.
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $platforms \
        -d .whl "$(grep '^duckdb==' requirements.txt)" "$(grep '^tokenizers==' requirements.txt)"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl "$(grep '^transformers==' requirements.txt)" \
        "$(grep '^trl==' requirements.txt)" "$(grep '^datasets==' requirements.txt)" "$(grep '^accelerate==' requirements.txt)" \
        "$(grep '^peft==' requirements.txt)" dill==0.4.1 multiprocess==0.70.19
    mkdir -p .gpudata
    tar -C ../shared/data -czf .gpudata/data.tgz alpaca gsm8k/train.jsonl
    du -sh .whl .gpudata
    exit 0
fi


OUT=${OUT:-$ROOT/gpu-out}
WORK=${GPU_CHECKS_WORK:-/tmp/davir-gpu-checks}
BUDGET=${GPU_CHECKS_BUDGET:-540}
STEPS=("$@")
[ ${#STEPS[@]} -eq 0 ] && STEPS=(tests e2e throughput tokenise)
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 DAVIR_CACHE="$WORK/cache-unused"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
DATA=../shared/data
if [ -f .gpudata/data.tgz ]; then
    DATA=/tmp/gpudata
    mkdir -p $DATA && tar -C $DATA -xzf .gpudata/data.tgz
fi
if [ "${GPU_CHECKS_SMALL:-0}" = 1 ]; then
    MODEL=tiny N=16 E2E=(--rows 32 --max-length 256) PASS=64 TRAIN_TOKENS=512
else
    MODEL=1b N=512 E2E=() PASS=2048 TRAIN_TOKENS=8192
fi

wants() { [[ " ${STEPS[*]} " == *" $1 "* ]]; }
# Seconds for a step: at most $1, and nothing (a failure) when that or what is left is under $2; 15 s are kept for
# the summary.
budget_for() {
    local left=$((BUDGET - SECONDS - 15))
    ((left > $1)) && left=$1
    ((left < $2)) && return 1
    echo $left
}
# One step ($1, at most $2 seconds, skipped under $3): its JSON line (its stdout's last) lands in $WORK/$1.json, the
# tail of its stderr in $OUT/steps.log.
step() {
    local name=$1 cap=$2 least=$3 seconds
    shift 3
    if ! seconds=$(budget_for "$cap" "$least"); then
        echo "{\"skipped\": \"$((BUDGET - SECONDS)) s of the budget left\"}" >"$WORK/$name.json"
    else
        timeout -k 15 "$seconds" "$@" 2>"$WORK/$name.err" | tail -1 >"$WORK/$name.json"
        { echo "== $name: ${seconds} s allowed, rc ${PIPESTATUS[0]}, at $SECONDS s"; tail -5 "$WORK/$name.err"; } >>"$OUT/steps.log"
    fi
    cat "$WORK/$name.json"
    summarise >/dev/null
}
summarise() {
    python3 - "$WORK" "$OUT" <<'EOF'
import json, pathlib, sys
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def load(name):
    path, err = work / f"{name}.json", work / f"{name}.err"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except Exception as error:  # a step that failed or was killed before printing: say so, keep the rest
        return {"error": f"{type(error).__name__}: {error}", "stderr": err.read_text()[-800:] if err.exists() else ""}
def text(path):
    return path.read_text().strip() if path.exists() else ""
log = text(out / "test_gpu.log")
summary = json.dumps({"gpu": text(work / "gpu.txt"), "versions": text(work / "versions.txt"),
                      "test_gpu": (log.splitlines() or [""])[-1],
                      "throughput_padded": load("throughput-auto"), "throughput_packed": load("throughput-on"),
                      "end_to_end": load("end_to_end"), "tokenise": load("tokenise")})
(out / "summary.json").write_text(summary)
print(summary)
EOF
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$WORK/gpu.txt" 2>&1
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())" \
    | tee "$WORK/versions.txt"

# The model every step scores with: random weights and a BPE tokenizer trained on Alpaca, as end_to_end.py builds its
# own (the embedded default model is not on that machine); built once per machine.
[ -f "$WORK/model/config.json" ] || python3 - "$MODEL" "$WORK/model" "$DATA/alpaca" <<'EOF'
import sys
from pathlib import Path
sys.path[:0] = [".", "benchmarks"]
from end_to_end import alpaca_texts, build_random_model
from tests.tiny import build_model
size, folder, alpaca = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
build_model(folder, hidden=64, layers=2) if size == "tiny" else build_random_model(folder, size, alpaca_texts(alpaca, 52_002))
EOF
echo "model ready at $SECONDS s"

if wants tests && seconds=$(budget_for 150 30); then
    timeout -k 15 "$seconds" python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py >"$OUT/test_gpu.log" 2>&1
    tail -15 "$OUT/test_gpu.log"
    summarise >/dev/null
fi
if wants e2e; then  # padded rows, the GPU's default ("auto"); 90 s are kept for the packed throughput run after it
    step end_to_end $((BUDGET - SECONDS - 15 - 90)) 60 python3 benchmarks/end_to_end.py "${E2E[@]}" \
        --model-dir "$WORK/model" --compile --train-batch 128 --train-tokens $TRAIN_TOKENS --alpaca $DATA/alpaca \
        --cache "$WORK/e2e-cache-$SECONDS"
fi
if wants throughput; then  # packed first: the padded path has an H200 figure from 2026-11-30 to compare with
    for pack in on auto; do
        step "throughput-$pack" 130 45 python3 benchmarks/throughput.py --model "$WORK/model" --n $N --compile \
            --pack $pack --data $DATA/gsm8k/train.jsonl --cache "$WORK/throughput-cache"
    done
fi
if wants tokenise; then
    step tokenise 100 60 python3 benchmarks/tokenise.py --model "$WORK/model" --alpaca $DATA/alpaca --chunks 1 512 \
        --repeats 2 --pass $PASS
fi
summarise
