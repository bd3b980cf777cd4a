"""PHI guard for DICOM: de-identification, pseudonyms, burned-in annotations, and an output audit.

De-identification applies the DICOM PS3.15 Annex E *Basic Application Level Confidentiality
Profile* (Table E.1-1) with `dicom-anonymizer` (KitwareMedical, BSD-3-Clause), whose action tables
are generated from the standard (``PROFILE_TABLES`` names the edition): every attribute of the
table is replaced with a dummy (D), emptied (Z), removed (X) or given a new UID (U; one new UID per
original UID within an ingest, so references stay consistent), and all private tags are removed.

On top of the profile the workbench
* keeps *pseudonyms* for patient, study and series (``P0001``, ``S0001``, ``R0001`` in order of
  first appearance), derived in memory from the original values and never from anything written,
  so images of one patient stay together (the split is made by patient) without revealing who;
* excludes images whose ``BurnedInAnnotation`` is ``YES`` unless explicitly allowed (text burned into
  the pixels cannot be removed by header de-identification);
* audits every file it writes: each value the profile removed or replaced (names, IDs, dates,
  UIDs, institution, free text …) is searched for in the outputs, and any hit is an error.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import WorkbenchError

PROFILE = "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile"
PROFILE_TABLES = "dicomfields_2026c"   # the dicom-anonymizer table generated from DICOM 2026c
# VRs whose values can identify someone when they are removed or replaced by the profile. Code
# strings (CS), ages (AS), numbers (DS, IS, binary) and times of day (TM) are not searched: they
# are replaced too, but short generic values like "M", "000Y" or "0.0" would match anywhere.
AUDIT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "AE", "DA", "DT", "UI", "UR"}
MIN_TEXT_LEN = 4      # shortest value searched in text outputs
MIN_BINARY_LEN = 8    # shortest value searched inside array data (random pixel bytes match short strings)
# an all-digit value (an ID) shorter than this is not searched: row indices and counts in the
# manifest would match it; digit values are matched as whole numbers, never inside longer ones
MIN_DIGITS_LEN = 6
_MD5_TOKEN = re.compile(rb"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")  # our own file hashes: one-way, no PHI
# figures inlined in HTML reports and notebooks: compressed pixels in base64, where short values occur by
# chance; their pixels are the pool's own images (header text is never drawn into them)
_DATA_URI = re.compile(rb"data:image/[a-z+]+;base64,[A-Za-z0-9+/=\s\\n]+|\"image/png\":\s*\"[A-Za-z0-9+/=\\n]+\"")
# name components that are placeholders, not names ("Test^Patient", "Lastname^Firstname"): searching
# for them would flag the workbench's own words ("patient") in every card
GENERIC_NAME_PARTS = {"patient", "test", "anonymous", "anonymized", "anonymised", "unknown", "none", "name",
                      "lastname", "firstname", "family", "given", "doctor", "physician", "phantom"}


def _snapshot(ds) -> set[tuple[str, str, str]]:
    """(keyword, VR, value) of every element, nested sequences included (values as text)."""
    out: set[tuple[str, str, str]] = set()

    def visit(_ds, elem):
        if elem.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN") or elem.value is None:
            return
        values = elem.value if isinstance(elem.value, (list, tuple)) or type(elem.value).__name__ == "MultiValue" \
            else [elem.value]
        for v in values:
            out.add((elem.keyword or str(elem.tag), elem.VR, str(v)))
    ds.walk(visit)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        meta.walk(visit)
    return out


def _searchable(keyword: str, vr: str, value: str) -> list[tuple[str, bool]]:
    """The strings to look for (and whether case-insensitively) for one removed/replaced value."""
    from pydicom.uid import UID
    value = value.strip()
    if vr not in AUDIT_VRS or len(value) < MIN_TEXT_LEN:
        return []
    if vr == "UI" and UID(value).name != value:   # a standard UID (SOP class, transfer syntax): not PHI
        return []
    if value.isdigit() and len(value) < MIN_DIGITS_LEN:
        return []
    if not any(ch.isalnum() for ch in value) or len(set(value)) == 1:
        # placeholders ("----", "000000000"): they identify no one, and appear in every table or image by chance
        return []
    found = [(value, False)]
    if vr == "PN":  # components of a person name, e.g. family and given names
        for part in value.replace("=", "^").split("^"):
            part = part.strip()
            if len(part) >= MIN_TEXT_LEN and part != value and part.lower() not in GENERIC_NAME_PARTS:
                found.append((part, True))
    return found


@dataclass
class PHIRegistry:
    """The original values the profile removed or replaced, with the attribute each came from."""
    values: dict[tuple[str, bool], str] = field(default_factory=dict)

    def add(self, before: set, after: set) -> None:
        for keyword, vr, value in before - after:
            for s in _searchable(keyword, vr, value):
                self.values.setdefault(s, keyword)

    def __len__(self) -> int:
        return len(self.values)


class Pseudonyms:
    """Consistent replacements within one ingest: the same original value → the same pseudonym."""

    def __init__(self):
        self._maps: dict[str, dict[str, str]] = {}

    def get(self, prefix: str, original) -> str:
        m = self._maps.setdefault(prefix, {})
        key = str(original) if original not in (None, "") else "(missing)"
        if key not in m:
            m[key] = f"{prefix}{len(m) + 1:04d}"
        return m[key]


def burned_in(ds) -> bool:
    return str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES"


def deidentify(ds, registry: PHIRegistry) -> None:
    """Apply the Basic profile to ``ds`` in place (private tags removed) and register what changed."""
    from dicomanonymizer import simpledicomanonymizer as sda
    before = _snapshot(ds)
    try:
        sda.anonymize_dataset(ds, delete_private_tags=True,
                              base_rules_gen=lambda: sda.initialize_actions(PROFILE_TABLES))
    except (NotImplementedError, ValueError, KeyError, TypeError) as e:
        raise WorkbenchError(f"de-identification failed ({type(e).__name__}: {e})") from None
    after = _snapshot(ds)
    registry.add(before, after)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = f"{PROFILE} (dicom-anonymizer {PROFILE_TABLES}); workbench pseudonyms"


def reset_uid_map() -> None:
    """Start a fresh original→new UID map (one per ingest)."""
    from dicomanonymizer import simpledicomanonymizer as sda
    sda.dictionary.clear()


def _blobs(path: Path):
    """(name, bytes, is_array_data) of a file; zip archives (npz, .keras) are searched member by member."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                yield f"{path}:{info.filename}", info.filename.encode(), False
                yield f"{path}:{info.filename}", z.read(info), info.filename.endswith(".npy")
    else:
        yield str(path), Path(path).read_bytes(), False


def audit(paths, registry: PHIRegistry) -> list[tuple[str, str]]:
    """Every (file, attribute) where an original identifying value appears in one of ``paths``
    (files, or folders searched recursively)."""
    from ..core import walk
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        files.extend(walk.files(p, hidden=True) if p.is_dir() else [p])   # everything, hidden files too
    hits = []
    for f in files:
        for name, blob, is_array in _blobs(f):
            if not is_array:
                blob = _DATA_URI.sub(b"-", _MD5_TOKEN.sub(b"-", blob))
            lower = None
            for (value, ci), keyword in registry.values.items():
                if is_array and len(value) < MIN_BINARY_LEN:
                    continue
                needle = value.encode("utf-8", "ignore")
                if value.isdigit():
                    found = re.search(rb"(?<![0-9])" + needle + rb"(?![0-9])", blob) is not None
                elif ci:
                    lower = blob.lower() if lower is None else lower
                    found = needle.lower() in lower
                else:
                    found = needle in blob
                if found:
                    hits.append((name, keyword))
    return sorted(set(hits))


def find_values(text: str, registry: PHIRegistry) -> list[str]:
    """The attributes (sorted) whose original identifying values appear in ``text``, matched exactly as
    ``audit`` matches them in a text file (digit values as whole numbers, person-name parts
    case-insensitively, our own md5 tokens ignored). ``workbench.pools`` uses it to keep names that
    folder and file names carry out of item ids, reasons and pool names."""
    blob = _MD5_TOKEN.sub(b"-", str(text).encode("utf-8", "ignore"))
    lower = blob.lower()
    found = set()
    for (value, ci), keyword in registry.values.items():
        needle = value.encode("utf-8", "ignore")
        if value.isdigit():
            hit = re.search(rb"(?<![0-9])" + re.escape(needle) + rb"(?![0-9])", blob) is not None
        else:
            hit = needle.lower() in lower if ci else needle in blob
        if hit:
            found.add(keyword)
    return sorted(found)


def register_all(ds, registry: PHIRegistry) -> None:
    """Register every searchable value of ``ds`` (a freshly read, unmodified data set) as identifying:
    for a file whose de-identification failed, so that its values are still searched for in outputs."""
    registry.add(_snapshot(ds), set())
