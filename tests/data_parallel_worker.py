"""Run by tests/test_parallel.py under torchrun: a few fp32 training steps of a tiny model in
``runtime.parallel=data`` mode, then the weights and a gathered evaluation, saved by rank 0, three times:
with cross-rank BatchNorm (two1.safetensors), without (two0.safetensors), and as one process
(one.safetensors: the data mode as it runs without torchrun, by rank 0 alone). One launch for the
three: starting the interpreters costs far more than the training.

usage: torchrun --nproc_per_node=2 data_parallel_worker.py OUT_DIR
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from kdgen.config import TrainConfig
from kdgen.data.base import AugmentSpec, DataBundle, Split
from kdgen.models import build
from kdgen.training import parallel
from kdgen.training.augment import Normalizer
from kdgen.training.loop import freeze_teacher, train_generation
from kdgen.training.metrics import predict_probs
from kdgen.training.objective import GenerationObjective
from kdgen.training.runtime import Runtime


def bundle() -> DataBundle:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (96,), generator=g)
    split = Split(images[:64], labels[:64])
    # 31 test images: the ranks' shares are uneven, as they are for most real splits
    return DataBundle(train=split, val=Split(images[64:], labels[64:]), test=Split(images[65:], labels[65:]),
                      mean=(0.5,), std=(0.25,), augment=AugmentSpec(translate=1),
                      class_names=[str(i) for i in range(4)])


def train(mode: parallel.ParallelMode, out: Path) -> None:
    runtime = Runtime(precision="fp32", channels_last=False, parallel=mode)
    data = bundle()
    recipe = TrainConfig(epochs=2, batch_size=16, lr=0.1, warmup_epochs=0)
    torch.manual_seed(0)
    teacher = freeze_teacher(build("cnn-tiny", 4, 1))
    torch.manual_seed(1)
    model = build("cnn-tiny", 4, 1)
    objective = GenerationObjective.kd(0.5, 2.0)
    train_generation(model, data, recipe, objective, runtime, seed=3, teacher=teacher)
    probs = mode.gather(lambda part: predict_probs(model, part, Normalizer(data.mean, data.std, runtime.device)),
                        data.test)
    if mode.is_leader:
        tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
        tensors["probs"] = probs.contiguous()
        tensors["bn_classes"] = torch.tensor([type(m).__name__ == "BatchNorm2d" for m in model.modules()
                                              if "BatchNorm" in type(m).__name__])
        save_file(tensors, out)


def main() -> None:
    out = Path(sys.argv[1])
    synced = parallel.start("data", "cpu", sync_batchnorm=True)  # joins the processes: it owns the group
    train(synced, out / "two1.safetensors")
    unsynced = parallel.start("data", "cpu", sync_batchnorm=False)  # the group exists: only a control group
    train(unsynced, out / "two0.safetensors")
    unsynced.close()
    if synced.is_leader:  # what parallel.start("data") gives without torchrun: one process, whole batches
        train(parallel.DataParallel(sync_batchnorm=True), out / "one.safetensors")
    synced.close()


if __name__ == "__main__":
    main()
