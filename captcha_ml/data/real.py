"""Real labeled images: fetch (download + checksum), folders and manifests, deterministic split.

A labeled folder holds images named ``<label>.png`` or ``<label>_<anything>.png``; a manifest is
a CSV (or tab-separated) file whose header names an image column and a label column (``path,label``
as we write them, or the names other captcha sets use: ``filename,text``, ``image,solution``...)
and whose relative paths are resolved against the manifest's folder.
Bad input stops with a message naming the file and the fix, or, with ``skip_bad``, is skipped
and reported in ``LabeledSet.skipped``.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from PIL import Image

from captcha_ml import files
from captcha_ml.charset import Charset
from captcha_ml.data.transforms import ImageError, load_image

log = logging.getLogger(__name__)

REAL_URL = "https://github.com/AakashKumarNain/CaptchaCracker/raw/master/captcha_images_v2.zip"
REAL_DIGEST = "69b70dcc3b482122df31325af8cea103eb4fd5308f240c444b3b6e70a7b9cbc8"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
# Documentation that may sit next to images (e.g. SOURCE.md); ignored, never an error.
IGNORED_SUFFIXES = frozenset({".md", ".txt", ".csv", ".tsv", ".json", ".yaml", ".yml"})
SKIP_HINT = "fix or remove it, or pass --skip-bad to skip bad files and report them"
MANIFEST_SUFFIXES = frozenset({".csv", ".tsv"})
# Header names a manifest's image and label columns may have (any case), ours first: labeled
# captcha sets ship their labels as `filename,text`, `image,solution`, `file,label` and so on.
PATH_COLUMNS = ("path", "file", "filename", "file_name", "fname", "image", "image_path",
                "image_name", "img", "name")
LABEL_COLUMNS = ("label", "labels", "text", "solution", "answer", "captcha", "captcha_text",
                 "code", "value")


class DataError(ValueError):
    """Data that cannot be used as given: missing, corrupt, mislabeled or failing a checksum."""


@dataclass
class LabeledSet:
    """Validated ``(path, label)`` samples, the files skipped with why, and the charset used."""

    samples: list[tuple[str, str]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    charset: Charset | None = None

    def __len__(self) -> int:
        return len(self.samples)


# ----------------------------------------------------------------------------- checksums

def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def image_files(folder: Path) -> list[Path]:
    """The folder's image files (by suffix; hidden files left out), sorted."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def content_digest(folder: str | Path) -> str:
    """sha256 over the sorted lines ``"<filename> <sha256 of file>"`` of the folder's images."""
    lines = sorted(f"{p.name} {file_sha256(p)}" for p in image_files(Path(folder)))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# ----------------------------------------------------------------------------- fetch

def fetch(dest: str | Path, source: str | None = None,
          expected_digest: str = REAL_DIGEST) -> Path:
    """Get the real set into ``dest`` from its public URL, or from a local folder, zip or URL.

    The files are staged in a temporary folder next to ``dest`` and renamed to ``dest`` only
    after their content digest matches, so ``dest`` is either absent or complete and verified.
    """
    dest = Path(dest)
    if dest.exists():
        if dest.is_dir() and content_digest(dest) == expected_digest:
            log.info("%s already holds a verified copy (sha256 %s)", dest, expected_digest[:12])
            return dest
        raise DataError(f"{dest} exists but does not hold a verified copy of the data; "
                        "delete it or choose another --dest")
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        stage = _stage(source or REAL_URL, work)
        digest = content_digest(stage)
        if digest != expected_digest:
            raise DataError(f"{source or REAL_URL}: content digest {digest} does not match the "
                            f"expected {expected_digest}; the source is not the expected data set "
                            "(get a fresh copy, or pass the right --from)")
        os.rename(stage, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("fetched %d images into %s (sha256 verified)", len(image_files(dest)), dest)
    return dest


def _stage(source: str, work: Path) -> Path:
    """Put the source's images, flat, into ``work/images`` and return that folder."""
    src = Path(source)
    if source.startswith(("http://", "https://")):
        src = _download(source, work / "download.zip")
    elif not src.exists():
        raise DataError(f"{source}: no such file or folder; pass a folder, a .zip or a URL to --from")
    if src.is_dir():
        found = image_files(src)
    else:
        found = _extract_images(src, work / "extract")
    if not found:
        raise DataError(f"{source}: no images found; expected a folder or zip of PNG captchas")
    stage = work / "images"
    stage.mkdir()
    for p in found:
        if (stage / p.name).exists():
            raise DataError(f"{source}: image name {p.name} occurs twice; expected one flat folder")
        shutil.copyfile(p, stage / p.name)
    return stage


def _download(url: str, target: Path) -> Path:
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            got = 0
            with open(target, "wb") as f, tqdm(total=total or None, unit="B", unit_scale=True,
                                               desc="download", leave=False) as bar:
                for block in iter(lambda: resp.read(1 << 16), b""):
                    f.write(block)
                    got += len(block)
                    bar.update(len(block))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(f"{url}: download failed ({reason}); check the network, or download the "
                        "zip by hand and pass it with --from PATH") from e
    if total and got != total:
        raise DataError(f"{url}: download truncated ({got} of {total} bytes); run fetch again")
    return target


def _extract_images(archive: Path, out: Path) -> list[Path]:
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DataError(f"{archive}: member {bad} is corrupt; download the zip again")
            zf.extractall(out)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise DataError(f"{archive}: not a readable zip ({e}); the file is broken or truncated, "
                        "download it again") from e
    folders = sorted({p.parent for p in out.rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and "__MACOSX" not in p.parts and not p.name.startswith(".")})
    if len(folders) > 1:
        names = ", ".join(str(f.relative_to(out)) for f in folders[:5])
        raise DataError(f"{archive}: images are spread over several folders ({names}); "
                        "expected one folder of captchas")
    return image_files(folders[0]) if folders else []


# ----------------------------------------------------------------------------- readers

_COPY_NUMBER = re.compile(r" \(\d+\)$")


def label_from_name(path: str | Path) -> str:
    """``226md.png`` -> ``226md``; ``226md_0000007.png`` -> ``226md`` (before the first _ or .);
    ``226md (1).png`` -> ``226md`` (the number browsers and file managers give a second copy)."""
    return _COPY_NUMBER.sub("", Path(path).name.split("_", 1)[0].split(".", 1)[0])


def read_folder(path: str | Path, charset: Charset | None = None, min_len: int | None = None,
                max_len: int | None = None, skip_bad: bool = False) -> LabeledSet:
    """Images of a folder, labeled by file name, validated. A manifest in the folder that
    labels its images otherwise stops it (`_check_no_other_labels`)."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; check the path")
    rows, other, manifests = [], [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.suffix.lower() in IGNORED_SUFFIXES:
            if p.suffix.lower() in MANIFEST_SUFFIXES:
                manifests.append(p)
            continue
        (rows if p.suffix.lower() in IMAGE_SUFFIXES else other).append((str(p), label_from_name(p)))
    if not rows and not other:
        kinds = ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
        raise DataError(f"{folder}: no images ({kinds}) in this folder")
    _check_no_other_labels(folder, rows, manifests)
    _check_not_running_numbers(folder, [label for _, label in rows])
    pre_skipped = [(p, f"not an image file (extension {Path(p).suffix or 'none'})") for p, _ in other]
    return _validate(rows, pre_skipped, charset, min_len, max_len, skip_bad)


def _check_no_other_labels(folder: Path, rows: list[tuple[str, str]],
                           manifests: list[Path]) -> None:
    """Stop where one of the folder's ``manifests`` labels some of its images otherwise than
    their file names do (images named ``0001.png`` with their labels in ``labels.csv``):
    reading the folder would train on the file names. A CSV that is no manifest of these
    images is left alone, as is one that agrees with the names."""
    by_name = {Path(p).name: label for p, label in rows}
    for m in manifests:
        try:
            listed = _manifest_rows(m)
        except (DataError, OSError, UnicodeDecodeError, csv.Error):
            continue
        differ = [(q.name, label) for q, label in ((Path(p), label) for p, label in listed)
                  if q.parent == folder and by_name.get(q.name, label) != label]
        if differ:
            name, label = differ[0]
            raise DataError(
                f"{folder}: labels are read from file names, but {m.name} in this folder labels "
                f"{len(differ)} of its images otherwise (e.g. {name}: {label!r} there, "
                f"{by_name[name]!r} by its name); to train on the manifest's labels pass it "
                f"instead of the folder ({m}), or move it out of the folder")


def _check_not_running_numbers(folder: Path, labels: list[str]) -> None:
    """Stop where the file names are running numbers (``0001.png``, ``0002.png``... or
    ``0001_abc12.png``): nine in ten of them one apart is what a counter gives; a digits
    captcha's labels come so only where nearly every label of its length is in the set."""
    numbers = sorted({int(label) for label in labels if label.isdigit()})
    if len(labels) < 10 or len(numbers) < 0.9 * len(labels):
        return
    steps = sum(b - a == 1 for a, b in zip(numbers, numbers[1:]))
    if steps >= 0.9 * (len(numbers) - 1):
        raise DataError(
            f"{folder}: the file names are running numbers ({numbers[0]} to {numbers[-1]}, "
            f"{steps} of {len(numbers) - 1} one apart), not labels; name the files "
            "<label>.png or <label>_<anything>.png, or give the labels in a manifest "
            "(a .csv with the header path,label) and pass that instead")


def read_manifest(csv_path: str | Path, charset: Charset | None = None, min_len: int | None = None,
                  max_len: int | None = None, skip_bad: bool = False) -> LabeledSet:
    """A manifest (CSV or tab-separated, see the module's docstring); relative paths are
    resolved against its folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: no such manifest file; check the path")
    rows = _manifest_rows(csv_path)
    if not rows:
        raise DataError(f"{csv_path}: the manifest lists no images")
    return _validate(rows, [], charset, min_len, max_len, skip_bad)


def _manifest_rows(csv_path: Path) -> list[tuple[str, str]]:
    """A manifest's ``(path, label)`` rows, paths resolved, labels stripped of spaces."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        first = f.readline()
        f.seek(0)
        delimiter = max(",\t;", key=first.count)  # the header's separator
        reader = csv.DictReader(f, delimiter=delimiter)
        fields = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
        path_col = next((fields[c] for c in PATH_COLUMNS if c in fields), None)
        label_col = next((fields[c] for c in LABEL_COLUMNS if c in fields), None)
        if path_col is None or label_col is None:
            raise DataError(
                f"{csv_path}: a manifest needs a header naming its image column "
                f"({', '.join(PATH_COLUMNS[:6])}...) and its label column "
                f"({', '.join(LABEL_COLUMNS[:6])}...), e.g. 'path,label' "
                f"(found {reader.fieldnames})")
        rows = []
        for r in reader:
            path = (r[path_col] or "").strip()
            rows.append(((csv_path.parent / path).as_posix() if not os.path.isabs(path) else path,
                         (r[label_col] or "").strip()))
    return rows


def read_labeled(path: str | Path, charset: Charset | None = None, min_len: int | None = None,
                 max_len: int | None = None, skip_bad: bool = False) -> LabeledSet:
    """A folder of labeled images or a manifest (``.csv`` or ``.tsv``)."""
    p = Path(path)
    if p.suffix.lower() in MANIFEST_SUFFIXES:
        return read_manifest(p, charset, min_len, max_len, skip_bad)
    if not p.exists():
        raise DataError(f"{p}: no such folder or manifest; check the path (or run "
                        "'captcha-ml data fetch' for the real set)")
    return read_folder(p, charset, min_len, max_len, skip_bad)


def _problem(path: str, label: str, charset: Charset | None, min_len: int | None,
             max_len: int | None) -> str | None:
    """Why a sample is bad, or None."""
    if charset is not None and (why := charset.check(label)):
        return f"label {label!r}: {why}"
    if min_len is not None and len(label) < min_len or max_len is not None and len(label) > max_len:
        return f"label {label!r} has length {len(label)}, expected {min_len}..{max_len}"
    try:
        load_image(path)
    except ImageError as e:
        msg = str(e)
        return msg[len(path) + 2:] if msg.startswith(f"{path}: ") else msg
    return None


def _validate(rows: list[tuple[str, str]], skipped: list[tuple[str, str]], charset: Charset | None,
              min_len: int | None, max_len: int | None, skip_bad: bool) -> LabeledSet:
    """Check every sample; stop at the first bad one, or skip and report them all."""
    if skipped and not skip_bad:
        raise DataError(f"{skipped[0][0]}: {skipped[0][1]}; {SKIP_HINT}")
    if charset is None:
        labels = [label for _, label in rows if label]
        charset = Charset.from_labels(labels) if labels else None
    samples = []
    for path, label in rows:
        why = "empty label" if not label else _problem(path, label, charset, min_len, max_len)
        if why is None:
            samples.append((path, charset.normalize(label) if charset else label))
        elif skip_bad:
            skipped.append((path, why))
        else:
            raise DataError(f"{path}: {why}; {SKIP_HINT}")
    if skipped:
        log.warning("skipped %d bad file(s), e.g. %s: %s", len(skipped), *skipped[0])
    if not samples:
        raise DataError("no usable images left after skipping bad files; check the data")
    return LabeledSet(sorted(samples), skipped, charset)


def describe(path: str | Path) -> dict:
    """Counts, charset, label lengths and image sizes of a folder or manifest (bad files skipped)."""
    data = read_labeled(path, skip_bad=True)
    sizes: Counter = Counter()
    for p, _ in data.samples:
        with Image.open(p) as im:
            sizes[f"{im.size[0]}x{im.size[1]}"] += 1
    return {"path": str(path), "images": len(data), "skipped": len(data.skipped),
            "charset": data.charset.symbols if data.charset else "",
            "lengths": dict(sorted(Counter(len(l) for _, l in data.samples).items())),
            "sizes": dict(sizes.most_common()),
            "labels_unique": len({l for _, l in data.samples})}


# ----------------------------------------------------------------------------- split

SPLITS = ("train", "valid", "test")


def split(samples: Iterable[tuple[str, str]], out_dir: str | Path, seed: int = 0,
          test: int = 400, valid: int = 120,
          content: Callable[[str], str] = file_sha256) -> dict[str, Path]:
    """Write train/valid/test manifests; assignment depends only on image content and seed.

    Each distinct content (``content(path)``: by default the sha256 of the file; `fit` hashes
    the pixels, so a re-saved copy counts as the same image) gets the key
    sha256(f"{seed}:{hash}"); groups are ordered by key and fill test, then valid, then train.
    Identical images share a group, so duplicates never straddle splits. Manifest paths are
    absolute and resolved; rows are sorted by path, so a rerun writes byte-identical files.
    """
    groups: dict[str, list[tuple[str, str]]] = {}
    for path, label in samples:
        groups.setdefault(content(path), []).append((str(Path(path).resolve()), label))
    if len(groups) < test + valid + 1:
        raise DataError(f"{len(groups)} distinct images cannot fill test={test} + valid={valid} "
                        f"+ at least 1 train image; need at least {test + valid + 1}, "
                        "or lower --test/--valid")
    order = sorted(groups, key=lambda h: hashlib.sha256(f"{seed}:{h}".encode()).hexdigest())
    parts: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for h in order:
        name = ("test" if len(parts["test"]) < test
                else "valid" if len(parts["valid"]) < valid else "train")
        parts[name].extend(groups[h])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {name: write_manifest(out / f"{name}.csv", sorted(rows)) for name, rows in parts.items()}


def write_manifest(path: str | Path, rows: Iterable[tuple[str, str]]) -> Path:
    """Write a ``path,label`` CSV atomically (`files.write_text`)."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label"])
    writer.writerows(rows)
    return files.write_text(path, buf.getvalue())


def make_splits(source: str | Path, out_dir: str | Path, seed: int = 0, test: int = 400,
                valid: int = 120, skip_bad: bool = False) -> tuple[dict[str, Path], LabeledSet]:
    """Read a folder or manifest, validate it, and split it (what ``data split`` runs)."""
    data = read_labeled(source, skip_bad=skip_bad)
    return split(data.samples, out_dir, seed=seed, test=test, valid=valid), data
