"""Reading captchas: Reader, ONNX export, the predict / export / register commands, bad input."""

from __future__ import annotations

import io
import json
import shutil

import mlflow
import numpy as np
import onnx
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from captcha_ml import tracking
from captcha_ml.checkpoint import CheckpointError
from captcha_ml.cli import app
from captcha_ml.data.real import DataError
from captcha_ml.data.transforms import TTA_VIEWS, ImageError, average_views
from captcha_ml.reader import Reader, Reading, ReadError, export_onnx
from helpers import tiny_config
from reader_fixtures import CROP, trained  # noqa: F401 (session fixture)

pytestmark = pytest.mark.slow
runner = CliRunner()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def reader(trained) -> Reader:
    return Reader.load(trained["best_checkpoint"])


def test_read_accepts_path_bytes_and_pil_in_any_mode(reader, trained):
    path = trained["test_files"][0]
    by_path = reader.read(path)
    assert isinstance(by_path, Reading) and 0.0 <= by_path.confidence <= 1.0
    assert reader.read(path.read_bytes()) == by_path
    assert reader.read(Image.open(path)) == by_path
    odd = Image.open(path).convert("RGB").resize((123, 37))  # other mode and size: Preprocess
    assert isinstance(reader.read(odd), Reading)
    with pytest.raises(ImageError, match="not a readable image"):
        reader.read(b"not an image")


def test_read_many_batches_and_reports_bad_items(reader, trained, monkeypatch):
    good = trained["test_files"][:5]
    data = good[0].read_bytes()
    bomb = _png(Image.new("1", (5000, 5000)))  # 25 Mpx > MAX_PIXELS, a few KB of PNG
    items = [good[0], b"%PDF-1.4 not an image", data[: len(data) // 2], good[1], bomb, b"",
             good[2], None, good[3], good[4]]
    results = reader.read_many(items, batch_size=3)
    assert len(results) == len(items)
    bad = {i: r for i, r in enumerate(results) if isinstance(r, ReadError)}
    assert sorted(bad) == [1, 2, 4, 5, 7]
    assert "item 1" in bad[1].message and "not a readable image" in bad[1].message
    assert "item 2" in bad[2].message  # truncated
    assert "above the limit" in bad[4].message and "empty input" in bad[5].message
    alone = reader.read_many(good, batch_size=32)
    kept = [results[i] for i in (0, 3, 6, 8, 9)]
    assert [r.text for r in kept] == [r.text for r in alone]  # batching changes nothing
    assert np.allclose([r.confidence for r in kept], [r.confidence for r in alone], rtol=1e-4)


def test_test_time_views_average_and_reach_predict_and_evaluate(reader, trained, tmp_path):
    """--tta reads each image through the views and decodes their mean probabilities, in the
    reader, predict and evaluate; --no-tta or None (the model trained without data.tta) not."""
    files = trained["test_files"][:4]
    tta = Reader.load(trained["best_checkpoint"], tta=True)
    assert tta.preprocess.tta and not reader.preprocess.tta
    views = torch.cat([tta.preprocess.read(Image.open(f)) for f in files])  # 6 per image
    assert views.shape[0] == len(files) * len(TTA_VIEWS)
    mean = average_views(torch.from_numpy(tta.log_probs(views.numpy())), len(TTA_VIEWS))
    texts, confs = tta.charset.ctc_decode(mean)
    got = tta.read_many(files, batch_size=3)
    assert [r.text for r in got] == texts
    assert np.allclose([r.confidence for r in got], confs, rtol=1e-4)
    res = runner.invoke(app, ["predict", trained["best_checkpoint"], str(files[0]), "--tta",
                              "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["text"] == texts[0]
    folder = tmp_path / "labeled"
    folder.mkdir()
    for f in files:
        shutil.copy(f, folder / f.name)
    for flag, said in (("--tta", True), ("--no-tta", False)):
        res = runner.invoke(app, ["evaluate", trained["best_checkpoint"], str(folder), "--no-log",
                                  flag, "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["tta"] is said
    report = json.loads(res.output)  # without views: the plain reader's texts
    assert {r["pred"] for r in report["misread"]} <= {r.text for r in reader.read_many(files)}


def test_onnx_engine_matches_torch(reader, trained, tmp_path):
    out = export_onnx(trained["best_checkpoint"], tmp_path / "m.onnx")
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["captcha_ml.charset"])["symbols"] == reader.charset.symbols
    assert not list(tmp_path.glob("*.tmp"))
    ort = Reader.load(out, engine="onnx")
    assert ort.preprocess == reader.preprocess and reader.preprocess.crop == CROP
    assert ort.charset == reader.charset and reader.charset.lengths == (5, 5)  # data.min/max_len
    files = trained["test_files"]
    images = np.stack([reader.preprocess(Image.open(f)).numpy() for f in files])
    assert np.allclose(reader.log_probs(images), ort.log_probs(images), atol=1e-4)
    assert np.allclose(ort.log_probs(images[:1]), ort.log_probs(images)[:1], atol=1e-5)
    texts = [r.text for r in reader.read_many(files)]
    assert [r.text for r in ort.read_many(files, batch_size=3)] == texts
    from_ckpt = Reader.load(trained["best_checkpoint"], engine="onnx", graph_opt="none")
    assert [r.text for r in from_ckpt.read_many(files)] == texts


def test_int8_export_keeps_metadata_and_tracks_float(reader, trained, tmp_path):
    files = trained["test_files"]
    out = export_onnx(trained["best_checkpoint"], tmp_path / "q.onnx",
                      calibration=[str(f) for f in files], calibration_count=6)
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["captcha_ml.quantized"] == "int8" and "captcha_ml.preprocess" in meta
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    q = Reader.load(out, engine="onnx")
    images = np.stack([reader.preprocess(Image.open(f)).numpy() for f in files])
    p_float, p_int8 = np.exp(reader.log_probs(images)), np.exp(q.log_probs(images))
    assert p_int8.shape == p_float.shape
    assert np.abs(p_int8 - p_float).mean() < 0.02  # int8 follows the float model closely


def test_int8_export_needs_readable_calibration_images(trained, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no calibration images"):
        export_onnx(trained["best_checkpoint"], tmp_path / "q.onnx", calibration=[str(empty)])
    (empty / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="junk.png"):
        export_onnx(trained["best_checkpoint"], tmp_path / "q.onnx", calibration=[str(empty)])
    assert not (tmp_path / "q.onnx").exists()
    res = runner.invoke(app, ["export", "onnx", trained["best_checkpoint"],
                                   str(tmp_path / "q.onnx"), "--int8", str(empty)])
    assert res.exit_code == 2 and "junk.png" in res.output


def test_reader_loads_mlflow_uri(reader, trained):
    mlflow.set_tracking_uri(trained["tracking_uri"])
    by_uri = Reader.load(f"runs:/{trained['run_id']}/checkpoints/best.pt")
    assert by_uri.preprocess == reader.preprocess
    f = trained["test_files"][0]
    assert by_uri.read(f) == reader.read(f)


def test_bad_model_files_are_named(trained, tmp_path):
    with pytest.raises(CheckpointError, match="missing.onnx not found"):
        Reader.load(tmp_path / "missing.onnx", engine="onnx")
    with pytest.raises(CheckpointError, match="--engine onnx"):
        Reader.load(tmp_path / "m.onnx")
    bare = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(CheckpointError, match="without captcha_ml metadata"):
        Reader.load(tmp_path / "bare.onnx", engine="onnx")


def test_predict_folder_with_bad_files(trained, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in trained["test_files"][:3]:
        shutil.copy(f, folder)
    (folder / "SOURCE.md").write_text("where these came from")  # documentation: not read
    (folder / "notes.bin").write_text("not an image")
    data = trained["test_files"][3].read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 3])
    res = runner.invoke(app, ["predict", trained["best_checkpoint"], str(folder),
                              "--batch-size", "2"])
    assert res.exit_code == 1, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3 and all(len(line.split("\t")) == 3 for line in lines)
    assert "notes.bin" in res.stderr and "cut.png" in res.stderr
    assert "SOURCE.md" not in res.stdout + res.stderr
    assert "Traceback" not in res.output


def test_predict_stdin_glob_json_and_onnx(trained, tmp_path):
    f = trained["test_files"][0]
    res = runner.invoke(app, ["predict", trained["best_checkpoint"], "-"], input=f.read_bytes())
    assert res.exit_code == 0, res.output
    name, text, conf = res.stdout.strip().split("\t")
    assert name == "-" and float(conf) >= 0
    onnx_path = tmp_path / "m.onnx"
    assert runner.invoke(app, ["export", "onnx", trained["best_checkpoint"],
                               str(onnx_path)]).exit_code == 0
    pattern = str(f.parent / f"{f.stem[:3]}*.png")
    res = runner.invoke(app, ["predict", str(onnx_path), pattern, "--engine", "onnx", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert any(r["path"] == str(f) and r["text"] == text for r in rows)


def test_predict_bad_model_exits_2(tmp_path):
    res = runner.invoke(app, ["predict", str(tmp_path / "nope.pt"), "x.png"])
    assert res.exit_code == 2 and "nope.pt not found" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["predict", str(tmp_path / "nope.pt"), "x.png", "--engine", "tf"])
    assert res.exit_code == 2 and "engine 'tf': use one of torch, onnx" in res.output


def test_register_moves_champion_only_when_better(trained, tmp_path):
    uri = trained["tracking_uri"]
    client = MlflowClient(uri)
    run_a = trained["run_id"]
    client.log_metric(run_a, "test/seq_acc", 0.5)
    # Run B: another logged reader; its accuracy comes from an evaluate run tagged with it.
    tracker = tracking.Tracker(tiny_config(trained["tmp"]))
    tracker.set_tags({"reader_uri": tracker.log_reader(trained["best_checkpoint"])})
    tracker.end()
    run_b = tracker.run_id
    ev = client.create_run(client.get_run(run_b).info.experiment_id,
                           tags={"evaluated_run_id": run_b, "stage": "evaluate"})
    client.log_metric(ev.info.run_id, "test/seq_acc", 0.7)
    client.set_terminated(ev.info.run_id)

    def register(run_id: str):
        return runner.invoke(app, ["register", run_id, "--name", "reader-test",
                                   "--tracking-uri", uri])

    first, second, third = register(run_a), register(run_b), register(run_a)
    assert first.exit_code == second.exit_code == third.exit_code == 0, third.output
    assert "v1" in first.stdout and "now holds 'champion'" in first.stdout
    assert "v2" in second.stdout and "now holds" in second.stdout and "0.7000" in second.stdout
    assert "v3" in third.stdout and "does not beat" in third.stdout
    mv = client.get_model_version_by_alias("reader-test", "champion")
    assert int(mv.version) == 2 and mv.run_id == run_b
    res = runner.invoke(app, ["register", run_a, "--name", "x", "--metric", "test/nope",
                              "--tracking-uri", uri])
    assert res.exit_code == 2 and "captcha-ml evaluate" in res.output
