# One device call: gpu_check alone, then study a (stages 3, 4, transfer) detached; collect what exists at LIMIT s.
T0=$(date +%s); LIMIT=${LIMIT:-560}
source .devicework/setup.sh; export PYTHONSAFEPATH=1  # kdgen from the wheel, not the tree (helpers edit it)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; lscpu | grep "Model name"
python3 benchmarks/gpu_check.py $GPU_CHECK --out $OUT/gpu_check.md > $OUT/gpu_check.log 2>&1; echo "gpu_check rc $?"
cat $OUT/gpu_check.log | tail -n 30
echo "gpu_check done at $(( $(date +%s) - T0 )) s"
setsid nohup bash .devicework/study.sh > /tmp/study.log 2>&1 < /dev/null &
while [ ! -f /tmp/study.done ] && [ $(( $(date +%s) - T0 )) -lt $LIMIT ]; do sleep 5; done
grep -v "^kdgen" /tmp/study.log | tail -n 25; echo "collect at $(( $(date +%s) - T0 )) s"
bash .devicework/collect.sh
