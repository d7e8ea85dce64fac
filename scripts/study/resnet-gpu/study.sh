# Study a, stages 3 and 4 on the GPU; run detached (setsid). Writes under $W; /tmp/study.done at the end.
set -u
W=${W:-/work/resnet}; N=${N:-10}; EXTRA=${EXTRA:-}
mkdir -p $W
C="--config configs/fashion-mnist-paper-form.yaml model.name=resnet20 data.train_per_class=500 train.epochs=30
   tolerance.eta=0.74 generations.count=2 generations.arms=[strict,tolerant] $EXTRA"
RUN="python3 -m torch.distributed.run --standalone --nproc_per_node=$N -m kdgen"
# MPS lets the processes' small kernels run side by side; without it they take turns on the GPU.
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
  if timeout 45 python3 -c "import torch; assert (torch.ones(2, device='cuda') + 1).sum().item() == 4"; then echo "MPS on"
  else echo quit | nvidia-cuda-mps-control; echo "MPS failed its check: off"; fi
else echo "no MPS"; fi
t0=$(date +%s)
$RUN sweep $C --grid "distill.temperature,distill.weight=[1,0.5],[4,0.9]" --out $W/val --no-progress
t1=$(date +%s); echo "STAGE3 wall $((t1-t0)) s"
BEST=$(python3 -c "import json; d = json.load(open('$W/val/sweep_summary.json')); print(' '.join(f'{k}={v}' for k, v in d['best_settings'].items()))")
echo "BEST $BEST"
$RUN run $C "seeds=[0,1,2,3,4,5,6,7,8,9]" $BEST runtime.parallel=chains --units $W/val/units --out $W/test --no-progress
t2=$(date +%s); echo "STAGE4 wall $((t2-t1)) s"
touch /tmp/study.done
