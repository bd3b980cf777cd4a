"""Several annotators on a real annotated pool (the pipeline's test split): the command line's
``workbench review import`` and ``workbench agreement``, adjudication, and the export's consensus."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from workbench.errors import WorkbenchError

pytestmark = pytest.mark.slow


@pytest.fixture()
def pool(pipeline_run, tmp_path):
    from workbench import runs
    run = tmp_path / "run"
    shutil.copytree(pipeline_run["dir"], run)
    return runs.pool_dirs(run)[0]


def _cert(pool, n=8, seed=5):
    table = pd.read_csv(pool / "annotations.csv", dtype={"id": str})
    ids = table["id"].sample(n, random_state=seed).tolist()
    pd.DataFrame({"id": ids}).to_csv(pool / "certification_queue.csv", index=False)
    return ids, table.set_index("id")


def test_import_agreement_adjudication_and_export_consensus(pool, tmp_path):
    from workbench import annotate, widgets
    from workbench.review import pool_decisions
    ids, table = _cert(pool)
    from workbench import runload
    names = runload.load(pool.parent.parent).class_names
    # ana labels the sample in the widget, blind
    w = widgets.review_run(pool, annotator="ana", queue="certification", headless=False)
    ana = [0, 1, 2, 3, 4, 5, 6, 7]
    for c in ana:
        w.keys.value = str(c + 1)
    ana_log = w.session.log_path.read_bytes()
    # the second lab labelled elsewhere: a CSV of class names and indices
    csv = tmp_path / "lab2.csv"
    ben = [0, 1, 2, 3, 4, 5, 7, 6]                                     # disagrees on the last two
    pd.DataFrame({"id": ids, "label": [names[c] if k % 2 else str(c) for k, c in enumerate(ben)]}).to_csv(csv, index=False)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"id": [ids[0], "nope:1"], "label": [1, 2]}).to_csv(bad, index=False)
    proc = run_cli("review", "import", str(pool), "--annotator", "ben", str(bad))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "'nope:1' is not an item" in proc.stderr
    pd.DataFrame({"id": [ids[0]], "label": ["giraffe"]}).to_csv(bad, index=False)
    proc = run_cli("review", "import", str(pool), "--annotator", "ben", str(bad))
    assert proc.returncode == 2 and "'giraffe' is neither a class name nor a class index" in proc.stderr
    assert not (pool / "review" / "annotators" / "ben.jsonl").exists()          # nothing written
    proc = run_cli("review", "import", str(pool), "--annotator", "ben", str(csv))
    assert proc.returncode == 0, proc.stderr
    assert "8 label(s) imported for ben (8 of them blind items)" in proc.stdout
    again = run_cli("review", "import", str(pool), "--annotator", "ben", str(csv))   # idempotent
    assert again.returncode == 0 and "0 label(s) imported" in again.stdout and "8 already there" in again.stdout
    pd.DataFrame({"id": [ids[0]], "label": [5]}).to_csv(bad, index=False)
    clash = run_cli("review", "import", str(pool), "--annotator", "ben", str(bad))
    assert clash.returncode == 2 and "already decided 1 of these item(s) otherwise" in clash.stderr
    assert (pool / "review" / "annotators" / "ana.jsonl").read_bytes() == ana_log   # ana's log untouched
    got = {n: {i: d.label for i, d in decs.items()} for n, decs in pool_decisions(pool / "review").items()}
    assert got == {"ana": dict(zip(ids, ana)), "ben": dict(zip(ids, ben))}
    assert all(d.origin == "import:lab2.csv" and d.blind for d in pool_decisions(pool / "review")["ben"].values())

    # agreement from the command line: the table, agreement.json and its hand-checkable numbers
    proc = run_cli("agreement", str(pool), "--bootstrap", "200")
    assert proc.returncode == 0, proc.stderr
    assert "Cohen's kappa ana / ben" in proc.stdout and "Fleiss' kappa" in proc.stdout
    doc = json.loads((pool / "agreement.json").read_text())
    pair = doc["pairwise"][0]
    assert pair["n_items"] == 8 and pair["percent_agreement"] == 0.75
    # 8 classes, one item each for ana; ben swaps 6 and 7: p_o = 6/8, p_e = 8 * (1/8)^2 = 1/8 -> (0.75 - 0.125)/0.875
    assert pair["cohen_kappa"] == pytest.approx(0.625 / 0.875, abs=1e-4)
    assert set(doc["model_vs"]["annotators"]) == {"ana", "ben"}
    assert doc["model_vs"]["annotators"]["ben"]["blind"]["n_items"] == 8
    cons = pd.read_csv(pool / "consensus.csv", dtype={"id": str}).set_index("id")
    assert len(cons) == 8 and (cons["num_annotations"] == 2).all()
    adj = pd.read_csv(pool / "adjudication_queue.csv", dtype={"id": str})
    assert set(ids[6:]) <= set(adj["id"])                                # the two disagreements
    # a third reader adjudicates, blind; ana already read them all, so her adjudication queue is done
    assert annotate.open_review(pool, annotator="ana", queue="adjudication").session.done
    cleo = annotate.open_review(pool, annotator="cleo", queue="adjudication").session
    assert set(cleo.queue) == set(adj["id"]) and all(cleo.is_blind(i) for i in cleo.queue)
    with pytest.raises(WorkbenchError, match="blind"):
        cleo.accept()
    for item in cleo.queue:
        cleo.label(6 if item == ids[6] else 7 if item == ids[7] else 0)
    # the export, from ben's widget: the consensus of all three
    w = widgets.review_run(pool, annotator="ben", headless=False, overlay=None)
    w.export_dir = tmp_path / "export"
    out = w.export()
    df = pd.read_csv(out["csv"], dtype={"id": str}).set_index("id")
    row = df.loc[ids[6]]
    assert row["label"] == 6 and row["label_source"] == "consensus" and row["num_annotations"] == 3
    assert row["annotator"] == "ana;ben;cleo" and 0 <= row["consensus_quality"] <= 1
    assert df.loc[ids[0], "label"] == 0 and df.loc[ids[0], "num_annotations"] == 2
    coco = json.loads(open(out["coco"]).read())
    idx = int(table.loc[ids[6], "index"])
    a = next(x for x in coco["annotations"] if x["image_id"] == idx)
    assert a["category_id"] == 6 and a["num_annotations"] == 3 and a["source"] == "consensus"
    with np.load(out["npz"], allow_pickle=False) as z:
        k = z["ids"].tolist().index(ids[6])
        assert z["labels"][k] == 6 and z["num_annotations"][k] == 3 and 0 <= z["consensus_quality"][k] <= 1
        assert "consensus" in set(z["label_source"].tolist())


def test_blind_overlap_first_for_everyone_then_the_queue_is_shared(pool):
    from workbench import annotate
    ap = json.loads((pool / "params" / "annotate.json").read_text())
    (pool / "params" / "annotate.json").write_text(json.dumps({**ap, "overlap": 0.05}))
    n_pool = len(pd.read_csv(pool / "annotations.csv"))
    ana = annotate.open_review(pool, annotator="ana")
    k = round(0.05 * n_pool)
    first = ana.session.queue[:k]
    assert len(ana.overlap) == k and first == list(ana.overlap) and all(ana.session.is_blind(i) for i in first)
    assert not ana.session.is_blind(ana.session.queue[k]) and ana.queue["blind"].tolist()[:k + 1] == [True] * k + [False]
    for _ in range(k + 2):                              # the overlap, then two items of the ranked queue
        s = ana.session
        s.label(1) if s.is_blind() else s.accept()
    taken = ana.session.queue[k:k + 2]
    ben = annotate.open_review(pool, annotator="ben")
    assert ben.session.queue[:k] == first               # the same blind items, in the same order
    assert not set(taken) & set(ben.session.queue)      # what ana labelled of the rest is not read twice
    assert not ben.session.decisions                    # and ben sees nothing of ana's labels


def test_a_pool_reviewed_before_per_annotator_logs_keeps_opening(pool):
    """review/decisions.jsonl (one log per pool, earlier versions): opened without a name as before, resumed by
    the annotator who wrote it, read for everyone else's queue and for agreement."""
    from workbench import annotate
    from workbench.agreement import pool_annotations
    old = annotate.open_review(pool)                                    # no name: the pool's single log, as before
    assert old.session.log_path == pool / "review" / "decisions.jsonl" and not old.session.owner
    old.session.annotator = "olga"
    old.session.accept()
    old.session.label(2)
    done = list(old.session.decisions)
    again = annotate.open_review(pool, annotator="olga")                # olga resumes her log
    assert again.session.log_path == old.session.log_path and list(again.session.decisions) == done
    assert again.session.position == 2
    new = annotate.open_review(pool, annotator="nina")                  # nina: her own log, olga's items left out
    assert new.session.log_path.name == "nina.jsonl" and set(done).isdisjoint(new.session.queue)
    ann, _ = pool_annotations(pool)
    assert ann.annotators == ["olga"] and sorted(ann.items) == sorted(done)
