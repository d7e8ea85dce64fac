#!/bin/bash
# Two `kdgen run` jobs started together on the same work, sharing one unit cache (--units): the wall time until
# both finish, and the units each trained. A job that finds a chain's next unit claimed by the other trains
# another chain first (docs/guide/parallel.md, "Sharing a unit cache"). One thread per job; quote the CPU.
# Usage: benchmarks/shared_cache_jobs.sh [EPOCHS]   (40 in the docs' figure)
set -euo pipefail
epochs=${1:-40}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
config="data.name=synthetic data.num_train=640 data.num_test=24 data.image_size=8 data.channels=1
data.num_classes=4 model.name=cnn-tiny train.epochs=$epochs train.batch_size=16 seeds=[0,1] generations.count=1
generations.arms=[baseline,tolerant] tolerance.k=3 --no-progress"
began=$(date +%s.%N)
for job in a b; do
  # shellcheck disable=SC2086  # the settings are words on purpose
  OMP_NUM_THREADS=1 kdgen run --out "$work/$job" --units "$work/units" $config >/dev/null &
done
wait
ended=$(date +%s.%N)
python - "$work" "$began" "$ended" <<'PY'
import json, platform, sys
work, began, ended = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
trained = [json.load(open(f"{work}/{job}/timing.json"))["units_trained"] for job in "ab"]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"{cpu}: both jobs done in {ended - began:.1f} s; units trained by each: {trained}")
PY
