"""Choose the default distillation and tolerance settings on the digits *val* split.

Stage 1 picks the distillation weight and temperature on the strict arm (no tolerance);
stage 2 picks TSD's eta, k and primary on the tolerant arm with stage 1's choice. The score is
the mean val top-1 over seeds of generation 2 (ties broken by val NLL). The test split is never
read. Usage::

    python scripts/sweep_defaults.py --seeds 0 1 2 3 4 --out docs/sweep_digits.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from kdgen.config import build_config
from kdgen.data import load_bundle
from kdgen.generations import GenerationsRunner
from kdgen.models import build

GENERATION = 2


def score(cfg_overrides: dict, seeds: list[int], arm: str) -> dict[str, float]:
    raw = {"seeds": seeds, "generations": {"count": GENERATION, "arms": [arm]}, "log": {"progress": False}}
    for section, values in cfg_overrides.items():
        raw.setdefault(section, {}).update(values)
    cfg = build_config(raw)
    data = load_bundle(cfg.data)
    runner = GenerationsRunner(cfg, data, lambda: build(cfg.model.name, data.num_classes, data.channels))
    rows = [r for r in runner.run() if r["split"] == "val" and r["kind"] == "single"]
    by_gen = {g: [r for r in rows if r["generation"] == g] for g in range(GENERATION + 1)}
    result = {f"top1_g{g}": float(np.mean([r["top1"] for r in rs])) for g, rs in by_gen.items()}
    result["top1_std"] = float(np.std([r["top1"] for r in by_gen[GENERATION]], ddof=1))
    result["nll"] = float(np.mean([r["nll"] for r in by_gen[GENERATION]]))
    return result


def best(results: list[dict]) -> dict:
    return max(results, key=lambda r: (r[f"top1_g{GENERATION}"], -r["nll"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("docs/sweep_digits.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    stage1 = []
    for weight, temperature in itertools.product([0.5, 0.7, 0.9], [2.0, 4.0]):
        res = score({"distill": {"weight": weight, "temperature": temperature}}, args.seeds, "strict")
        stage1.append({"weight": weight, "temperature": temperature, **res})
        print(json.dumps(stage1[-1]), flush=True)
    chosen = best(stage1)
    distill = {"weight": chosen["weight"], "temperature": chosen["temperature"]}
    stage2 = []
    for eta, k, primary in itertools.product([0.2, 0.4, 0.8], [2, 3, 5], ["top1", "target"]):
        res = score({"distill": distill, "tolerance": {"method": "tsd", "eta": eta, "k": k, "primary": primary}},
                    args.seeds, "tolerant")
        stage2.append({"eta": eta, "k": k, "primary": primary, **res})
        print(json.dumps(stage2[-1]), flush=True)
    payload = {"seeds": args.seeds, "generation_scored": GENERATION, "split": "val", "stage1_strict": stage1,
               "stage2_tolerant": stage2, "chosen": {**distill, **{k: best(stage2)[k] for k in ("eta", "k", "primary")}},
               "wall_time_s": time.perf_counter() - start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print("chosen:", payload["chosen"], f"({payload['wall_time_s']:.0f} s)")


if __name__ == "__main__":
    main()
