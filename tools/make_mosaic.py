"""Write a multi-label mosaic dataset (npz + card) from a single-label dataset (workbench.mosaic).

    .venv/bin/python tools/make_mosaic.py --source bloodmnist --out data/bloodmosaic.npz \
        --train 2000 --val 300 --test 600 --seed 0

Each image is a 2x2 (``--grid``) mosaic of real cells from one split of ``--source`` (a data card name
or a path); its labels are the set of classes shown, exact by construction. The card ``<out>.md`` is
written beside the npz. Prints the npz path, its md5 and the per-split counts.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workbench.data import file_md5, load_dataset  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from workbench.mosaic import write_mosaic_dataset  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="bloodmnist", help="single-label dataset: card name or path (default bloodmnist)")
    ap.add_argument("--out", required=True, help="output .npz (its card <stem>.md is written beside it)")
    ap.add_argument("--train", type=int, required=True, help="mosaics in train")
    ap.add_argument("--val", type=int, required=True, help="mosaics in val")
    ap.add_argument("--test", type=int, required=True, help="mosaics in test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grid", type=int, default=2, help="tiles per side (default 2: four cells per mosaic)")
    ap.add_argument("--force", action="store_true", help="replace an existing output")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        if (out.exists() or out.with_suffix(".md").exists()) and not args.force:
            raise WorkbenchError(f"{out} or its card exists already: choose another --out or pass --force")
        ds = load_dataset(args.source)
        path = write_mosaic_dataset(ds, out, {"train": args.train, "val": args.val, "test": args.test},
                                    args.seed, args.grid)
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{path} md5 {file_md5(path)} ({args.train}/{args.val}/{args.test} mosaics); card {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
