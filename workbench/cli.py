"""Command line: ``workbench run STAGE -p NAME VALUE … [--run DIR]``, ``workbench pipeline -p …``,
``workbench cards``, ``workbench report [RUNS_DIR]``. Errors are one line on stderr (exit 2); the run directory
is the last line printed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from .errors import WorkbenchError


def _overrides(args) -> dict:
    values: dict = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise WorkbenchError(f"config file {path} not found (option -f)")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise WorkbenchError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise WorkbenchError(f"config file {path} must be a mapping of parameter: value")
        values.update(loaded)
    for name, value in args.param or []:
        values[name] = value
    # paths given relative to the caller stay valid whatever the kernel's working directory
    ds = values.get("dataset")
    if isinstance(ds, str) and (ds.endswith(".npz") or "/" in ds) and Path(ds).exists():
        values["dataset"] = str(Path(ds).resolve())
    return values


def _summary(run_dir: Path) -> str:
    from .execute import read_results
    res = read_results(run_dir)
    lines = []
    m = res.get("metrics.json")
    if m:
        lines.append(f"test ACC {m['test']['acc']:.4f}  test AUC {m['test']['auc']:.4f}  "
                     f"({m['dataset']}, {m['test']['n']} images)")
    a = res.get("annotation_summary.json")
    if a:
        line = (f"annotate: {a['n_auto_accepted']}/{a['pool_size']} auto-accepted "
                f"(threshold {a['threshold']['threshold']:.4f} for precision {a['threshold']['target_precision']})")
        if "achieved" in a:
            line += f"; achieved precision {a['achieved']['precision']:.4f}, coverage {a['achieved']['coverage']:.4f}"
        lines.append(line)
    reports = sorted(p.name for p in run_dir.glob("*.html"))
    if reports:
        lines.append(f"reports: {', '.join(str(run_dir / r) for r in reports)}")
    return "\n".join(lines)


def cmd_run(args) -> Path:
    from .execute import run_stage
    from .runs import new_run_dir, require
    overrides = _overrides(args)
    if args.run:
        run_dir = Path(args.run)
        if args.stage != "train":
            require(run_dir)
    elif args.stage == "train":
        from .execute import check_overrides
        check_overrides("train", overrides)  # fail before creating a directory
        run_dir = new_run_dir(args.name or "train")
    else:
        raise WorkbenchError(f"stage {args.stage} needs --run DIR: the run directory of a trained model")
    run_stage(args.stage, run_dir, overrides, progress=not args.quiet)
    return run_dir


def cmd_pipeline(args) -> Path:
    from .execute import PIPELINE, run_stage, split_pipeline_overrides
    from .runs import new_run_dir
    per_stage = split_pipeline_overrides(_overrides(args))
    run_dir = new_run_dir(args.name or "pipeline")
    print(f"run directory: {run_dir}", flush=True)
    for stage in PIPELINE:
        print(f"== {stage}", flush=True)
        run_stage(stage, run_dir, per_stage[stage], progress=not args.quiet)
    return run_dir


def cmd_cards(args) -> None:
    from .cards import all_cards
    for c in all_cards():
        print(f"{c.name:16s} {c.task:28s} {c.num_classes:3d} classes  {c.modality}  [{c.license}]")


def cmd_report(args) -> Path:
    from .paths import runs_root
    from .report import collect_runs, write_index
    runs_dir = Path(args.runs_dir) if args.runs_dir else runs_root()
    out = write_index(runs_dir, sort=args.sort, out=Path(args.out) if args.out else None)
    print(f"{len(collect_runs(runs_dir))} run(s) compared")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                       help="set a notebook parameter (repeatable)")
        p.add_argument("-f", "--config", help="YAML file of parameter: value")
        p.add_argument("--name", help="suffix of the new run directory's name")
        p.add_argument("-q", "--quiet", action="store_true", help="no cell progress bar")

    r = sub.add_parser("run", help="execute one stage notebook")
    r.add_argument("stage", choices=["train", "evaluate", "annotate"])
    r.add_argument("--run", help="run directory (required for evaluate/annotate)")
    common(r)
    pl = sub.add_parser("pipeline", help="train → evaluate → annotate into a new run directory")
    common(pl)
    sub.add_parser("cards", help="list the data cards")
    from .report import SORT_KEYS
    rp = sub.add_parser("report", help="write index.html comparing the runs in RUNS_DIR (default runs/)")
    rp.add_argument("runs_dir", nargs="?", metavar="RUNS_DIR",
                    help="folder of run directories (default: runs/ or $WORKBENCH_RUNS_DIR)")
    rp.add_argument("--sort", default="test_acc", choices=SORT_KEYS, help="initial order (default test_acc)")
    rp.add_argument("-o", "--out", help="where to write the page (default RUNS_DIR/index.html)")
    ph = sub.add_parser("params", help="list a stage's parameters")
    ph.add_argument("stage", choices=["train", "evaluate", "annotate"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "cards":
            cmd_cards(args)
            return 0
        if args.command == "params":
            from .params import help_text
            print(help_text(args.stage))
            return 0
        if args.command == "report":
            print(cmd_report(args))
            return 0
        run_dir = cmd_run(args) if args.command == "run" else cmd_pipeline(args)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the run directory keeps what was written so far", file=sys.stderr)
        return 130
    summary = _summary(run_dir)
    if summary:
        print(summary)
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
