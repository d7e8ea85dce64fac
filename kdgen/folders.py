"""What kdgen writes where: the names inside a run folder, and reading back the config a run was started with.

Shared by the code that writes run folders (:mod:`kdgen.running`) and the code that reads them
(:mod:`kdgen.reporting`, ``kdgen.load``), so neither needs the other for a file name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdgen.errors import UserError

if TYPE_CHECKING:
    from kdgen.config import Config

Row = dict[str, Any]
CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
TRANSFER_DIR = "transfer"  # kdgen transfer's probe results, one file per probe data set
# Each generation's model: {"generations": [{"generation", "model", "params", "flops", "image_shape"}, ...]}
ARCHITECTURES_FILE = "architectures.json"
TRACKING_DIR = "mlflow"  # log.mlflow: the MLflow run ids of the run and its units, and why tracking stopped


def unit_name(arm: str, seed: int, generation: int) -> str:
    """The name of a unit's checkpoint (and of its entry in results.json's ``done``)."""
    return f"{arm}-seed{seed}-gen{generation}"


def checkpoint_relpath(arm: str, seed: int, generation: int) -> str:
    """Where a unit's weights are, relative to the run folder."""
    return f"checkpoints/{unit_name(arm, seed, generation)}.safetensors"


def saved_config(out: Path) -> "Config":
    """The config a run folder was started with."""
    from kdgen.config import build_config, read_yaml, upgrade_recorded

    path = out / CONFIG_FILE
    if not out.is_dir():
        raise UserError(f"--resume: {str(out)!r} is not a run folder")
    if not path.is_file():
        raise UserError(f"--resume: {str(out)!r} has no {CONFIG_FILE} (not a kdgen run folder)")
    return build_config(upgrade_recorded(read_yaml(path)), str(path))


def read_architectures(out: Path) -> list[dict[str, Any]] | None:
    """Each generation's model (name, parameters, forward FLOPs per image) as the run recorded it; None for a run
    folder written before kdgen recorded them."""
    from kdgen.checkpoint import read_json

    path = Path(out) / ARCHITECTURES_FILE
    if not path.is_file():
        return None
    try:
        return list(read_json(path)["generations"])
    except (KeyError, TypeError, ValueError):
        return None


def tracking_note(run_dir: Path) -> str | None:
    """The report's line on MLflow: where the run was logged, or what was not logged and why (None: not tracked)."""
    from kdgen.checkpoint import read_json

    folder = Path(run_dir) / TRACKING_DIR
    reasons = sorted({p.read_text(encoding="utf-8").strip() for p in folder.glob("off-*.txt")}) \
        if folder.is_dir() else []
    if reasons:
        return (f"MLflow: not logged from the point it failed on ({'; '.join(reasons)}); tracking was switched "
                "off there and training went on.")
    run_file = folder / "run.json"
    try:
        saved = read_json(run_file) if run_file.is_file() else None
    except UserError:
        saved = None  # a damaged record must not cost the report
    if not isinstance(saved, dict):
        return None
    return (f"MLflow: parent run `{saved.get('parent')}` in experiment `{saved.get('experiment')}` at "
            f"`{saved.get('tracking_uri')}`, with a nested run per unit.")
