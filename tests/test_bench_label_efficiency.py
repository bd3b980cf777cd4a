"""bench/label_efficiency.py bookkeeping (the stages it calls are tested in test_semisup and test_pretrain): one row
per (dataset, fraction, method, seed), a row done before is skipped (resumable), the semi-supervised methods do not
apply at 100 %, mean ± sd over seeds, the goals, the anchors from the data cards, and the cells not run listed."""

import json

import pytest

from bench import label_efficiency as le


@pytest.fixture
def fake(monkeypatch):
    calls = []

    def run(dataset, fraction, method, seed, recipe, env, quick=False):
        calls.append((dataset, fraction, method, seed))
        acc = {"supervised": 0.80, "semi": 0.90, "pretrain": 0.78, "pretrain+semi": 0.91}[method] + 0.01 * seed
        return {"dataset": dataset, "fraction": fraction, "method": method, "seed": seed, "recipe": recipe,
                "labelled_images": int(11959 * fraction), "test_acc": acc, "test_auc": 0.97, "val_acc": acc,
                "train_seconds": 100.0, "wall_seconds": 150.0, "pool_mask_rate_last_epoch": 0.8 if "semi" in method else None,
                "pseudo_label_acc_last_epoch": 0.95 if "semi" in method else None}
    monkeypatch.setattr(le, "train_and_evaluate", run)
    return calls


def test_rows_resume_and_the_table_says_what_was_not_run(tmp_path, fake):
    out = tmp_path / "le.json"
    args = ["--datasets", "bloodmnist", "--fractions", "0.01,1", "--methods", "supervised,semi,pretrain", "--out", str(out)]
    assert le.main([*args, "--seeds", "0"]) == 0
    # 100 %: nothing is left unlabelled, so no semi-supervised run there
    assert fake == [("bloodmnist", 0.01, "supervised", 0), ("bloodmnist", 0.01, "semi", 0),
                    ("bloodmnist", 0.01, "pretrain", 0), ("bloodmnist", 1.0, "supervised", 0),
                    ("bloodmnist", 1.0, "pretrain", 0)]
    fake.clear()
    assert le.main([*args, "--seeds", "0,1"]) == 0                       # resumes: seed 0 is skipped
    assert {c[3] for c in fake} == {1} and len(fake) == 5
    doc = json.loads(out.read_text())
    assert len(doc["rows"]) == 10
    agg = le.aggregate(doc["rows"])
    e = agg[("bloodmnist", 0.01, "semi")]
    assert e["n"] == 2 and e["test_acc_mean"] == pytest.approx(0.905) and e["test_acc_sd"] == pytest.approx(0.00707, abs=1e-4)
    md = out.with_suffix(".md").read_text()
    assert "| 1% (119) | semi | 2 | 0.9050 ± 0.0071 |" in md
    assert "**Worse than supervised on test ACC:** pretrain at 1%" in md               # said, not hidden
    assert "bloodmnist 1% labels, semi: test ACC 0.9050 (n = 2) against the goal ≥ 0.93: **not met**" in md
    assert "ResNet-18 (28)" in md and "0.9580" in md and "Sohn et al." in md           # anchors: cards and paper
    assert "- bloodmnist 0.01 semi: seed 2" in md and "- breastmnist 0.05 pretrain+semi: seeds 0, 1, 2" in md
    assert "bloodmnist 1 semi" not in md                                          # not applicable, not "missing"


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    assert le.main(["--methods", "magic", "--out", str(tmp_path / "x.json")]) == 2
    assert le.main(["--fractions", "0,1", "--out", str(tmp_path / "x.json")]) == 2
    assert le.main(["--seeds", "a", "--out", str(tmp_path / "x.json")]) == 2
    assert "error:" in capsys.readouterr().err
