#!/usr/bin/env bash
# Every GPU check and benchmark in one run, for a lent GPU machine that has Python, torch and
# torchvision but none of cifarq's other packages, and no network. docs/benchmarks.md has what
# it printed.
#
# Before: put in .device/ (git ignores it)
#   whl/        cifarq's dependencies as wheels for that machine's Python (not torch/torchvision)
#   data/       cifar10-jpeg.tar.gz and make_cifar10_batches.py from ../shared/datasets
#   airbench/   the `airbench` package (pip download airbench==0.1.8; its source folder)
# Run from the repository root: bash bench/gpu_session.sh   (results under $OUT, default bench/results/gpu)
#
# Stages run in order of what they prove, each under its own time limit, and a failing stage does
# not stop the next: the CUDA tests and a job through the queue, then the throughput table, then
# airbench94's own code as the reference.
set -u
OUT=${OUT:-bench/results/gpu}
DEV=$PWD/.device
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/gpu_session.log") 2>&1

stage() { echo; echo "=== $* ($(date -u +%T))"; }
STAGES=${STAGES:-tests,queue,throughput,packed,e2e,airbench}  # a rerun may name fewer
want() { [[ ",$STAGES," == *",$1,"* ]]; }

stage packages
if [ -d "$DEV/whl" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$DEV"/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD:$DEV
fi
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m api_cli.main "$@"\n' > /tmp/bin/cifarq && chmod +x /tmp/bin/cifarq
export PATH=/tmp/bin:$PATH  # the `cifarq` command, without installing the project
nvidia-smi -L
python3 -c 'import torch, torchvision, celery, sqlalchemy, typer; print("torch", torch.__version__, "torchvision", torchvision.__version__, "celery", celery.__version__, "sqlalchemy", sqlalchemy.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0))'

stage "data: the real CIFAR-10 laid out from the JPEG copy (in the background)"
DATA=/tmp/cifar-data
export CIFARQ_SHARED_DATASETS=$DEV/data
python3 "$DEV/data/make_cifar10_batches.py" "$DATA" > "$OUT/data.log" 2>&1 &
data_pid=$!

stage "pytest tests/test_cuda.py (generated data)"
want tests && timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs

wait $data_pid && echo "data ready in $DATA" || { echo "data layout failed"; cat "$OUT/data.log"; }

stage "a job through the queue on the embedded default (SQLite + filesystem broker), real data"
export CIFARQ_HOME=/tmp/cifarq-home CIFARQ_DATA_DIR=$DATA
if want queue; then
cifarq worker > "$OUT/worker.log" 2>&1 &
worker_pid=$!
timeout 240 bash -x -s > "$OUT/e2e.txt" 2>&1 <<'QUEUE'
id=$(cifarq submit train --epochs 2 --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
cifarq wait "$id" --timeout 200
cifarq status "$id" --json
cifarq results "$id"
cifarq logs "$id"
evaluated=$(cifarq submit evaluate --checkpoint "$id" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
cifarq wait "$evaluated" --timeout 100
cifarq results "$evaluated" --json | python3 -c 'import json, sys; r = json.load(sys.stdin); print("evaluate of the checkpoint:", r["accuracy"])'
fast=$(cifarq submit train --recipe fast --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
cifarq wait "$fast" --timeout 150
cifarq status "$fast" --json
cifarq results "$fast"
cifarq logs "$fast" | grep -v "loss:"
cifarq workers
QUEUE
echo "queue run exit $?"; tail -n 40 "$OUT/e2e.txt"
kill -TERM $worker_pid; (sleep 20; kill -KILL $worker_pid 2>/dev/null) & wait $worker_pid  # stopped: the GPU is the benchmarks'
fi

stage "bench/train_throughput.py on cuda"
want throughput && timeout 300 python3 bench/train_throughput.py --device cuda --data-dir "$DATA" --seeds 0 --skip autograd --fast-seeds 0,1,2,3,4 \
    --out "$OUT/train_throughput.json"

stage "packed sweeps: the step per point in-process, then 64 points packed against one job through the queue"
if want packed; then
timeout 120 python3 bench/packed_step.py --device cuda --points 1,8,64,256 --out "$OUT/packed_step.json"
timeout 300 python3 bench/packed_sweep.py --data "$DATA" --device cuda --lr 0.001 --seed "$(seq -s, 0 63)" \
    --pack-size 64 --baseline single --out "$OUT/packed_sweep.json"
fi

stage "the first job on a fresh GPU worker, end to end, against the tutorial's script on the GPU"
want e2e && timeout 300 python3 bench/end_to_end.py --data "$DATA" --device cuda --epochs 2 --rows tutorial,cold \
    --out "$OUT/end_to_end.json"

stage "airbench94's own code (airbench 0.1.8), same data, same GPU"
want airbench && timeout 150 python3 bench/airbench_reference.py --data-dir "$DATA" --runs 5 --work-dir /tmp/airbench \
    --out "$OUT/airbench_reference.json"

stage done
sleep 1  # let tee write the last lines
