"""Command line: ``kdgen run``, ``report``, ``sweep``, ``predict``, ``transfer``, ``arms``, ``models``, ``sources``, ``config``,
``cache``.

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
from kdgen.errors import UserError, WriteError

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
    _add_cache_parser(commands)
    config = commands.add_parser("config", help="print the resolved config (defaults + file + overrides) as YAML")
    config.add_argument("--config", type=Path, metavar="FILE")
    config.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return parser


def _run(args: argparse.Namespace, stop: "StopFlag") -> int:
    from kdgen.config import load_config
    from kdgen.running.runner import run_experiment
    from kdgen.training.parallel import PeerLost, leave_if_stranded

    overrides = list(args.overrides) + (["log.progress=false"] if args.no_progress else [])
    if args.resume and args.out is not None and args.config is None:
        # Resuming without --config continues the saved config (plus any overrides, which must agree).
        from kdgen.config import apply_overrides, build_config
        from kdgen.folders import saved_config

        cfg = build_config(apply_overrides(saved_config(args.out).to_dict(), overrides), "overrides")
    else:
        cfg = load_config(args.config, overrides)
    out = args.out
    try:
        if stop.requested:  # stopped while starting up: nothing was written yet
            raise KeyboardInterrupt
        cache = None
        if args.units is not None:
            from kdgen.running.unit_cache import UnitCache

            cache = UnitCache(args.units)
        run_experiment(cfg, out, resume=args.resume, unit_cache=cache, stop=stop)
    except (KeyboardInterrupt, PeerLost) as exc:
        _say_how_to_resume(exc, "kdgen run --resume" + (f" --out {out}" if out is not None else ""))
        leave_if_stranded(1)
        return 1 if isinstance(exc, PeerLost) else 130
    return 0


def _say_how_to_resume(exc: BaseException, how: str) -> None:
    """One line on how to continue a stopped run: from rank 0 under torchrun, where every process stops; after a
    lost process from every survivor (rank 0 may be the one lost)."""
    from kdgen.training.parallel import PeerLost

    if _rank() == 0 or isinstance(exc, PeerLost):
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


def _sweep(args: argparse.Namespace, stop: "StopFlag") -> int:
    from kdgen.running.sweep import run_sweep
    from kdgen.sweep_plan import make_plan
    from kdgen.training.parallel import PeerLost, leave_if_stranded

    overrides = list(args.overrides) + (["log.progress=false"] if args.no_progress else [])
    plan = make_plan(args.config, args.grid, overrides, args.select, args.reference)
    try:
        if stop.requested:  # stopped while starting up: nothing was written yet
            raise KeyboardInterrupt
        run_sweep(plan, args.out, resume=args.resume, units=args.units, stop=stop)
    except (KeyboardInterrupt, PeerLost) as exc:
        _say_how_to_resume(exc, "the same command plus --resume")
        leave_if_stranded(1)
        return 1 if isinstance(exc, PeerLost) else 130
    return 0


def _add_cache_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """``kdgen cache ls|verify|prune|du DIR``."""
    cache = commands.add_parser("cache", help="list, verify, measure or prune a unit cache (--units DIR)",
                                description="Look after a unit cache: the DIR of `kdgen run --units DIR`, or a "
                                "sweep's DIR/units. See docs/guide/sweeps.md.")
    actions = cache.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    ls = actions.add_parser("ls", help="one line per unit: name, key, size, age, model, differing settings, users",
                            description="One line per unit: its name, key, size, age, model, the settings in which it "
                            "differs from the other units of the same arm, seed and generation, and which of --runs use it.")
    ls.add_argument("cache_dir", type=Path, metavar="DIR")
    ls.add_argument("--runs", type=Path, nargs="+", default=[], metavar="RUN",
                    help="run folders: show which use each unit (by their config's unit keys)")
    verify = actions.add_parser("verify", help="check every unit's checkpoint against its recorded sha256",
                                description="Check every unit's record and checkpoint (sha256 and size). Prints the "
                                "bad units and exits 1 if there is any; units written before checksums are 'unverified'.")
    verify.add_argument("cache_dir", type=Path, metavar="DIR")
    prune = actions.add_parser("prune", help="delete old units or units no given run uses",
                               description="Delete units finished more than DAYS ago (--older-than) or used by none "
                               "of the run folders given (--unused-by). Shows the list first and asks on a terminal; "
                               "without one, --yes is needed. Units claimed in the last hour are never deleted.")
    prune.add_argument("cache_dir", type=Path, metavar="DIR")
    prune.add_argument("--older-than", type=float, metavar="DAYS", help="units finished more than DAYS days ago")
    prune.add_argument("--unused-by", type=Path, nargs="+", metavar="RUN", help="units none of these run folders use")
    prune.add_argument("--yes", action="store_true", help="delete without asking")
    du = actions.add_parser("du", help="total size and number of units, per arm and per model")
    du.add_argument("cache_dir", type=Path, metavar="DIR")


def _cache(args: argparse.Namespace) -> int:
    """``kdgen cache``: the data comes from :mod:`kdgen.running.cache_admin`; this only prints it."""
    import time

    from kdgen.running import cache_admin as admin

    if args.cache_command == "prune":
        if args.older_than is None and args.unused_by is None:
            raise UserError("kdgen cache prune: say which units: --older-than DAYS or --unused-by RUN [RUN ...]")
        if args.older_than is not None and args.older_than < 0:
            raise UserError(f"--older-than {args.older_than}: give a number of days >= 0")
    units = admin.scan(args.cache_dir)
    if args.cache_command == "ls":
        differ = admin.differing_settings(units)
        used = admin.users(units, args.runs) if args.runs else {}
        now = time.time()
        for unit in units:
            fields = [unit.name, unit.key, admin.human_size(unit.bytes), admin.human_age(now - unit.mtime),
                      unit.model if unit.complete else "(incomplete)"]
            fields += [f"{key}={value}" for key, value in differ.get(unit.folder, {}).items()]
            if args.runs:
                fields.append("used by: " + (", ".join(str(run) for run in used[unit.folder]) or "-"))
            print("  ".join(fields))
        return 0
    if args.cache_command == "verify":
        verdicts = admin.verify(units)
        counts = {status: sum(v.status == status for v in verdicts) for status in ("ok", "unverified", "bad", "incomplete")}
        for verdict in verdicts:
            if verdict.status != "ok":
                print(f"{verdict.status}: {verdict.unit.folder.name}: {verdict.cause}")
        print(", ".join(f"{count} {status}" for status, count in counts.items() if count or status == "ok"))
        return 1 if counts["bad"] else 0
    if args.cache_command == "du":
        usage = admin.disk_usage(units)
        print(f"{admin.human_size(usage.bytes)} in {usage.units} units ({admin.human_size(usage.shared_bytes)} of it "
              "hard-linked from run folders too)")
        for title, table in (("arm", usage.per_arm), ("model", usage.per_model)):
            for name, (count, size) in sorted(table.items()):
                print(f"  {title} {name}: {count} units, {admin.human_size(size)}")
        return 0
    plan = admin.plan_prune(args.cache_dir, units, older_than_days=args.older_than, unused_by=args.unused_by)
    for unit, why in plan.skipped:
        print(f"skip {unit.folder.name}: {why}")
    for unit in plan.units:
        print(f"delete {unit.folder.name}  {admin.human_size(unit.bytes)}")
    for claim in plan.claims:
        print(f"delete {claim.name} (stale claim)")
    if not plan.units and not plan.claims:
        print("nothing to delete")
        return 0
    summary = f"{len(plan.units)} units, {admin.human_size(plan.bytes)}"
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"kdgen cache prune would delete {summary}: add --yes to delete them (no terminal to ask)")
        if input(f"delete {summary}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 0
    admin.delete(plan)
    print(f"deleted {summary}")
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
    from kdgen.models import namespace as model_namespace

    namespace = model_namespace("timm")
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
    restore_handlers = None
    try:
        if args.command in ("run", "sweep"):
            # As early as the command is known: a stop while the config, data and folder are read (a
            # scheduler's SIGTERM right after a start) is answered like one during training (exit 130).
            stop, restore_handlers = _stop_on_signals()
            return _run(args, stop) if args.command == "run" else _sweep(args, stop)
        if args.command == "report":
            return _report(args)
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
        if args.command == "cache":
            return _cache(args)
        if args.command == "sources":
            from kdgen.data import names as source_names

            print("\n".join(source_names()))
            return 0
    except UserError as exc:
        if isinstance(exc, WriteError) and not exc.hint:
            exc.hint = _write_hint(exc, args)
        _print_error(exc)
        return 2
    except KeyboardInterrupt:
        print("kdgen: interrupted", file=sys.stderr)
        return 130
    finally:
        if restore_handlers is not None:
            restore_handlers()
    return 1


def _write_hint(exc: WriteError, args: argparse.Namespace) -> str:
    """How to go on after a failed write: free space (or fix the cause), then the command that continues."""
    from kdgen.checkpoint import is_disk_full

    first = "free space" if is_disk_full(exc) else "fix that"
    if args.command == "run":
        return f"{first} and run again with --resume" + (f" --out {args.out}" if args.out is not None else
                                                          " --out <the run folder>")
    if args.command == "sweep":
        return f"{first} and run the same command plus --resume"
    return f"{first} and run the same command again"


if __name__ == "__main__":
    sys.exit(main())
