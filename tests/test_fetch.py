"""Official downloads (against an HTTP server on 127.0.0.1 started here, with Range support) and
image sizes: a 64 px release registered in a temporary card loads through the card and reaches the
model (ResNet-18's stride-2 stem)."""

import hashlib
import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import workbench  # noqa: F401
from workbench import cards, data
from workbench.errors import WorkbenchError
from workbench.fetch import fetch

from conftest import run_cli

FLAG = "fakemnist"


def _fake_release(size: int) -> bytes:
    """A seeded synthetic (not medical) but valid MedMNIST-layout npz: shapes and md5 only."""
    rng = np.random.default_rng(size)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1).astype(np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        srv = self.server
        srv.seen.append(self.headers.get("Range"))
        body, start = srv.payload, 0
        rng = self.headers.get("Range")
        if self.path != f"/{FLAG}_64.npz":
            self.send_error(404)
            return
        if rng and srv.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        rest = body[start:]
        self.send_header("Content-Length", str(len(rest)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if srv.drops:  # drop the connection mid-file after this many bytes
            cut = srv.drops.pop(0)
            self.wfile.write(rest[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(rest)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.payload, srv.drops, srv.seen, srv.honour_range = _fake_release(64), [], [], True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def dirs(tmp_path, server):
    """A temporary cards dir holding a card for the served file, and an empty data dir."""
    cdir, ddir = tmp_path / "cards", tmp_path / "data"
    cdir.mkdir()
    md5 = hashlib.md5(server.payload).hexdigest()
    url = f"http://127.0.0.1:{server.server_address[1]}/{FLAG}_64.npz"
    meta = {"name": FLAG, "pretty_name": "Fake", "version": "1", "license": "CC0-1.0",
            "source": {"url": url, "citation": "none"}, "modality": "synthetic", "task": "binary-class",
            "label_classes": {0: "a", 1: "b"}, "n_channels": 3, "splits": {"train": 12, "val": 4, "test": 6},
            "files": {64: {"file": f"{FLAG}_64.npz", "md5": md5, "url": url},
                      128: {"file": f"{FLAG}_128.npz", "md5": "0" * 32, "url": url.replace("_64", "_128")}}}
    (cdir / f"{FLAG}.md").write_text(cards.render(meta, {"Summary": "Synthetic test data."}, "Fake"))
    return cdir, ddir


def _fetch(dirs, **kw):
    kw.setdefault("progress", False)
    return fetch(FLAG, 64, data_dir=dirs[1], cards_dir=dirs[0], log=kw.pop("log", lambda m: None), **kw)


def test_download_is_verified_renamed_and_loads_through_its_card(server, dirs):
    path = _fetch(dirs, progress=True)
    assert path == dirs[1] / f"{FLAG}_64.npz" and path.read_bytes() == server.payload
    assert not (dirs[1] / f"{FLAG}_64.npz.part").exists()
    ds = data.load_dataset(FLAG, size=64, cards_dir=dirs[0], data_dir=dirs[1])
    assert ds.card.name == FLAG and ds.size == 64 and ds.input_shape == (64, 64, 3)
    msgs = []
    assert _fetch(dirs, log=msgs.append) == path and "already present" in msgs[0]
    assert server.seen == [None]  # the second call did not download again


def test_interrupted_transfer_resumes_with_a_range_request(server, dirs):
    server.drops = [100_000]
    msgs = []
    path = _fetch(dirs, log=msgs.append)
    assert path.read_bytes() == server.payload
    assert server.seen == [None, "bytes=100000-"]
    assert any("resuming from byte 100000" in m for m in msgs)


def test_interrupted_run_keeps_the_part_and_the_next_run_resumes(server, dirs):
    server.drops = [70_000]
    with pytest.raises(WorkbenchError, match=r"interrupted .*70000 bytes are kept in .*\.part: run the same command"):
        _fetch(dirs, retries=0)
    part = dirs[1] / f"{FLAG}_64.npz.part"
    assert part.stat().st_size == 70_000 and not (dirs[1] / f"{FLAG}_64.npz").exists()
    path = _fetch(dirs)
    assert path.read_bytes() == server.payload and not part.exists()
    assert server.seen[-1] == "bytes=70000-"


def test_server_ignoring_range_restarts_from_zero(server, dirs):
    server.honour_range = False
    dirs[1].mkdir()
    (dirs[1] / f"{FLAG}_64.npz.part").write_bytes(b"stale bytes")
    assert _fetch(dirs).read_bytes() == server.payload


def test_corrupted_download_is_an_error_and_leaves_nothing(server, dirs):
    good = server.payload
    server.payload = good[:5000] + bytes([good[5000] ^ 0xFF]) + good[5001:]
    with pytest.raises(WorkbenchError, match=r"has md5 [0-9a-f]{32} but card fakemnist says .*was deleted"):
        _fetch(dirs)
    assert sorted(p.name for p in dirs[1].iterdir()) == []


def test_existing_wrong_file_is_never_overwritten(server, dirs):
    dirs[1].mkdir()
    (dirs[1] / f"{FLAG}_64.npz").write_bytes(b"my own file")
    with pytest.raises(WorkbenchError, match="never overwritten"):
        _fetch(dirs)
    assert (dirs[1] / f"{FLAG}_64.npz").read_bytes() == b"my own file" and server.seen == []


def test_http_error_and_unknown_size(server, dirs):
    with pytest.raises(WorkbenchError, match="HTTP 404"):
        fetch(FLAG, 128, data_dir=dirs[1], cards_dir=dirs[0], progress=False, log=lambda m: None)
    with pytest.raises(WorkbenchError, match="lists no file of size 224; sizes: 64, 128"):
        fetch(FLAG, 224, data_dir=dirs[1], cards_dir=dirs[0], progress=False)


def test_cli_fetch(server, dirs):
    proc = run_cli("fetch", FLAG, "--size", "64", "--data-dir", str(dirs[1]), "--cards-dir", str(dirs[0]), "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(dirs[1] / f"{FLAG}_64.npz")
    bad = run_cli("fetch", "nosuchmnist", "--data-dir", str(dirs[1]), "--cards-dir", str(dirs[0]), "-q")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: no data card named")


# ----------------------------------------------------------------------------- sizes

def test_every_medmnist_card_offers_every_size_with_url_and_md5():
    for card in cards.all_cards():
        assert sorted(card.files) == [28, 64, 128, 224], card.name
        for size, entry in card.files.items():
            assert entry["url"].startswith("https://zenodo.org/records/") and entry["file"].endswith(".npz")


@pytest.mark.parametrize("size", [28, 64, 128, 224])
def test_missing_card_file_points_to_fetch(tmp_path, size):
    for card in cards.all_cards():
        with pytest.raises(WorkbenchError, match=f"run 'workbench fetch {card.name} --size {size}'"):
            data.resolve(card.name, size, data_dir=tmp_path)


def test_size_flows_from_train_params_into_the_model(server, dirs, monkeypatch):
    from workbench import params, train
    _fetch(dirs)
    monkeypatch.setenv("WORKBENCH_CARDS_DIR", str(dirs[0]))
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(dirs[1]))
    tp = params.make("train", {"dataset": FLAG, "size": 64, "model": "resnet18", "width": 4})
    ds, _ = train.load_data(tp)
    assert ds.input_shape == (64, 64, 3) and ds.md5 == hashlib.md5(server.payload).hexdigest()
    model = train.build_model(tp, ds)
    assert model.input_shape == (None, 64, 64, 3)
    assert model.get_layer("stem_conv").strides == (2, 2)  # stride-2 stem from 64 px
    with pytest.raises(WorkbenchError, match="has md5 .* but data card fakemnist says 0{32} for size 128"):
        (dirs[1] / f"{FLAG}_128.npz").write_bytes(server.payload)
        train.load_data(params.make("train", {"dataset": FLAG, "size": 128}))
