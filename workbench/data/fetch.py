"""``workbench fetch FLAG [--size S]``: download an official MedMNIST file named by its data card.

The URL and md5 come from the card's ``files`` entry. Bytes go to ``<file>.part`` beside the
target; an interrupted transfer resumes with an HTTP ``Range`` request (automatically up to
``retries`` times, and on the next run of the same command); the finished file is md5-checked and
only then renamed to its final name (``os.replace``, atomic on one file system). A file whose md5
does not match is deleted and is an error, so nothing corrupt ever sits under the final name; an
existing file with the wrong md5 is never overwritten.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from .. import __version__
from . import cards as _cards
from ..core.errors import WorkbenchError

CHUNK = 1 << 16


class _Interrupted(Exception):
    """The transfer stopped early; the .part file keeps what arrived."""


def _md5(path: Path) -> str:
    from .loaders import file_md5
    return file_md5(path)


def _download(url: str, part: Path, timeout: float, progress: bool) -> None:
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"workbench/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:   # nothing left to send: the .part is complete (the md5 decides)
            return
        if e.code >= 500 or e.code == 429:
            raise _Interrupted(f"HTTP {e.code} {e.reason}") from None
        raise WorkbenchError(f"download of {url} failed: HTTP {e.code} {e.reason}; check the card's url") from None
    except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as e:
        raise _Interrupted(str(getattr(e, "reason", e))) from None
    with resp:
        if start and resp.status == 206:
            cr = resp.headers.get("Content-Range", "")
            if not cr.startswith(f"bytes {start}-"):
                raise _Interrupted(f"server answered range {cr!r} to a request from byte {start}")
            mode = "ab"
        else:   # 200: the server ignored the range (or this is a fresh start): begin again
            start, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        bar = None
        if progress:
            from ..core.progress import tqdm
            bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=part.name.removesuffix(".part"))
        done = start
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        block = resp.read(CHUNK)
                    except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as e:
                        raise _Interrupted(f"{type(e).__name__} after {done} bytes") from None
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    if bar is not None:
                        bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        if total is not None and done < total:
            raise _Interrupted(f"connection closed after {done} of {total} bytes")


def fetch(flag: str, size: int = 28, data_dir: Path | None = None, cards_dir: Path | None = None,
          retries: int = 3, timeout: float = 60.0, progress: bool = True, log=print) -> Path:
    """Download the card's file for ``size`` into ``data_dir``; returns its path (see module docstring)."""
    from .loaders import default_cards_dir, default_data_dir
    card = _cards.load_card(flag, Path(cards_dir) if cards_dir else default_cards_dir())
    entry = card.files.get(int(size))
    if entry is None:
        raise WorkbenchError(f"data card {card.name} lists no file of size {size}; sizes: "
                             f"{', '.join(map(str, sorted(card.files)))}")
    url = entry.get("url")
    if not url:
        raise WorkbenchError(f"data card {card.name} gives no download url for size {size} (files[{size}].url)")
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    dest = data_dir / entry["file"]
    part = dest.with_name(dest.name + ".part")
    expected = entry["md5"]
    if dest.exists():
        md5 = _md5(dest)
        if md5 == expected:
            log(f"{dest} is already present (md5 {md5})")
            return dest
        raise WorkbenchError(f"{dest} exists with md5 {md5} but card {card.name} says {expected}: it is never "
                             "overwritten; move it away and fetch again")
    data_dir.mkdir(parents=True, exist_ok=True)
    if part.exists():
        log(f"resuming {part.name} from byte {part.stat().st_size}")
    failures = 0
    while True:
        try:
            _download(url, part, timeout, progress)
            break
        except _Interrupted as e:
            failures += 1
            have = part.stat().st_size if part.exists() else 0
            if failures > retries:
                raise WorkbenchError(
                    f"download of {url} was interrupted ({e}); {have} bytes are kept in {part}: run the same "
                    "command again to resume"
                ) from None
            log(f"interrupted ({e}); resuming from byte {have} (retry {failures} of {retries})")
            time.sleep(min(0.2 * 2 ** failures, 5.0))
    md5 = _md5(part)
    if md5 != expected:
        part.unlink()
        raise WorkbenchError(f"downloaded {entry['file']} has md5 {md5} but card {card.name} says {expected}: "
                             "the file was deleted; fetch again (if it repeats, the server or the card is wrong)")
    os.replace(part, dest)
    log(f"saved {dest} (md5 {md5} verified)")
    return dest
