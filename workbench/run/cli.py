"""Command line: ``workbench run STAGE -p NAME VALUE … [--run DIR]``, ``workbench pipeline -p …``,
``workbench cards``, ``workbench report [RUNS_DIR]``, ``workbench fetch FLAG``,
``workbench ingest DICOM_DIR --out DIR``, ``workbench card init FOLDER``,
``workbench review import POOL --annotator NAME FILE.csv``, ``workbench agreement POOL``. Errors are one line on stderr
(exit 2); the run directory is the last line printed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from ..core.errors import WorkbenchError


def _overrides(args) -> dict:
    values: dict = {}
    if args.config:
        from ..core.params import read_yaml_mapping
        values.update(read_yaml_mapping(args.config))
    for name, value in args.param or []:
        values[name] = value
    # paths given relative to the caller stay valid whatever the kernel's working directory
    ds = values.get("dataset")
    if isinstance(ds, str) and ds.strip() and Path(ds).exists():
        from ..data.cards import card_names
        from ..data.loaders import default_cards_dir
        if ds.endswith(".npz") or "/" in ds or ds not in card_names(default_cards_dir()):
            values["dataset"] = str(Path(ds).resolve())
    for name in POOL_PARAMS:       # pools of images (a split name stays a split name)
        if isinstance(values.get(name), str) and values[name].strip():
            values[name] = ",".join(_absolute_pool(v.strip()) for v in values[name].split(","))
    return values


POOL_PARAMS = ("unlabelled", "images")   # train's unlabelled pool, pretrain's pools (comma-separated)


def _absolute_pool(spec: str) -> str:
    """A folder or ``FILE.npz[:KEY]`` pool given relative to the caller, made absolute (also for the stage cache's
    fingerprints); split names and paths that do not exist are left as they are (the stage says what is wrong)."""
    path, sep, key = spec.partition(":") if ".npz:" in spec else (spec, "", "")
    if spec in ("train", "val", "test") or not Path(path).expanduser().exists():
        return spec
    return str(Path(path).expanduser().resolve()) + sep + key


def _num(v, digits: int = 4) -> str:
    from ..stages.report import fmt     # one formatter for the summary lines, the run index and the sweep
    return fmt(v, digits)


def _summary(run_dir: Path) -> str:
    from .execute import read_results
    res = read_results(run_dir)
    lines = []
    m = res.get("metrics.json")
    if m:
        t = m.get("test") or {}
        lines.append(f"test ACC {_num(t.get('acc'))}  test AUC {_num(t.get('auc'))}  "
                     f"({m.get('dataset', '?')}, {t.get('n', '?')} images)")
    a = res.get("annotation_summary.json")
    if a:
        c = a.get("certification") or {}
        line = f"annotate: {a['n_auto_accepted']}/{a['pool_size']} auto-accepted"
        if c.get("certified_by") == "pool":
            line += (f" (certified on the pool: {c.get('n_labels', 0)} labels, precision ≥ "
                     f"{_num(c.get('precision_lower_bound'))} with probability {a.get('guarantee')})")
        elif c.get("certified_by") == "none":
            line += " (not certified yet)"
        else:
            line += (f" (threshold {_num(a['threshold'].get('threshold'))} chosen on val for precision "
                     f"{a['threshold'].get('target_precision')})")
        if a.get("n_labelled"):
            line += f"; {a['n_labelled']} labelled by a person"
        if a.get("rejected"):
            line += f"; {a['rejected']} file(s) rejected (rejected.csv)"
        if "achieved" in a:
            got = a["achieved"]
            line += (f"; achieved precision {_num(got.get('precision'))}, coverage {_num(got.get('coverage'))}"
                     if got.get("n_accepted", 1) else "; nothing auto-accepted")
        lines.append(line)
        shift = a.get("shift") or {}
        if shift.get("fired"):
            lines.append(f"SHIFT: the pool differs from val ({'; '.join(shift.get('reasons', [])[:2])})")
        if c.get("message") and c.get("certified_by") != "val":
            lines.append(f"CERTIFY: {c['message']}")
    pre = run_dir / "pretrain_summary.json"
    if pre.is_file():
        import json
        d = json.loads(pre.read_text())
        pr = d.get("probe") or {}
        if pr:
            got, rnd = pr["pretrained"], pr["random_init"]
            lines.append(f"pretrain ({d['method']}, {d['steps']} steps, {d['train_seconds']:.0f} s): val kNN ACC "
                         f"{_num(got['knn']['acc'])} (random init {_num(rnd['knn']['acc'])}), linear probe ACC "
                         f"{_num(got['linear_probe']['acc'])} (random init {_num(rnd['linear_probe']['acc'])})")
    reports = sorted(run_dir.glob("*.html"))
    if res.get("annotation_dir"):
        reports += sorted(Path(res["annotation_dir"]).glob("*.html"))
    if reports:
        lines.append(f"reports: {', '.join(str(r) for r in reports)}")
    return "\n".join(lines)


def cmd_run(args) -> Path:
    from .execute import run_stage
    from ..core.runs import new_run_dir, require
    overrides = _overrides(args)
    if args.run:
        run_dir = Path(args.run)
        if args.stage not in ("train", "explore", "pretrain"):
            require(run_dir)
    elif args.stage in ("train", "explore", "pretrain"):
        from .execute import check_overrides
        typed = check_overrides(args.stage, overrides)  # fail before creating a directory
        if args.stage == "train":
            from ..data.unlabelled import preflight
            preflight(typed)
        run_dir = new_run_dir(args.name or args.stage)
    else:
        raise WorkbenchError(f"stage {args.stage} needs --run DIR: the run directory of a trained model")
    html = run_stage(args.stage, run_dir, overrides, progress=not args.quiet)
    return html.parent  # annotate: the pool's own new directory inside the run


def cmd_pipeline(args) -> Path:
    from .cache import run_pipeline, stage_keys
    from .execute import PIPELINE, split_pipeline_overrides
    from ..core.runs import new_run_dir
    per_stage = split_pipeline_overrides(_overrides(args))
    from ..data.unlabelled import preflight
    preflight(per_stage["train"])
    unl = per_stage["train"].get("unlabelled", "")
    if unl and unl != "train" and "pool" not in per_stage["annotate"]:
        # the loop closes: the images trained on without labels are the pool annotated (semi-supervised vs supervised)
        per_stage["annotate"]["pool"] = unl
    keys = stage_keys(per_stage, PIPELINE)  # also checks the dataset before a directory is made
    run_dir = new_run_dir(args.name or "pipeline")
    print(f"run directory: {run_dir}", flush=True)
    # a stage finished before with the same parameters, data and code is reused (workbench.cache)
    run_pipeline(run_dir, per_stage, PIPELINE, progress=not args.quiet, keys=keys, use_cache=not args.no_cache,
                 log=lambda m: print(m, flush=True))
    return run_dir


def cmd_sweep(args) -> int:
    from .sweep import main_sweep
    return main_sweep(args, out=lambda m: print(m, flush=True))


def cmd_cards(args) -> None:
    from ..data.cards import all_cards
    for c in all_cards():
        print(f"{c.name:16s} {c.task:28s} {c.num_classes:3d} classes  {c.modality}  [{c.license}]")


def cmd_fetch(args) -> None:
    from ..data.fetch import fetch
    path = fetch(args.flag, args.size, data_dir=args.data_dir, cards_dir=args.cards_dir, retries=args.retries,
                 progress=not args.quiet)
    print(path)


def cmd_ingest(args) -> None:
    from dataclasses import fields as dc_fields

    from ..data.ingest import IngestOptions, ingest
    given = {f.name: getattr(args, f.name) for f in dc_fields(IngestOptions)
             if getattr(args, f.name, None) is not None}
    if (given.get("level") is not None or given.get("width") is not None) and "window" not in given:
        given["window"] = "custom"
    summary = ingest(Path(args.dicom_dir), Path(args.out), IngestOptions(**given))
    print(f"ingested {summary['images']} image(s) from {summary['files_ingested']} file(s) of "
          f"{summary['patients']} patient(s); splits {summary['splits']}; classes {', '.join(summary['classes'])}")
    if summary["skipped"]:
        print(f"skipped {len(summary['skipped'])} file(s) (listed above)")
    print(f"PHI guard: {summary['phi_values_checked']} original identifying values searched in the outputs: none found")
    print(f"card: {summary['card']}")
    print(summary["dataset"])


ORIENTATION_QUESTION = "Do flips and 90° turns preserve the labels?"


def _ask(prompt: str) -> str:
    """One line from stdin after writing ``prompt`` to stdout (``input`` may put it on stderr)."""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line


def card_orientation(choice: str | None, stdin=None, stdout=None, ask=_ask) -> dict:
    """The ``orientation`` a drafted card gets: from --orientation; else, on a terminal, the answer to
    ORIENTATION_QUESTION (y/n); else orientation-fixed with the reason "not stated". "On a terminal" means
    stdin and stdout both are: a run whose output is captured (scripts, tests spawning the CLI from a
    terminal) must never wait for an answer nobody sees asked."""
    from ..data.cards import ORIENTATION_UNSTATED, orientation_meta
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    if choice:
        return orientation_meta(choice == "free", f"stated at 'workbench card init' (--orientation {choice}): "
                                f"flips and 90° turns {'preserve' if choice == 'free' else 'do not preserve'} the labels")
    if not all(hasattr(f, "isatty") and f.isatty() for f in (stdin, stdout)):
        return orientation_meta(False, ORIENTATION_UNSTATED)
    while True:
        try:
            answer = ask(f"{ORIENTATION_QUESTION} [y/n] ").strip().lower()
        except EOFError:
            return orientation_meta(False, ORIENTATION_UNSTATED)
        if answer in ("y", "yes", "n", "no"):
            free = answer.startswith("y")
            return orientation_meta(free, "answered at 'workbench card init': flips and 90° turns "
                                    f"{'preserve' if free else 'do not preserve'} the labels")
        print("please answer y or n")


def cmd_card_init(args) -> None:
    from ..data.imagefolder import FolderOptions, draft_card
    opts = FolderOptions(csv=args.csv, file_column=args.file_column, label_column=args.label_column,
                         split_column=args.split_column, resize=args.resize, channels=args.channels,
                         val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
                         on_error=args.on_error)
    path = draft_card(Path(args.folder), args.size or [28], opts, name=args.name or "", modality=args.modality or "",
                      license=args.license or "", force=args.force,
                      orientation=card_orientation(getattr(args, "orientation", None)))
    from ..data.loaders import load_dataset
    ds = load_dataset(str(Path(args.folder).resolve()), size=(args.size or [28])[0])
    for n in ds.notes:
        print(f"note: {n}")
    print(f"split sizes: {ds.describe()['split_sizes']}; classes: {', '.join(ds.class_names)}")
    print(path)


def cmd_review(args) -> None:
    """workbench review import POOL --annotator NAME FILE.csv"""
    from ..stages.annotate import import_labels
    res = import_labels(Path(args.pool), args.annotator, Path(args.file))
    print(f"{res['imported']} label(s) imported for {res['annotator']} ({res['blind']} of them blind items), "
          f"{res['unchanged']} already there; log: {res['log']}")


def cmd_agreement(args) -> None:
    """workbench agreement POOL: agreement between annotators, consensus, annotator quality."""
    from ..stages.agreement import analyse, text_table
    pool = Path(args.pool)
    res = analyse(pool, resamples=args.bootstrap, seed=args.seed, adjudicate_below=args.adjudicate_below)
    print(text_table(res))
    written = ["agreement.json", "consensus.csv", "adjudication_queue.csv"] + ([res["figure"]] if res.get("figure") else [])
    print(f"wrote {', '.join(written)} in {pool}")


def cmd_report(args) -> Path:
    from ..core.paths import runs_root
    from ..stages.report import collect_runs, write_index
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
    r.add_argument("stage", choices=["explore", "pretrain", "train", "evaluate", "annotate"])
    r.add_argument("--run", help="run directory (required for evaluate/annotate)")
    common(r)
    pl = sub.add_parser("pipeline", help="train → evaluate → annotate into a new run directory")
    common(pl)
    pl.add_argument("--no-cache", action="store_true",
                    help="run every stage even if one finished before with the same parameters, data and code")
    sw = sub.add_parser("sweep", help="many pipelines on Dask: every combination of -p NAME V1,V2 (cached, resumable)")
    sw.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUES"),
                    help="a parameter and its comma-separated values (repeatable; every combination runs)")
    sw.add_argument("-f", "--config", help="YAML sweep file: parameter: value or [values], settings: [{...}], "
                    "name, stages, retries (docs/sweeps.md)")
    sw.add_argument("--name", help="sweep folder under runs/ (default: sweep-<hash of the spec>; same name resumes)")
    sw.add_argument("--workers", type=int, help="embedded cluster size (default: one per core, memory permitting)")
    sw.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://host:8786")
    sw.add_argument("--stages", help="stages to run (default train,evaluate,annotate)")
    sw.add_argument("--retries", type=int, help="new attempts for a failed run (default 1)")
    sub.add_parser("cards", help="list the data cards")
    from ..stages.report import SORT_KEYS
    rp = sub.add_parser("report", help="write index.html comparing the runs in RUNS_DIR (default runs/)")
    rp.add_argument("runs_dir", nargs="?", metavar="RUNS_DIR",
                    help="folder of run directories (default: runs/ or $WORKBENCH_RUNS_DIR)")
    rp.add_argument("--sort", default="test_acc", choices=SORT_KEYS, help="initial order (default test_acc)")
    rp.add_argument("-o", "--out", help="where to write the page (default RUNS_DIR/index.html)")
    ph = sub.add_parser("params", help="list a stage's parameters")
    ph.add_argument("stage", choices=["explore", "pretrain", "train", "evaluate", "annotate"])

    fe = sub.add_parser("fetch", help="download an official MedMNIST file named by its data card (md5-checked)")
    fe.add_argument("flag", help="data card name, e.g. pathmnist")
    fe.add_argument("--size", type=int, default=28, choices=[28, 64, 128, 224])
    fe.add_argument("--data-dir", help="target folder (default: $WORKBENCH_DATA_DIR or data/)")
    fe.add_argument("--cards-dir", help="data cards folder (default: $WORKBENCH_CARDS_DIR or data_cards/)")
    fe.add_argument("--retries", type=int, default=3, help="automatic resumes after an interruption")
    fe.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    ig = sub.add_parser("ingest", help="DICOM folder → de-identified workbench dataset (npz + manifest + card)")
    ig.add_argument("dicom_dir")
    ig.add_argument("--out", required=True, help="new folder for the dataset (must not exist or be empty)")
    ig.add_argument("--labels", help="CSV with file (relative to DICOM_DIR) and label columns, optional split")
    ig.add_argument("--file-column", dest="file_column")
    ig.add_argument("--label-column", dest="label_column")
    ig.add_argument("--split-column", dest="split_column")
    ig.add_argument("--label-from", dest="label_from", choices=["folder", "modality", "csv"],
                    help="class = first sub-folder name (default), the Modality, or the labels CSV")
    ig.add_argument("--window", help="auto (default), header, minmax, custom, lung, mediastinum, abdomen, bone, brain")
    ig.add_argument("--level", type=float, help="custom window level (implies --window custom)")
    ig.add_argument("--width", type=float, help="custom window width")
    ig.add_argument("--size", type=int, help="image side in pixels, 8 to 1024 (default 64)")
    ig.add_argument("--resize", choices=["stretch", "pad", "crop", "none"], help="resize policy (default pad)")
    ig.add_argument("--frames", choices=["all", "middle", "first"], help="frames of multi-frame files (default all)")
    ig.add_argument("--channels", type=int, choices=[1, 3], help="convert all images to 1 or 3 channels")
    ig.add_argument("--split-by", dest="split_by", choices=["patient", "image"], help="unit of the seeded split")
    ig.add_argument("--val-fraction", dest="val_fraction", type=float)
    ig.add_argument("--test-fraction", dest="test_fraction", type=float)
    ig.add_argument("--seed", type=int)
    ig.add_argument("--allow-burned-in", dest="allow_burned_in", action="store_true", default=None,
                    help="include images flagged BurnedInAnnotation = YES (excluded by default)")
    ig.add_argument("--on-error", dest="on_error", choices=["skip", "raise"])
    ig.add_argument("--name", help="dataset name (default: the --out folder's name)")
    ig.add_argument("--orientation", choices=["free", "fixed"],
                    help="do mirror flips and 90° turns preserve the labels? (default: not stated, written as fixed)")

    rv = sub.add_parser("review", help="review tools: import labels given elsewhere into an annotator's log")
    rsub = rv.add_subparsers(dest="review_command", required=True)
    ri = rsub.add_parser("import", help="append the labels of a CSV (columns id,label) to an annotator's review log")
    ri.add_argument("pool", help="the annotated pool's directory (RUN/annotate/<pool>)")
    ri.add_argument("--annotator", required=True, help="whose labels these are (their own log)")
    ri.add_argument("file", help="CSV with columns id,label (label: a class index or name; multi-label: ';'-separated)")
    ag = sub.add_parser("agreement", help="agreement between a pool's annotators, consensus and annotator quality "
                                          "→ POOL/agreement.json, consensus.csv, adjudication_queue.csv")
    ag.add_argument("pool", help="the annotated pool's directory (RUN/annotate/<pool>)")
    ag.add_argument("--bootstrap", type=int, default=1000, help="resamples of the items for the 95%% intervals (0: none)")
    ag.add_argument("--seed", type=int, default=0)
    ag.add_argument("--adjudicate-below", dest="adjudicate_below", type=float, default=0.5,
                    help="consensus quality under which an item goes to the adjudication queue (besides readers "
                         "disagreeing)")

    cd = sub.add_parser("card", help="data card tools")
    csub = cd.add_subparsers(dest="card_command", required=True)
    ci = csub.add_parser("init", help="draft <FOLDER>.md for an image folder (PNG/JPEG/TIFF + labels CSV)")
    ci.add_argument("folder")
    ci.add_argument("--csv", default="labels.csv", help="labels CSV inside the folder (absent: class sub-folders)")
    ci.add_argument("--file-column", default="file")
    ci.add_argument("--label-column", default="label")
    ci.add_argument("--split-column", default="split", help="used when the CSV has it; else a seeded split")
    ci.add_argument("--size", type=int, action="append",
                    help="image size(s) to register, 8 to 1024 px (repeatable; default 28)")
    ci.add_argument("--resize", default="none", choices=["none", "stretch", "pad", "crop"])
    ci.add_argument("--channels", type=int, default=0, choices=[0, 1, 3], help="0: as stored (must not be mixed)")
    ci.add_argument("--val-fraction", type=float, default=0.1)
    ci.add_argument("--test-fraction", type=float, default=0.2)
    ci.add_argument("--seed", type=int, default=0)
    ci.add_argument("--on-error", default="skip", choices=["skip", "raise"])
    ci.add_argument("--name")
    ci.add_argument("--modality")
    ci.add_argument("--license")
    ci.add_argument("--force", action="store_true", help="replace an existing card")
    ci.add_argument("--orientation", choices=["free", "fixed"],
                    help="do mirror flips and 90° turns preserve the labels? free = yes, fixed = no "
                         "(asked when omitted on a terminal; otherwise written as fixed, not stated)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "cards":
            cmd_cards(args)
            return 0
        if args.command == "params":
            from ..core.params import help_text
            print(help_text(args.stage))
            return 0
        if args.command == "report":
            print(cmd_report(args))
            return 0
        if args.command == "sweep":
            return cmd_sweep(args)
        if args.command in ("fetch", "ingest", "card", "review", "agreement"):
            {"fetch": cmd_fetch, "ingest": cmd_ingest, "card": cmd_card_init, "review": cmd_review,
             "agreement": cmd_agreement}[args.command](args)
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
