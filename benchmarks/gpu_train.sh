#!/usr/bin/env bash
# The GPU benchmark as one short device call runs it (an estimated 3-5 minutes on an H100,
# never more than 6): benchmarks/gpu_train.py on the mnist CNN, the project's trainer against
# a plain PyTorch loop, batch 256 then the pipeline's 64, bf16-mixed where the GPU has it.
# No download. With $OUT set, gpu_train.json and gpu_train.log are written there.
#
#   benchmarks/gpu_train.sh                       # from anywhere; the interpreter: $PYTHON,
#   PYTHON=/path/to/venv/bin/python benchmarks/gpu_train.sh --precision 32-true   # else .venv, else python3
#
# Extra arguments go to gpu_train.py after the defaults, so they override them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# --budget: no new repeat starts after 240 s (120 s per batch size, unused time passed on);
# timeout: a hard stop at 330 s (SIGINT, so that the script still prints and writes what it
# measured), killed 20 s later if it hangs.
args=(--device cuda --precision auto --batch-size 256 64 --repeats 5 --epochs 3 --scale 20 --budget 240)
run=(timeout --signal=INT --kill-after=20 330 "$PYTHON" benchmarks/gpu_train.py "${args[@]}")
if [[ -n "${OUT:-}" ]]; then
    mkdir -p "$OUT"
    "${run[@]}" --json "$OUT/gpu_train.json" "$@" 2>&1 | tee "$OUT/gpu_train.log"
else
    "${run[@]}" "$@"
fi
