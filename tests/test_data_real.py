"""Real data: fetch with checksum, readers with validation, deterministic split."""

from __future__ import annotations

import functools
import http.server
import random
import shutil
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from captcha_ml.charset import Charset
from captcha_ml.data.real import (REAL_DIGEST, DataError, content_digest, fetch, label_from_name,
                                  read_folder, read_labeled, read_manifest, split, write_manifest)

from conftest import write_png

LABELS = ["abc12", "bcd23", "cde34", "def45", "efa51", "fab12"]


@pytest.fixture
def small_set(tmp_path, make_images) -> tuple[Path, str]:
    folder = make_images(tmp_path / "src", LABELS)
    return folder, content_digest(folder)


def _zip(folder: Path, target: Path, prefix: str = "captcha_images_v2/") -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, prefix + p.name)
        zf.writestr("__MACOSX/._junk.png", b"junk")
    return target


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _Truncating(_Quiet):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"PK\x03\x04" + b"x" * 500)


@pytest.fixture
def http_dir(tmp_path):
    """Serve a folder on 127.0.0.1; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    servers = []

    def start(handler=_Quiet):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                              functools.partial(handler, directory=str(root)))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return root, f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


# ----------------------------------------------------------------------------- fetch

def test_fetch_from_folder_zip_and_http(tmp_path, small_set, http_dir):
    folder, digest = small_set
    assert content_digest(fetch(tmp_path / "a", str(folder), digest)) == digest
    archive = _zip(folder, tmp_path / "set.zip")
    assert sorted(p.name for p in fetch(tmp_path / "b", str(archive), digest).iterdir()) == \
        sorted(f"{n}.png" for n in LABELS)
    root, url = http_dir()
    shutil.copy(archive, root / "set.zip")
    assert content_digest(fetch(tmp_path / "c", f"{url}/set.zip", digest)) == digest
    # Already verified: returned as is.
    assert fetch(tmp_path / "c", "/nonexistent", digest) == tmp_path / "c"


def _nothing_left(dest: Path) -> bool:
    return not dest.exists() and not list(dest.parent.glob(f".{dest.name}.partial-*"))


def test_fetch_digest_mismatch_leaves_nothing(tmp_path, small_set):
    folder, _ = small_set
    dest = tmp_path / "out" / "data"
    with pytest.raises(DataError, match="does not match"):
        fetch(dest, str(folder), "0" * 64)
    assert _nothing_left(dest)


def test_fetch_refuses_truncated_zip(tmp_path, small_set):
    folder, digest = small_set
    archive = _zip(folder, tmp_path / "set.zip")
    cut = tmp_path / "cut.zip"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="not a readable zip"):
        fetch(tmp_path / "dest", str(cut), digest)
    assert _nothing_left(tmp_path / "dest")


def test_fetch_refuses_truncated_download(tmp_path, http_dir):
    _, url = http_dir(_Truncating)
    with pytest.raises(DataError, match=r"download|truncated"):
        fetch(tmp_path / "dest", f"{url}/x.zip", "0" * 64)
    assert _nothing_left(tmp_path / "dest")


def test_fetch_unreachable_url(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=r"download failed.*--from"):
        fetch(tmp_path / "dest", f"http://127.0.0.1:{port}/x.zip")
    assert _nothing_left(tmp_path / "dest")


def test_fetch_refuses_unverified_existing_dest(tmp_path, small_set):
    folder, digest = small_set
    (tmp_path / "dest").mkdir()
    with pytest.raises(DataError, match="delete it"):
        fetch(tmp_path / "dest", str(folder), digest)


def test_fetch_real_folder_verifies_real_digest(tmp_path, real_dir):
    dest = fetch(tmp_path / "real", str(real_dir))
    assert content_digest(dest) == REAL_DIGEST
    assert len(list(dest.glob("*.png"))) == 1040


# ----------------------------------------------------------------------------- readers

def test_label_from_name():
    assert label_from_name("a/226md.png") == "226md"
    assert label_from_name("226md_0000007.png") == "226md"
    assert label_from_name("x3deb.v2.jpg") == "x3deb"
    assert label_from_name("x3deb (2).png") == "x3deb"  # a second download of the same label


def test_read_folder_and_manifest(tmp_path, make_images):
    folder = make_images(tmp_path / "imgs", ["abc12", "abc12_1", "bcd23_0000004"])
    (folder / "SOURCE.md").write_text("docs are ignored")
    data = read_folder(folder)
    assert [lbl for _, lbl in data.samples] == ["abc12", "abc12", "bcd23"]
    assert data.charset.symbols == "123abcd"
    write_manifest(tmp_path / "m.csv", [("imgs/abc12.png", "abc12"),
                                        (str(folder / "bcd23_0000004.png"), "bcd23")])
    via_csv = read_labeled(tmp_path / "m.csv")
    assert [Path(p).name for p, _ in via_csv.samples] == ["abc12.png", "bcd23_0000004.png"]
    assert read_manifest(tmp_path / "m.csv", Charset("abcd123"), 5, 5).samples == via_csv.samples


@pytest.mark.parametrize("text", [
    "filename,text\n{a},abc12\n{b},bcd23\n",  # the names other sets use, any case
    "\ufeffImage;Solution\n{a};abc12\n{b}; bcd23 \n",  # BOM, semicolons, spaces
    "id\tfile\tlabel\n1\t{a}\tabc12\n2\t{b}\tbcd23\n",  # tab-separated, extra columns
])
def test_manifest_headers_of_other_sets(tmp_path, make_images, text):
    folder = make_images(tmp_path / "imgs", ["0001", "0002"])
    manifest = folder / "labels.tsv"
    manifest.write_text(text.format(a="0001.png", b="0002.png"), encoding="utf-8")
    data = read_labeled(manifest)
    assert [(Path(p).name, lbl) for p, lbl in data.samples] == [("0001.png", "abc12"),
                                                               ("0002.png", "bcd23")]


def test_folder_with_a_manifest_that_labels_otherwise(tmp_path, make_images):
    """Images named by index with their labels in a CSV beside them: reading the folder would
    train on the indices, so it stops and says to pass the manifest; a CSV that agrees with
    the names, or is no manifest, changes nothing."""
    folder = make_images(tmp_path / "imgs", ["0001", "0002"])
    (folder / "notes.csv").write_text("run,score\n1,0.5\n")  # not a manifest: ignored
    assert [lbl for _, lbl in read_folder(folder).samples] == ["0001", "0002"]
    (folder / "same.csv").write_text("file,label\n0001.png,0001\n")
    assert [lbl for _, lbl in read_folder(folder).samples] == ["0001", "0002"]
    (folder / "labels.csv").write_text("filename,text\n0001.png,abc12\n0002.png,0002\n")
    with pytest.raises(DataError, match=r"labels\.csv in this folder labels 1 of its images "
                                        r"otherwise \(e\.g\. 0001\.png: 'abc12' there, '0001' by "
                                        r"its name\); .*pass it instead of the folder"):
        read_labeled(folder)
    assert [lbl for _, lbl in read_labeled(folder / "labels.csv").samples] == ["abc12", "0002"]


def test_running_numbers_are_no_labels(tmp_path, make_images):
    """Files numbered by a counter, with or without the label after it, stop with the fix;
    random digit labels (a digits captcha) read as labels."""
    folder = make_images(tmp_path / "numbered", [f"{i:04d}_ab{i % 7}c" for i in range(1, 13)])
    with pytest.raises(DataError, match=r"numbered: the file names are running numbers \(1 to "
                                        r"12, 11 of 11 one apart\), not labels; .*manifest"):
        read_labeled(folder)
    rng = random.Random(0)
    digits = [f"{rng.randrange(10**5):05d}" for _ in range(30)]
    assert len(read_folder(make_images(tmp_path / "digits", digits))) == 30


@pytest.mark.parametrize("bad, pattern", [
    ("corrupt", r"zz999\.png: not a readable image"),
    ("nonimage", r"notes\.pdf: not an image file"),
    ("charset", r"xyz12\.png: label 'xyz12'.*not in the charset"),
    ("length", r"ab1\.png: label 'ab1' has length 3"),
])
def test_bad_inputs_name_the_file(tmp_path, make_images, bad, pattern):
    folder = make_images(tmp_path / "imgs", ["abc12", "bcd23"])
    if bad == "corrupt":
        (folder / "zz999.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    elif bad == "nonimage":
        (folder / "notes.pdf").write_bytes(b"%PDF-1.4")
    elif bad == "charset":
        write_png(folder / "xyz12.png", "xyz12")
    else:
        write_png(folder / "ab1.png", "ab1")
    charset = Charset("abcd123") if bad == "charset" else None
    with pytest.raises(DataError, match=pattern + r".*--skip-bad"):
        read_folder(folder, charset, min_len=5, max_len=5)
    data = read_folder(folder, charset, min_len=5, max_len=5, skip_bad=True)
    assert len(data.samples) == 2 and len(data.skipped) == 1


def test_missing_and_empty(tmp_path):
    with pytest.raises(DataError, match="nope: no such folder"):
        read_labeled(tmp_path / "nope")
    with pytest.raises(DataError, match=r"nope\.csv: no such manifest"):
        read_labeled(tmp_path / "nope.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images"):
        read_labeled(tmp_path / "empty")
    (tmp_path / "bad.csv").write_text("id,value2\na.png,abc\n")
    with pytest.raises(DataError, match=r"bad\.csv: a manifest needs a header naming its image "
                                        r"column.*'path,label'.*found \['id', 'value2'\]"):
        read_labeled(tmp_path / "bad.csv")
    write_manifest(tmp_path / "gone.csv", [("gone.png", "abc12")])
    with pytest.raises(DataError, match=r"gone\.png: cannot open"):
        read_labeled(tmp_path / "gone.csv")


def test_real_set_reads_fast(real_dir):
    data = read_folder(real_dir, Charset("2345678bcdefgmnpwxy"), 5, 5)
    assert len(data) == 1040 and not data.skipped


# ----------------------------------------------------------------------------- split

def test_split_real_is_deterministic(tmp_path, real_dir):
    samples = read_folder(real_dir).samples
    a = split(samples, tmp_path / "a", seed=0)
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    b = split(shuffled, tmp_path / "b", seed=0)
    for name in ("train", "valid", "test"):
        assert a[name].read_bytes() == b[name].read_bytes()
    sizes = {n: len(read_manifest(p).samples) for n, p in a.items()}
    assert sizes == {"train": 520, "valid": 120, "test": 400}
    c = split(samples, tmp_path / "c", seed=1)
    assert c["test"].read_bytes() != a["test"].read_bytes()


def test_split_keeps_duplicates_together(tmp_path, make_images):
    names = [f"ab{i:03d}" for i in range(12)]
    folder = make_images(tmp_path / "imgs", names)
    for i in range(4):  # four byte-identical copies under other labels
        shutil.copy(folder / "ab000.png", folder / f"cd{i:03d}.png")
    samples = read_folder(folder).samples
    paths = split(samples, tmp_path / "s", seed=3, test=4, valid=3)
    where = {Path(p).name: n for n, m in paths.items() for p, _ in read_manifest(m).samples}
    dup = {where[n] for n in ["ab000.png"] + [f"cd{i:03d}.png" for i in range(4)]}
    assert len(dup) == 1 and len(where) == 16


def test_fit_split_keeps_a_resaved_copy_with_its_original(tmp_path, make_images):
    """fit groups by pixels, as its inspection finds duplicates: a copy saved again (other
    bytes, the same image) never lands in test while its original trains."""
    from types import SimpleNamespace

    from PIL import Image, PngImagePlugin

    from captcha_ml.fit.sample import make_split

    folder = make_images(tmp_path / "imgs", [f"ab{i:03d}" for i in range(30)])
    info = PngImagePlugin.PngInfo()
    info.add_text("source", "saved again")
    Image.open(folder / "ab000.png").save(folder / "ab000_copy.png", pnginfo=info)
    assert (folder / "ab000_copy.png").read_bytes() != (folder / "ab000.png").read_bytes()
    insp = SimpleNamespace(samples=read_folder(folder).samples, distinct=30)
    for seed in range(4):
        paths = make_split(insp, tmp_path / f"s{seed}", seed=seed)
        where = {Path(p).name: n for n, m in paths.items() for p, _ in read_manifest(m).samples}
        assert where["ab000.png"] == where["ab000_copy.png"] and len(where) == 31


def test_split_too_few(tmp_path, make_images):
    folder = make_images(tmp_path / "imgs", LABELS)
    with pytest.raises(DataError, match="need at least 8"):
        split(read_folder(folder).samples, tmp_path / "s", test=4, valid=3)
