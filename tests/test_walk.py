"""workbench.walk: the one folder walker (folder pools, the PHI registry, image folders, DICOM ingest, cache
fingerprints, the PHI audit all list files through it)."""

import os
import shutil

import pytest

from workbench import walk


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "a" / "x.png").write_bytes(b"1")
    (root / "a" / "b" / "y.PNG").write_bytes(b"2")
    (root / "a" / ".DS_Store").write_bytes(b"3")
    (root / ".hidden" / "z.png").write_bytes(b"4")
    (root / "notes.txt").write_text("5")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.png").write_bytes(b"6")
    os.symlink(outside, root / "linked")                 # a patient folder that is a link
    os.symlink(root / "a", root / "a" / "b" / "up")      # a cycle
    os.symlink(outside, root / "again")                  # the same real folder twice
    return root


def test_follows_linked_folders_once_skips_hidden_and_sorts(tree):
    rel = walk.relative(tree)
    assert rel == sorted(rel)
    assert "a/x.png" in rel and "a/b/y.PNG" in rel and "notes.txt" in rel
    assert sum(r.endswith("w.png") for r in rel) == 1          # one of the two links to one folder
    assert not any(".hidden" in r or ".DS_Store" in r for r in rel)
    assert not any("/up/" in r for r in rel)                     # the cycle is not entered
    assert walk.relative(tree, suffixes=[".png"]) == [r for r in rel if r.lower().endswith(".png")]
    assert {"a/.DS_Store", ".hidden/z.png"} <= set(walk.relative(tree, hidden=True))


def test_every_listing_agrees_on_a_linked_dicom_export(tmp_path):
    """The PHI registry searched exactly the files the folder pool annotates: a DICOM under a linked patient folder
    was annotated but its header values were never searched for (Path.rglob does not enter links on 3.11)."""
    from pydicom.data import get_testdata_file

    from workbench import cache, imagefolder, pools
    export = tmp_path / "export"
    patient = tmp_path / "elsewhere" / "patient1"
    patient.mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), patient / "IM0001.dcm")
    export.mkdir()
    os.symlink(patient, export / "P1")
    pool = pools.open_pool(str(export))
    assert pool._list() == ["P1/IM0001.dcm"]
    registry = pools.phi_registry(str(export))
    assert registry is not None and len(registry) > 0           # its header values are searched for
    assert imagefolder._list_images(export) == [] and walk.relative(export) == ["P1/IM0001.dcm"]
    before = cache.fingerprint(export)
    (patient / "IM0001.dcm").write_bytes((patient / "IM0001.dcm").read_bytes() + b"\0")
    assert cache.fingerprint(export) != before                  # the cache sees a change behind the link
