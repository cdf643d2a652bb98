#!/usr/bin/env bash
# Every GPU check of issue "Scale" section 2 in one run, for a lent GPU machine (the `device` tool's `run`), where a
# session has about 15 minutes of device time in all. Prepare here first (downloads wheels the GPU image lacks into
# .whl/ and packs the data into .gpudata/, both git-ignored, ~55 MiB):
#
#     bash benchmarks/gpu_checks.sh prepare
#
# then run there, carrying both (one run: the steps take ~8 minutes, little room for a second):
#
#     run(command="bash benchmarks/gpu_checks.sh", carry=[".whl", ".gpudata"], timeout_s=560)
#
# Steps, each bounded by `timeout` so that one that hangs still leaves the others their time:
#   1. tests/test_gpu.py (bf16 against fp32, compiled layers, packed rows through varlen flash attention, training);
#   2. throughput.py on a random-weight 1B Llama (built once, as end_to_end.py builds it) and 512 GSM8K rows,
#      --compile, padded (--pack auto) then packed (--pack on);
#   3. end_to_end.py on all of Alpaca with the same model, --compile, with whichever of the two was faster;
#   and, first, tokenise.py on that model's tokenizer: the host's share of a pass, on the GPU machine's CPU.
# The ~8 minutes are an estimate from the H200 figures in README (no GPU has run this script yet).
# Each JSON line lands in $OUT (or ./gpu-out) and the last line printed is one JSON object holding them all.
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
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DAVIR_CACHE="$OUT/cache-unused"
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
    MODEL=tiny N=16 E2E=(--rows 32 --max-length 256) LIMIT=120
else
    MODEL=1b N=512 E2E=() LIMIT=150
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt" 2>&1
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())" \
    | tee "$OUT/versions.txt"

# The throughput runs' model: random weights and a BPE tokenizer trained on Alpaca, as end_to_end.py builds its own
# (the embedded default model is not on that machine).
python3 - "$MODEL" "$OUT/model" "$DATA/alpaca" <<'EOF'
import sys
from pathlib import Path
sys.path[:0] = [".", "benchmarks"]
from end_to_end import alpaca_texts, build_random_model
from tests.tiny import build_model
size, folder, alpaca = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
build_model(folder, hidden=64, layers=2) if size == "tiny" else build_random_model(folder, size, alpaca_texts(alpaca, 52_002))
EOF

timeout 40 python3 benchmarks/tokenise.py --model "$OUT/model" --alpaca $DATA/alpaca --chunks 1 512 --repeats 2 \
    2>"$OUT/tokenise.err" | tail -1 >"$OUT/tokenise.json"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log" | tail -15
for pack in auto on; do
    timeout $LIMIT python3 benchmarks/throughput.py --model "$OUT/model" --n $N --compile --pack $pack --data $DATA/gsm8k/train.jsonl \
        --cache "$OUT/throughput-cache" 2>"$OUT/throughput-$pack.err" | tail -1 >"$OUT/throughput-$pack.json"
    tail -3 "$OUT/throughput-$pack.err"
done
faster=$(python3 - "$OUT" <<'EOF'
import json, sys
speed = {}
for pack in ("auto", "on"):
    try:
        speed[pack] = json.load(open(f"{sys.argv[1]}/throughput-{pack}.json"))["engine_tokens_per_s"]
    except Exception:
        speed[pack] = 0
print(max(speed, key=speed.get))
EOF
)
timeout 330 python3 benchmarks/end_to_end.py "${E2E[@]}" --model-dir "$OUT/model" --compile --pack "$faster" --alpaca $DATA/alpaca \
    2>"$OUT/end_to_end.err" | tail -1 >"$OUT/end_to_end.json"
tail -3 "$OUT/end_to_end.err"

python3 - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except Exception as error:  # a step that failed or timed out: say so, keep the rest
        return {"error": f"{type(error).__name__}: {error}"}
log = (out / "test_gpu.log").read_text() if (out / "test_gpu.log").exists() else ""
print(json.dumps({"gpu": (out / "gpu.txt").read_text().strip(), "versions": (out / "versions.txt").read_text().strip(),
                  "test_gpu": (log.strip().splitlines() or [""])[-1],
                  "throughput_padded": load("throughput-auto.json"), "throughput_packed": load("throughput-on.json"),
                  "end_to_end": load("end_to_end.json"), "tokenise": load("tokenise.json")}))
EOF
