"""The data commands, through typer's CliRunner."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from captcha_ml.cli import app
from captcha_ml.data.real import content_digest, read_manifest

runner = CliRunner()


def test_fetch_from_local_folder(tmp_path, real_dir):
    res = runner.invoke(app, ["data", "fetch", "--dest", str(tmp_path / "d"), "--from", str(real_dir)])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "d").glob("*.png"))) == 1040


def test_fetch_mismatch_exits_2(tmp_path, make_images):
    src = make_images(tmp_path / "src", ["abc12"])
    res = runner.invoke(app, ["data", "fetch", "--dest", str(tmp_path / "d"), "--from", str(src)])
    assert res.exit_code == 2 and "does not match" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "d").exists()


def test_split_and_skip_bad(tmp_path, make_images):
    src = make_images(tmp_path / "src", [f"ab{i:03d}" for i in range(10)])
    (src / "zz999.png").write_bytes(b"broken")
    out = tmp_path / "splits"
    args = ["data", "split", str(src), "--out", str(out), "--test", "3", "--valid", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "zz999.png" in res.output and "--skip-bad" in res.output
    res = runner.invoke(app, args + ["--skip-bad"])
    assert res.exit_code == 0, res.output
    assert "skipped 1" in res.output
    sizes = [len(read_manifest(out / f"{n}.csv").samples) for n in ("train", "valid", "test")]
    assert sizes == [5, 2, 3]


def test_generate_and_inspect(tmp_path):
    out = tmp_path / "syn"
    args = ["data", "generate", "--out", str(out), "--train", "6", "--valid", "2", "--length", "4",
            "--charset", "abc", "--width", "80", "--height", "24", "--workers", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert len(read_manifest(out / "train" / "labels.csv").samples) == 6
    assert content_digest(out / "train") != content_digest(out / "valid")
    res = runner.invoke(app, ["data", "inspect", str(out / "train" / "labels.csv")])
    assert res.exit_code == 0 and "images: 6" in res.output and "lengths: {4: 6}" in res.output
    assert "sizes: {'80x24': 6}" in res.output


def test_errors_exit_2(tmp_path):
    res = runner.invoke(app, ["data", "inspect", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "missing: no such folder" in res.output
    res = runner.invoke(app, ["data", "generate", "--out", str(tmp_path), "--style", "fancy"])
    assert res.exit_code == 2 and "unknown synthetic style" in res.output


def test_python_m_help():
    res = subprocess.run([sys.executable, "-m", "captcha_ml", "data", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "generate" in res.stdout
