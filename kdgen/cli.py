"""Command line: ``kdgen run``, ``report``, ``sweep``, ``predict``, ``transfer``, ``arms``, ``models``, ``sources``, ``config``.

User mistakes (:class:`~kdgen.errors.UserError`) print one line on stderr and exit 2; anything
else is an internal failure with a traceback and exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn

from kdgen import __version__
from kdgen.errors import UserError

if TYPE_CHECKING:
    from kdgen.training.loop import StopFlag

EPILOG = """examples:
  kdgen run                                   # embedded default: digits, 3 arms, 3 seeds, 3 generations
  kdgen run --config configs/fashion-mnist.yaml --out runs/fmnist
  kdgen run train.epochs=2 tolerance.eta=0.5 seeds=[0,1]
  kdgen report runs/fmnist
  kdgen report runs/fmnist runs/mnist --out runs/both   # one page comparing runs
  kdgen predict runs/fmnist images/ --which ensemble:tolerant/0 --out predictions.csv
  kdgen sweep --config configs/fashion-mnist-converged.yaml --grid tolerance.eta=0,0.1,0.2,0.4 --out sweeps/eta
  kdgen transfer runs/fmnist --data mnist --root package/data   # linear probes on another data set
"""

SWEEP_HELP = """Run one ordinary run folder per grid point (the cartesian product of every --grid) under
DIR/runs/, and summarise them on the val split only: DIR/sweep.md, sweep.html, sweep_summary.json
and plots/ (each metric against each swept key, mean ± std over seeds, paired tests against the
reference point and against the strict arm), ending with the best point on val and the exact
`kdgen run` command that evaluates it on test.

No unit is trained twice: a unit depends only on some settings (the baseline arm not on tolerance.*
or distill.*, the strict arm not on tolerance.*, a tolerant patriarch not on distill.*), so points
share such units through DIR/units/. A sweep over tolerance.eta trains only the tolerant arm per point.

Linked keys move together: --grid distill.temperature,distill.weight=[1,0.5],[4,0.9] is one axis of two
points (T 1 with w 0.5, T 4 with w 0.9). With two axes the plots draw the second as separate curves.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (the usage is in --help), like every other mistake."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"kdgen: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kdgen", description="Knowledge distillation in generations with tolerant "
                                     "teachers: compare tolerant, strict (born-again) and independent models.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kdgen {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="run a whole experiment (all arms, seeds and generations)",
                              description="Run a whole experiment and write config.yaml, results.json, report.md/html, "
                              "plots and safetensors checkpoints to the output folder.",
                              epilog="Every config field can be overridden as a dotted KEY=VALUE, values parsed as YAML: "
                              "train.epochs=2 tolerance.eta=0.5 seeds=[0,1] data.name=synthetic. See docs/reference/configuration.md (or kdgen config) for all keys.")
    run.add_argument("--config", type=Path, metavar="FILE", help="YAML config (default: the embedded digits experiment)")
    run.add_argument("--out", type=Path, metavar="DIR", help="output folder, new or empty (default: a new folder under runs/)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted run in --out DIR")
    run.add_argument("--units", type=Path, metavar="DIR", help="a unit cache (e.g. a sweep's DIR/units): units trained "
                     "before with the same relevant settings are taken from it instead of trained, new ones are added")
    run.add_argument("--no-progress", action="store_true", help="no progress bar (same as log.progress=false)")
    run.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")

    report = commands.add_parser("report", help="(re)build a run's report, or compare several runs on one page",
                                 description="With one DIR: rebuild report.md, report.html and plots/ from "
                                 "DIR/results.json (a sweep folder: sweep.md, sweep.html and its plots from its points' val rows). With "
                                 "several (and --out): one page comparing them.")
    report.add_argument("run_dirs", type=Path, nargs="+", metavar="DIR")
    report.add_argument("--out", type=Path, metavar="OUT", help="folder (new or empty) for the comparison page")

    sweep = commands.add_parser("sweep", help="run a grid of configs sharing trained units, scored on val only",
                                description=SWEEP_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: kdgen sweep --config configs/fashion-mnist-converged.yaml "
                                "--grid tolerance.eta=0,0.05,0.1,0.2,0.4 --grid tolerance.k=2,3,5 seeds=[0,1,2] --out sweeps/tsd")
    sweep.add_argument("--config", type=Path, metavar="FILE", help="YAML config every point starts from (default: the embedded one)")
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="a swept key and its values, parsed as YAML (repeat for a grid over several keys); "
                       "KEY1,KEY2=[a1,a2],[b1,b2] links keys that move together")
    sweep.add_argument("--out", type=Path, metavar="DIR", required=True, help="sweep folder, new or empty (or one to --resume)")
    sweep.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out DIR")
    sweep.add_argument("--select", default="tolerant/last", metavar="ARM/GEN[/ensemble]",
                       help="the cell whose val top-1 scores a point (default tolerant/last: the last generation)")
    sweep.add_argument("--reference", type=int, default=0, metavar="N",
                       help="index of the grid point the others are compared with, paired by seed (default 0, the first)")
    sweep.add_argument("--units", type=Path, metavar="DIR", help="unit cache folder (default DIR/units); sweeps naming "
                       "the same one share trained units, also while running side by side")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar (same as log.progress=false)")
    sweep.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides for every point")

    transfer = commands.add_parser(
        "transfer", help="score every model's penultimate features with linear probes on another data set",
        description="Freeze every model of a finished run (each arm, seed and generation) and train a linear probe "
        "(logistic regression, C chosen on the probe data's val split) on its penultimate features over another data "
        "set's training split; score it on that data set's test split. Rows go to RUN/transfer/NAME.json and the run's "
        "report gains a section with the arms compared per generation, paired by seed.",
        epilog="KEY=VALUE overrides: data.train_per_class=500 (probe training images per class; null: all), "
        "data.val_fraction=0.1, probe.c_values=[0.01,0.1,1,10], probe.max_iter=1000, probe.layer=NAME (the module "
        "whose input is the feature; default: the model's last nn.Linear). Grey and RGB images are converted and "
        "sizes resized to what the models were trained on.")
    transfer.add_argument("run_dir", type=Path, metavar="RUN", help="a finished run folder")
    transfer.add_argument("--data", required=True, metavar="NAME", help="probe data source (see kdgen sources)")
    transfer.add_argument("--root", metavar="DIR", help="where the probe data's files are, for sources that need files")
    transfer.add_argument("--out", type=Path, metavar="DIR", help="write NAME.json here instead of RUN/transfer/ "
                          "(the run folder and its report are then left untouched)")
    transfer.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="probe data and probe settings")

    predict = commands.add_parser("predict", help="classify images with a trained model of a run (CSV: file, class, probability)",
                                  description="Classify image files (or every image in the folders given) with a model "
                                  "of RUN, and write a CSV of file, class and probability to stdout or --out FILE.")
    predict.add_argument("run_dir", type=Path, metavar="RUN")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER")
    predict.add_argument("--which", default="best", metavar="best|ARM/SEED/GEN|ensemble:ARM/SEED",
                         help="the model: best (chosen on val; default), one unit such as tolerant/0/2, or an arm's "
                         "ensemble of generations such as ensemble:tolerant/0")
    predict.add_argument("--out", type=Path, metavar="FILE", help="CSV file to write (a new file; default stdout)")

    commands.add_parser("arms", help="list the registered arms, with what each does")
    models = commands.add_parser("models", help="list the registered models with parameters and forward FLOPs",
                                 description="Every registered model with its trainable parameters and forward FLOPs "
                                 "per image (two per multiply-add of convolutions and matrix products), so a chain's "
                                 "compression is visible before training (generations.models).")
    models.add_argument("--input", default="3x32x32", metavar="CxHxW",
                        help="image shape to count FLOPs at (default 3x32x32, CIFAR; 1x28x28 for Fashion-MNIST)")
    models.add_argument("--classes", type=int, default=10, metavar="N", help="classes of the output layer (default 10)")
    models.add_argument("--timm", nargs="?", const="*", metavar="PATTERN",
                        help="list timm's architectures matching PATTERN (shell wildcards, e.g. 'resnet*'; default all), "
                        "usable as model.name=timm/NAME with the [timm] extra")
    models.add_argument("names", nargs="*", metavar="NAME",
                        help="only these models (default: all of kdgen's own), e.g. resnet20 timm/resnet18")
    commands.add_parser("sources", help="list the data sources")
    config = commands.add_parser("config", help="print the resolved config (defaults + file + overrides) as YAML")
    config.add_argument("--config", type=Path, metavar="FILE")
    config.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return parser


def _run(args: argparse.Namespace) -> int:
    from kdgen.config import load_config
    from kdgen.running.runner import run_experiment
    from kdgen.training.parallel import PeerLost

    overrides = list(args.overrides) + (["log.progress=false"] if args.no_progress else [])
    if args.resume and args.out is not None and args.config is None:
        # Resuming without --config continues the saved config (plus any overrides, which must agree).
        from kdgen.config import apply_overrides, build_config
        from kdgen.folders import saved_config

        cfg = build_config(apply_overrides(saved_config(args.out).to_dict(), overrides), "overrides")
    else:
        cfg = load_config(args.config, overrides)
    out = args.out
    stop, restore_handlers = _stop_on_signals()
    try:
        cache = None
        if args.units is not None:
            from kdgen.running.unit_cache import UnitCache

            cache = UnitCache(args.units)
        run_experiment(cfg, out, resume=args.resume, unit_cache=cache, stop=stop)
    except (KeyboardInterrupt, PeerLost) as exc:
        _say_how_to_resume(exc, "kdgen run --resume" + (f" --out {out}" if out is not None else ""))
        return 1 if isinstance(exc, PeerLost) else 130
    finally:
        restore_handlers()
    return 0


def _say_how_to_resume(exc: BaseException, how: str) -> None:
    """One line (from rank 0 under torchrun, where every process stops) on how to continue a stopped run."""
    from kdgen.training.parallel import PeerLost

    if _rank() == 0:
        if "RANK" in os.environ:
            how = "the same torchrun command plus --resume"
        what = f"error: {exc}" if isinstance(exc, PeerLost) else "interrupted; the training state is saved"
        print(f"kdgen: {what}: continue with {how}", file=sys.stderr)


def _stop_on_signals() -> tuple["StopFlag", Callable[[], None]]:
    """SIGINT (Ctrl-C) and SIGTERM (kill, a scheduler's pre-emption) stop training at the next step
    boundary, after saving the exact state there; a second Ctrl-C stops at once. Returns the flag the
    handlers set, and a function that puts the previous handlers back."""
    import signal

    from kdgen.training.loop import StopFlag

    stop = StopFlag()

    def handler(signum: int, frame: object) -> None:
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return stop, restore


def _sweep(args: argparse.Namespace) -> int:
    from kdgen.running.sweep import run_sweep
    from kdgen.sweep_plan import make_plan
    from kdgen.training.parallel import PeerLost

    overrides = list(args.overrides) + (["log.progress=false"] if args.no_progress else [])
    plan = make_plan(args.config, args.grid, overrides, args.select, args.reference)
    stop, restore_handlers = _stop_on_signals()
    try:
        run_sweep(plan, args.out, resume=args.resume, units=args.units, stop=stop)
    except (KeyboardInterrupt, PeerLost) as exc:
        _say_how_to_resume(exc, "the same command plus --resume")
        return 1 if isinstance(exc, PeerLost) else 130
    finally:
        restore_handlers()
    return 0


def _report(args: argparse.Namespace) -> int:
    from kdgen.reporting.page import build_comparison, build_report
    from kdgen.reporting.results import Results
    from kdgen.reporting.tables import console_summary

    if args.out is None and len(args.run_dirs) > 1:
        raise UserError("comparing several runs needs --out DIR, a new folder for the comparison page")
    if args.out is not None:
        from kdgen.running.run_folder import check_new_out_dir

        check_new_out_dir(args.out)
        print(f"report: {build_comparison(args.run_dirs, args.out)}")  # reads every run before writing
        return 0
    if (args.run_dirs[0] / "sweep.json").is_file():  # a sweep folder: its summary page, from its points' val rows
        from kdgen.reporting.sweep_page import build_sweep_report

        print(f"report: {build_sweep_report(args.run_dirs[0])}")
        return 0
    results = Results.load(args.run_dirs[0])
    path = build_report(args.run_dirs[0], results)
    print(console_summary(results))
    print(f"\nreport: {path}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from kdgen.running.inference import predict

    if args.out is not None and args.out.exists():
        raise UserError(f"--out {str(args.out)!r} exists; kdgen does not overwrite it (choose a new file)")
    try:
        predict(args.run_dir, args.images, args.which, args.out)
    except BrokenPipeError:  # `kdgen predict ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from kdgen.reporting.page import build_report
    from kdgen.reporting.probes import transfer_text
    from kdgen.running.transfer import run_transfer, transfer_config

    cfg = transfer_config(args.data, args.root, args.overrides)
    path = run_transfer(args.run_dir, cfg, out=args.out, progress=lambda line: print(f"kdgen transfer: {line}", flush=True))
    print(transfer_text(path))
    print(f"\nrows: {path}")
    if args.out is None:
        print(f"report: {build_report(args.run_dir)}")
    return 0


def _config(args: argparse.Namespace) -> int:
    import yaml

    from kdgen.config import load_config

    print(yaml.safe_dump(load_config(args.config, args.overrides).to_dict(), sort_keys=False), end="")
    return 0


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _print_error(exc: UserError) -> None:
    """One line on stderr. Under torchrun, a mistake every process meets (config, data, paths) is
    printed by rank 0 alone; one a process met while training says which rank it was."""
    from kdgen.training.parallel import PeerFailed

    rank = _rank()
    own = getattr(exc, "rank", None)
    if isinstance(exc, PeerFailed) and rank != 0:
        return
    if rank == 0 or own is not None:
        print(f"kdgen: error{f' (rank {own})' if own else ''}: {exc}", file=sys.stderr)


def _timm_models(pattern: str) -> int:
    """``kdgen models --timm PATTERN``: timm's architecture names, one a line, as kdgen names them."""
    from kdgen.models import split_name

    namespace, _ = split_name("timm/_")  # type: ignore[misc] - the timm namespace is always registered
    reason = namespace.missing()
    if reason is not None:
        raise UserError(f"--timm: {reason}")
    found = namespace.architectures(pattern)
    if not found:
        raise UserError(f"--timm {pattern!r}: no timm architecture matches (wildcards: 'resnet*', '*vit*')")
    print("\n".join(f"timm/{name}" for name in found))
    return 0


def _models(args: argparse.Namespace) -> int:
    from kdgen.models import build, check_name, names, profile

    try:
        shape = [int(part) for part in args.input.lower().split("x")]
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError
    except ValueError:
        raise UserError(f"--input {args.input!r}: give the image shape as CxHxW, e.g. 3x32x32 or 1x28x28") from None
    if args.classes < 2:
        raise UserError(f"--classes {args.classes}: a classifier needs at least 2 classes")
    if args.timm is not None:
        return _timm_models(args.timm)
    for name in args.names:
        try:
            check_name(name)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    rows = []
    for name in args.names or names():
        try:
            found = profile(build(name, args.classes, shape[0]), shape, name)
            rows.append([name, f"{found.params:,}", f"{found.flops / 1e6:,.2f}"])
        except Exception as exc:  # noqa: BLE001 - a model that cannot take this size says so on its line
            rows.append([name, "–", f"cannot take {args.input} ({type(exc).__name__})"])
    header = ["model", "parameters", f"MFLOPs at {args.input}"]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(3)]
    for line in [header] + rows:
        print(f"{line[0]:<{widths[0]}}  {line[1]:>{widths[1]}}  {line[2]:>{widths[2]}}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``kdgen`` command; returns the exit code."""
    parser = build_parser()
    # Overrides may come before or after options (argparse stops filling a positional list at the
    # first option), so collect leftovers and accept those that look like KEY=VALUE.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command not in ("run", "config", "sweep", "transfer") or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "report":
            return _report(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "config":
            return _config(args)
        if args.command == "predict":
            return _predict(args)
        if args.command == "transfer":
            return _transfer(args)
        if args.command == "arms":
            from kdgen import arms

            width = max(len(name) for name in arms.names())
            print("\n".join(f"{name:<{width}}  {arms.get(name).description}" for name in arms.names()))
            return 0
        if args.command == "models":
            return _models(args)
        if args.command == "sources":
            from kdgen.data import names as source_names

            print("\n".join(source_names()))
            return 0
    except UserError as exc:
        _print_error(exc)
        return 2
    except KeyboardInterrupt:
        print("kdgen: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
