"""The training loop in-process: outputs, MLflow logging, resume, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from captcha_ml import checkpoint, config, engine
from captcha_ml.checkpoint import CheckpointError
from captcha_ml.config import ConfigError
from captcha_ml.data import synthetic
from captcha_ml.tracking import TrackingError
from helpers import ROOT, tiny_config, write_manifests


def _client(tmp_path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_pretrain_writes_checkpoints_and_logs_run(tmp_path):
    cfg = tiny_config(tmp_path, "train.eval_every=3", "train.epochs=1")
    result = engine.train(cfg)
    out = tmp_path / "out"
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    assert (out / "state" / "progress.json").is_file()
    model, charset, pre, payload = checkpoint.load(out / "best.pt")
    assert charset.symbols == cfg.data.charset and (pre.height, pre.width) == (32, 96)
    run = _client(tmp_path).get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "pretrain"
    assert run.data.params["train.lr"] == "0.001" and run.data.params["data.height"] == "32"
    assert {"train/loss", "train/lr", "train/images_per_s", "val/seq_acc", "val/char_acc",
            "val/cer", "val/loss"} <= set(run.data.metrics)
    history = _client(tmp_path).get_metric_history(result["run_id"], "val/seq_acc")
    assert [m.step for m in history] == [3, 6]  # 48 images / batch 8 = 6 steps, eval every 3
    artifacts = {a.path for a in _client(tmp_path).list_artifacts(result["run_id"])}
    assert {"config.yaml", "charset.json", "samples.png", "checkpoints"} <= artifacts
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["synthetic-real-training",
                                                                 "synthetic-real-validation"]
    # The logged model reads images without captcha_ml's checkpoint code.
    assert result["model_uri"].startswith("models:/")


@pytest.mark.parametrize("ema", ["0", "0.9"])
@pytest.mark.usefixtures("exact_kernels")
def test_resume_matches_uninterrupted_run(tmp_path, monkeypatch, ema):
    # With a weight average on, the average itself must be saved and restored too.
    overrides = ["train.epochs=2", "train.save_every=2", "train.eval_every=4",
                 "data.augment=true", f"train.ema_decay={ema}"]
    full = engine.train(tiny_config(tmp_path / "a", *overrides))
    save = engine._save_state

    def interrupt_after_step_4(loop):
        save(loop)
        if loop.progress.step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_save_state", interrupt_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        engine.train(tiny_config(tmp_path / "b", *overrides))
    monkeypatch.setattr(engine, "_save_state", save)
    resumed = engine.train(tiny_config(tmp_path / "b", *overrides), resume=True)
    assert resumed["steps"] == full["steps"] == 12 and resumed["run_id"] is not None
    a = torch.load(tmp_path / "a/out/last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b/out/last.pt", weights_only=True)["state_dict"]
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
    # The resumed run continues the interrupted MLflow run: one value per logged step.
    client = _client(tmp_path / "b")
    steps = [m.step for m in client.get_metric_history(resumed["run_id"], "train/loss")]
    assert steps == sorted(set(steps)) == [2, 4, 6, 8, 10, 12]


@pytest.mark.usefixtures("exact_kernels")
def test_weight_average_is_what_is_validated_and_saved(tmp_path):
    # After two steps the average is w1 + (w2 - w1) * (1 - d), d = min(decay, 2/11) (warm-up).
    runs = {}
    for name, extra in (("one", ["train.max_steps=1"]), ("plain", ["train.max_steps=2"]),
                        ("ema", ["train.max_steps=2", "train.ema_decay=0.5"])):
        runs[name] = engine.train(tiny_config(tmp_path / name, *extra, "tracking.log_model=false"))
    w1, w2, avg = (torch.load(tmp_path / n / "out" / "last.pt", weights_only=True)["state_dict"]
                   for n in ("one", "plain", "ema"))
    floats = [k for k in w1 if w1[k].is_floating_point()]
    for key in floats:
        assert torch.allclose(avg[key], w1[key] + (w2[key] - w1[key]) * (1 - 2 / 11),
                              atol=1e-5), key
    assert any(not torch.allclose(avg[k], w2[k], atol=1e-4) for k in floats)
    assert runs["ema"]["val"]["loss"] != runs["plain"]["val"]["loss"]  # validation read it too
    with pytest.raises(ConfigError, match="train.ema_decay=1.0"):
        tiny_config(tmp_path, "train.ema_decay=1")
    # A state saved without the average cannot be resumed with it (and the reverse).
    with pytest.raises(engine.TrainingError, match="ema_decay"):
        engine.train(tiny_config(tmp_path / "plain", "train.max_steps=3", "train.ema_decay=0.5"),
                     resume=True)


@pytest.mark.usefixtures("exact_kernels")
def test_channels_last_changes_the_memory_layout_not_the_weights(tmp_path):
    states = {}
    for layout in ("true", "false"):
        engine.train(tiny_config(tmp_path / layout, "train.max_steps=2", "tracking.log_model=false",
                                 f"train.channels_last={layout}"))
        states[layout] = torch.load(tmp_path / layout / "out" / "last.pt",
                                    weights_only=True)["state_dict"]
    conv = "features.4.0.conv1.weight"  # 64x64x3x3: the two layouts differ in strides
    assert states["true"][conv].is_contiguous(memory_format=torch.channels_last)
    assert states["false"][conv].is_contiguous() and not states["true"][conv].is_contiguous()
    # The same training up to float rounding, which AdamW can amplify only where a gradient is
    # ~0 (its first steps move each weight by about lr in the gradient's sign): most weights
    # agree to 1e-4, none differs by more than 2 steps x 2 x lr.
    diffs = torch.cat([(states["true"][k].float() - v.float()).abs().flatten()
                       for k, v in states["false"].items() if v.is_floating_point()])
    assert diffs.max() <= 2 * 2 * 1e-3 + 1e-5 and (diffs > 1e-4).float().mean() < 0.05
    model, *_ = checkpoint.load(tmp_path / "true" / "out" / "last.pt")  # loads as usual
    assert model.features[4][0].conv1.weight.is_contiguous()


@pytest.mark.parametrize("select, kept", [("best", 1), ("last", 3)])
def test_select_decides_which_validated_weights_are_the_model(tmp_path, monkeypatch, select, kept):
    """Validation scores that fall (0.9, 0.5, 0.1): train.select=best keeps step 1's weights as
    best.pt and the result, select=last the final ones; last.pt is always the final."""
    scores = iter([0.9, 0.5, 0.1])

    def falling(model, loader, accelerator, charset, with_ids=False):
        return {"seq_acc": next(scores), "char_acc": 0.5, "cer": 0.5, "loss": 1.0}, [], []

    monkeypatch.setattr(engine, "evaluate", falling)
    result = engine.train(tiny_config(tmp_path, "train.max_steps=3", "train.eval_every=1",
                                      f"train.select={select}", "tracking.log_model=false"))
    assert result["best_step"] == kept and result["val"]["step"] == kept
    assert [(h["step"], h["seq_acc"]) for h in result["history"]] == [(1, 0.9), (2, 0.5),
                                                                       (3, 0.1)]
    assert checkpoint.load_payload(result["best_checkpoint"])["step"] == kept
    assert checkpoint.load_payload(tmp_path / "out" / "last.pt")["step"] == 3
    with pytest.raises(ConfigError, match="train.select='first'"):
        tiny_config(tmp_path, "train.select=first")


def test_validate_start_reads_the_starting_weights_as_a_baseline_not_a_candidate(
        tmp_path, monkeypatch):
    """train.validate_start: the starting weights are validated before the first step (scores
    0.9 at the start, then 0.5, 0.1, 0.3), logged at step 0 and returned as "start"; best.pt
    stays a trained step's (step 1), and the start is not in the selection's history."""
    scores = iter([0.9, 0.5, 0.1, 0.3])

    def scored(model, loader, accelerator, charset, with_ids=False):
        return {"seq_acc": next(scores), "char_acc": 0.5, "cer": 0.5, "loss": 1.0}, [], []

    monkeypatch.setattr(engine, "evaluate", scored)
    result = engine.train(tiny_config(tmp_path, "train.max_steps=3", "train.eval_every=1",
                                      "train.validate_start=true", "tracking.log_model=false"))
    assert result["start"] == {"step": 0, "seq_acc": 0.9, "char_acc": 0.5, "cer": 0.5,
                               "loss": 1.0}
    assert result["best_step"] == 1 and [h["step"] for h in result["history"]] == [1, 2, 3]
    assert checkpoint.load_payload(result["best_checkpoint"])["step"] == 1
    logged = _client(tmp_path).get_metric_history(result["run_id"], "val/seq_acc")
    assert [(m.step, m.value) for m in logged] == [(0, 0.9), (1, 0.5), (2, 0.1), (3, 0.3)]


def test_resume_without_state_is_refused(tmp_path):
    with pytest.raises(engine.TrainingError, match="no saved state"):
        engine.train(tiny_config(tmp_path), resume=True)


def test_finetune_from_checkpoint_on_real_manifests(tmp_path, real_dir):
    pre = engine.train(tiny_config(tmp_path / "pre", "train.epochs=1",
                                   "data.charset=2345678bcdefgmnpwxy", "data.min_len=5",
                                   "data.max_len=5", "tracking.log_model=false"))
    m = write_manifests(real_dir, tmp_path / "splits")
    cfg = tiny_config(tmp_path / "pre", "train.stage=finetune", f"data.train={m['train']}",
                      f"data.valid={m['valid']}", "data.charset=2345678bcdefgmnpwxy",
                      "data.min_len=5", "data.max_len=5", "data.augment=true",
                      "data.synthetic_share=0.25", f"train.init_from={pre['best_checkpoint']}",
                      f"train.output_dir={tmp_path / 'ft'}", "tracking.log_model=false",
                      "data.height=40", "data.width=128")
    result = engine.train(cfg)
    assert result["val"]["count"] == 15
    # Pretraining may use a smaller input than finetuning (the default recipe does): the network
    # is convolutional, and each checkpoint keeps the preprocessing it was trained with.
    sizes = [(p.height, p.width) for _, _, p, _ in
             (checkpoint.load(r["best_checkpoint"]) for r in (pre, result))]
    assert sizes == [(32, 96), (40, 128)]
    run = _client(tmp_path / "pre").get_run(result["run_id"])
    assert run.data.tags["pretrain_run_id"] == pre["run_id"]
    assert run.data.tags["stage"] == "finetune"
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {
        "train.csv", "valid.csv", "synthetic-real-training"}  # the mixed-in synthetic part


def test_synthetic_share_mixes_new_synthetic_images_into_real_training(tmp_path, real_dir):
    m = write_manifests(real_dir, tmp_path / "splits")
    cfg = tiny_config(tmp_path, f"data.train={m['train']}", f"data.valid={m['valid']}",
                      "data.charset=2345678bcdefgmnpwxy", "data.min_len=5", "data.max_len=5",
                      "data.synthetic_share=0.25")
    train = engine.build_data(cfg).train
    assert len(train) == 24 + 8  # 24 real images are 75% of the epoch
    real_labels = {p.stem for p in sorted(real_dir.glob("*.png"))[:24]}
    assert {train[i][1] for i in range(24)} == real_labels
    first = train[30]
    train.set_epoch(1)
    assert train[30][1] != first[1] and train[0][1] == train[0][1]  # synthetic part is new
    assert set(first[1]) <= set(cfg.data.charset) and first[0].shape == train[0][0].shape
    with pytest.raises(ConfigError, match="synthetic_share"):
        tiny_config(tmp_path, "data.synthetic_share=0.5")  # data.train is synthetic there


def test_share_from_reads_the_synthetic_share_from_a_labeled_folder(tmp_path, real_dir):
    """data.share_from: the mixed-in part comes from another labeled folder (a generator's
    images), the next ones each epoch, cycling, unaugmented; a bad setting says what to fix."""
    from captcha_ml.data.datasets import Cycled
    from captcha_ml.data.real import DataError

    m = write_manifests(real_dir, tmp_path / "splits")
    own = sorted(real_dir.glob("*.png"))[30:35]  # five images not in the train part
    base = [f"data.train={m['train']}", f"data.valid={m['valid']}", "data.augment=true",
            "data.charset=2345678bcdefgmnpwxy", "data.min_len=5", "data.max_len=5",
            "data.synthetic_share=0.25"]
    (tmp_path / "own").mkdir()
    for p in own:
        (tmp_path / "own" / p.name).write_bytes(p.read_bytes())
    train = engine.build_data(tiny_config(tmp_path, *base,
                                          f"data.share_from={tmp_path / 'own'}")).train
    part = train.parts[1]
    assert isinstance(part, Cycled) and len(train) == 24 + 8
    labels = [p.stem for p in own]
    assert [train[24 + i][1] for i in range(8)] == (labels * 2)[:8]
    train.set_epoch(1)
    assert [train[24 + i][1] for i in range(8)] == (labels * 4)[8:16]
    assert torch.equal(train[24][0], part.images[3][0])  # unaugmented: the image as read
    with pytest.raises(ConfigError, match="share_from.*synthetic_share is 0"):
        tiny_config(tmp_path, *base[:-1], f"data.share_from={tmp_path / 'own'}")
    with pytest.raises(DataError, match="missing"):
        engine.build_data(tiny_config(tmp_path, *base, f"data.share_from={tmp_path / 'missing'}"))


def test_glyphs_compose_the_synthetic_share_of_the_train_parts_glyphs(tmp_path, real_dir):
    """data.glyphs: the mixed-in part is composed of a glyph bank's glyphs (pooled with
    data.synthetic_pool, else on the fly); a bad setting says what to fix."""
    from PIL import Image

    from captcha_ml.data.datasets import GlyphImages, Pool, SyntheticImages, SyntheticPool
    from captcha_ml.data.glyphs import cut
    from captcha_ml.data.real import DataError, read_manifest

    m = write_manifests(real_dir, tmp_path / "splits")
    rows = read_manifest(m["train"]).samples[:6]
    pieces = [(Image.open(path), label, [(30 + 25 * k, 55 + 25 * k) for k in range(len(label))])
              for path, label in rows]  # five 25-column cuts from column 30: v2's text
    cut(pieces).save(tmp_path / "bank")
    base = [f"data.train={m['train']}", f"data.valid={m['valid']}",
            "data.charset=2345678bcdefgmnpwxy", "data.min_len=5", "data.max_len=5",
            "data.synthetic_share=0.25", f"data.glyphs={tmp_path / 'bank'}"]
    train = engine.build_data(tiny_config(tmp_path, *base)).train
    assert isinstance(train.parts[1], GlyphImages) and len(train) == 24 + 8
    image, label = train[24]
    assert image.shape == train[0][0].shape and len(label) == 5
    assert set(label) <= {c for _, lab in rows for c in lab}
    pooled = engine.build_data(tiny_config(tmp_path, *base, "data.synthetic_pool=10")).train
    assert isinstance(pooled.parts[1], Pool) and len(pooled.parts[1].labels) == 10
    # data.glyph_share: a quarter of the part composed, the rest rendered, each pool its share.
    mixed = engine.build_data(tiny_config(tmp_path, *base, "data.synthetic_pool=10",
                                          "data.glyph_share=0.25")).train.parts[1]
    rendered, composed = mixed.parts
    assert isinstance(rendered, SyntheticPool) and isinstance(composed, Pool)
    assert (len(rendered), len(composed)) == (6, 2)
    assert (len(rendered.labels), len(composed.labels)) == (8, 2)
    none = engine.build_data(tiny_config(tmp_path, *base, "data.glyph_share=0")).train
    assert isinstance(none.parts[1], SyntheticImages)
    with pytest.raises(ConfigError, match="glyphs.*synthetic_share is 0"):
        tiny_config(tmp_path, *base[:-2], base[-1])
    with pytest.raises(ConfigError, match="both sources"):
        tiny_config(tmp_path, *base, f"data.share_from={m['train']}")
    with pytest.raises(ConfigError, match="glyph_share"):
        tiny_config(tmp_path, *base, "data.glyph_share=1.5")
    with pytest.raises(ConfigError, match="glyph_warp"):
        tiny_config(tmp_path, *base, "data.glyph_warp=0.9")
    with pytest.raises(DataError, match="no glyph bank there"):
        engine.build_data(tiny_config(tmp_path, *base[:-1], f"data.glyphs={tmp_path / 'none'}"))


def test_synthetic_pool_serves_training_and_the_mix_but_not_validation(tmp_path, real_dir):
    """data.synthetic_pool renders the training images once (pretraining's set and the mixed-in
    part of finetuning); validation stays the fixed on-the-fly set."""
    from captcha_ml.data.datasets import SyntheticImages, SyntheticPool

    data = engine.build_data(tiny_config(tmp_path, "data.synthetic_pool=6"))
    assert isinstance(data.train, SyntheticPool) and len(data.train.labels) == 6
    assert isinstance(data.valid, SyntheticImages)
    m = write_manifests(real_dir, tmp_path / "splits")
    mixed = engine.build_data(tiny_config(
        tmp_path, f"data.train={m['train']}", f"data.valid={m['valid']}",
        "data.charset=2345678bcdefgmnpwxy", "data.min_len=5", "data.max_len=5",
        "data.synthetic_share=0.25", "data.synthetic_pool=10")).train
    assert isinstance(mixed.parts[1], SyntheticPool) and len(mixed) == 24 + 8
    with pytest.raises(ConfigError, match="synthetic_pool=-1"):
        tiny_config(tmp_path, "data.synthetic_pool=-1")


def test_validation_reads_one_view_where_the_model_reads_test_time_views(tmp_path, real_dir):
    """data.tta travels in the model's preprocessing (the test and the reader read six views);
    validation during training reads one, six times cheaper."""
    from captcha_ml.data.transforms import TTA_VIEWS, load_image

    m = write_manifests(real_dir, tmp_path / "splits")
    data = engine.build_data(tiny_config(
        tmp_path, f"data.train={m['train']}", f"data.valid={m['valid']}", "data.tta=true",
        "data.charset=2345678bcdefgmnpwxy", "data.min_len=5", "data.max_len=5"))
    image = data.valid[0][0]
    assert data.preprocess.tta and image.shape == (1, 32, 96)
    views = data.preprocess.read(load_image(data.valid.samples[0][0]))
    assert views.shape == (len(TTA_VIEWS), *image.shape) and torch.equal(views[0], image)


def test_missing_init_checkpoint_is_named(tmp_path):
    cfg = tiny_config(tmp_path, f"train.init_from={tmp_path / 'nope.pt'}")
    with pytest.raises(CheckpointError, match="nope.pt not found"):
        engine.train(cfg)


def test_unknown_mlflow_model_uri_is_reported(tmp_path):
    cfg = tiny_config(tmp_path, "train.init_from=runs:/0123456789abcdef/checkpoints/best.pt")
    with pytest.raises(TrackingError, match="cannot download model"):
        engine.train(cfg)


def test_unreachable_tracking_server_fails_before_training(tmp_path):
    cfg = tiny_config(tmp_path, "tracking.tracking_uri=http://127.0.0.1:9")
    with pytest.raises(TrackingError, match="http://127.0.0.1:9 is unreachable"):
        engine.train(cfg)
    assert not (tmp_path / "out" / "last.pt").exists()


def test_unreachable_server_and_bad_model_names_fail_fast_everywhere(tmp_path, monkeypatch):
    """Listing runs, downloading a reader and registering check the server first (MLflow
    itself retries for minutes); a name MLflow would refuse after a whole fit is refused
    before it starts."""
    import mlflow
    from typer.testing import CliRunner

    from captcha_ml import tracking
    from captcha_ml.cli import app

    before = mlflow.get_tracking_uri()
    try:
        tracking.resolve_uri("http://127.0.0.1:9")
        for call in (lambda: tracking.runs_table("captcha_ml"),
                     lambda: tracking.download_checkpoint("runs:/0123/checkpoints/best.pt"),
                     lambda: tracking.register("0123", "mysite")):
            with pytest.raises(TrackingError, match="127.0.0.1:9 is unreachable"):
                call()
    finally:
        mlflow.set_tracking_uri(before)
    with pytest.raises(TrackingError, match="'my/site'.*without '/' or ':'"):
        tracking.register("0123", "my/site")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["fit", str(tmp_path / "data"), "--out",
                                      str(tmp_path / "out"), "--name", "site:v2"])
    assert result.exit_code != 0 and "'site:v2'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()
    try:  # an unreachable server: before the data is even read
        result = CliRunner().invoke(app, ["fit", str(tmp_path / "data"), "--out",
                                          str(tmp_path / "out"), "--tracking-uri",
                                          "http://127.0.0.1:9"])
    finally:
        mlflow.set_tracking_uri(before)
    assert result.exit_code != 0 and "127.0.0.1:9 is unreachable" in result.output
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["fit", str(tmp_path / "data"), "--out",  # a mistyped folder
                                      str(tmp_path / "out"), "--tracking-uri",
                                      f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert result.exit_code == 2 and "data: no such folder or manifest" in result.output
    assert not (tmp_path / "out").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_loss = engine.ctc_loss
    calls = {"n": 0}

    def loss_turning_nan(log_probs, batch, reduction="mean"):
        loss = real_loss(log_probs, batch, reduction)
        if reduction == "mean":  # training steps only, not evaluation
            calls["n"] += 1
        return loss * math.nan if calls["n"] > 4 else loss

    monkeypatch.setattr(engine, "ctc_loss", loss_turning_nan)
    cfg = tiny_config(tmp_path, "train.eval_every=2", "train.epochs=2")
    with pytest.raises(engine.TrainingError, match="not finite at step 5.*best.pt"):
        engine.train(cfg)
    last, best = (checkpoint.load(tmp_path / "out" / f"{n}.pt")[3] for n in ("last", "best"))
    assert last["step"] == 4 and best["step"] in (2, 4)  # the NaN step 5 was never saved
    for good in (last, best):
        assert all(torch.isfinite(v).all() for v in good["state_dict"].values()
                   if v.is_floating_point())
    run = _client(tmp_path).search_runs([_client(tmp_path).get_experiment_by_name(
        "captcha_ml_smoke").experiment_id])[0]
    assert run.info.status == "FAILED"


def test_early_stopping_after_patience(tmp_path, monkeypatch, capsys):
    flat = {"seq_acc": 0.5, "char_acc": 0.5, "cer": 0.5, "count": 16.0, "loss": 1.0}
    monkeypatch.setattr(engine, "evaluate", lambda *a, **k: (dict(flat), [], []))
    cfg = tiny_config(tmp_path, "train.eval_every=1", "train.early_stop_patience=2",
                      "train.epochs=2", "tracking.log_model=false")
    result = engine.train(cfg)
    assert result["best_step"] == 1 and result["steps"] == 3  # best at 1, two stale, stop
    assert result["stopped_early"] is True
    assert "stopped at step 3 of 12, no better validation since step 1" in capsys.readouterr().out
    cfg.train.early_stop_patience, cfg.train.output_dir = 0, str(tmp_path / "all")
    result = engine.train(cfg)
    assert result["steps"] == 12 and result["stopped_early"] is False


def test_bf16_and_gradient_accumulation_on_cpu(tmp_path):
    cfg = tiny_config(tmp_path, "train.mixed_precision=bf16", "train.grad_accum=2",
                      "train.epochs=1", "tracking.log_model=false")
    result = engine.train(cfg)
    assert result["steps"] == 3  # 6 batches, an optimizer step every 2
    assert math.isfinite(result["val"]["loss"])


def test_cli_train_runs_and_errors(tmp_path):
    from typer.testing import CliRunner

    from captcha_ml.cli import app
    from helpers import SMOKE

    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ok = runner.invoke(app, ["train", str(SMOKE), "--set", f"train.output_dir={tmp_path / 'o'}",
                             "--set", f"tracking.tracking_uri={db}", "--set", "train.epochs=1",
                             "--set", "tracking.log_model=false"])
    assert ok.exit_code == 0, ok.output
    listed = runner.invoke(app, ["runs", "--experiment", "captcha_ml_smoke", "--tracking-uri", db])
    assert listed.exit_code == 0 and "pretrain" in listed.output and "FINISHED" in listed.output
    bad = runner.invoke(app, ["train", str(SMOKE), "--set", "train.learning_rate=1"])
    assert bad.exit_code == 2 and "valid keys are" in bad.output
    missing = runner.invoke(app, ["evaluate", str(tmp_path / "none.pt"), str(tmp_path)])
    assert missing.exit_code == 2 and "none.pt not found" in missing.output


def test_experiment_configs_load_and_the_gpu_recipe_steps_on_a_cpu(tmp_path):
    """Every shipped config and style file is valid; the seed-scale GPU recipe (bf16, 100k
    images) runs as is apart from its sizes, here on the CPU (bf16 autocast)."""
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        config.load(path)
    for path in sorted((ROOT / "experiments" / "styles").glob("*.yaml")):
        spec = synthetic.SyntheticSpec(**synthetic.load_style(path))
        assert synthetic.render(spec, "check", 0)[0].size == (spec.width, spec.height)
    cfg = config.load(ROOT / "experiments" / "pretrain_gpu.yaml", [
        f"train.output_dir={tmp_path / 'out'}", f"tracking.tracking_uri=sqlite:///{tmp_path / 'm.db'}",
        "data.synthetic_train_size=8", "data.synthetic_valid_size=4", "data.num_workers=0",
        "train.batch_size=4", "train.eval_batch_size=4", "train.max_steps=1",
        "tracking.log_model=false"])
    assert cfg.train.mixed_precision == "bf16" and cfg.data.synthetic_train_size == 8
    result = engine.train(cfg)
    assert result["steps"] == 1 and (tmp_path / "out" / "best.pt").is_file()


def test_time_limit_reestimates_the_steps_and_the_schedule_follows(tmp_path, monkeypatch):
    """train.max_minutes: the steps that fit the time left at the rate so far (never above
    the planned count); the schedule anneals to the moved end; a run past its limit stops."""
    from types import SimpleNamespace

    cfg = tiny_config(tmp_path, "train.max_minutes=1", "train.max_steps=100",
                      "train.warmup_frac=0.1", "train.schedule=onecycle")
    now = 1000.0
    loop = SimpleNamespace(accelerator=engine.new_accelerator(cpu=True), cfg=cfg, planned=100,
                           progress=engine.Progress(step=10, total=100), started=now - 50)
    with monkeypatch.context() as m:
        m.setattr(engine.time, "perf_counter", lambda: now)
        # 10 steps in the last 20 s (0.5 a second), 10 s of the minute left: 5 more steps.
        assert engine._fit_to_time(loop, 10, now - 20) == loop.progress.total == 15
        loop.started = now - 70  # past the limit: stop at this step
        assert engine._fit_to_time(loop, 10, now - 20) == 10
        loop.started = now  # plenty of time: the planned count, not more
        assert engine._fit_to_time(loop, 10, now - 1) == 100
        # train.fill_time: a run faster than planned fills its time (10 steps a second,
        # 60 s left: 610), at most 3x the plan; not before a tenth of the plan ran.
        loop.cfg = tiny_config(tmp_path, "train.max_minutes=1", "train.max_steps=100",
                               "train.fill_time=true")
        assert engine._fit_to_time(loop, 10, now - 1) == 100 * engine.FILL_LIMIT == 300
        loop.progress.step = 9
        assert engine._fit_to_time(loop, 9, now - 0.9) == 100
        loop.progress.step, loop.started = 10, now - 57  # 3 s left: 30 more steps
        assert engine._fit_to_time(loop, 10, now - 1) == 40
        loop.cfg, loop.progress.step = cfg, 10
    progress = engine.Progress(total=100)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = engine.make_scheduler(opt, cfg, progress)
    for _ in range(50):
        opt.step()
        sched.step()
    assert 0.3 < sched.get_last_lr()[0] < 0.7  # mid-way through 100 steps
    progress.total = 51  # a limit moved the end: the next step is the schedule's last
    opt.step()
    sched.step()
    assert sched.get_last_lr()[0] < 0.01
    with pytest.raises(ConfigError, match="max_minutes"):
        tiny_config(tmp_path, "train.max_minutes=-1")
    with pytest.raises(ConfigError, match="fill_time"):
        tiny_config(tmp_path, "train.fill_time=true", "train.max_minutes=1")
    # A whole run whose limit is already spent after its first log line stops there, saved.
    run = tiny_config(tmp_path / "run", "train.max_steps=500", "train.max_minutes=0.0001",
                      "train.log_every=1", "train.eval_every=0")
    result = engine.train(run)
    assert result["steps"] < 500 and (tmp_path / "run" / "out" / "best.pt").is_file()


def test_init_from_another_charset_and_colour_keeps_what_carries_over(tmp_path):
    """A colour checkpoint of 62 symbols starts a grey model of 4 (fit's universal start): the
    blank's and each shared symbol's classifier row are copied, a new symbol's row is the
    model's own, the first filters are summed over RGB; another depth is refused."""
    from captcha_ml.charset import Charset
    from captcha_ml.config import ModelConfig
    from captcha_ml.data.transforms import Preprocess
    from captcha_ml.model import build_model

    symbols = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    cfg = ModelConfig(depth="layer2")
    torch.manual_seed(0)
    theirs = build_model(cfg, len(symbols) + 1, 3)
    path = checkpoint.save(tmp_path / "universal.pt", theirs, Charset(symbols),
                           Preprocess(40, 176, 3), cfg)
    mine = build_model(cfg, 5, 1)
    own_row = mine.classifier.weight[4].clone()  # "#": not among the 62
    tags = engine.init_weights(mine, str(path), Charset("a0Z#"))
    w, b = theirs.classifier.weight, theirs.classifier.bias
    for i, c in enumerate("a0Z"):
        assert torch.equal(mine.classifier.weight[i + 1], w[symbols.index(c) + 1]), c
        assert torch.equal(mine.classifier.bias[i + 1], b[symbols.index(c) + 1]), c
    assert torch.equal(mine.classifier.weight[0], w[0])  # the CTC blank
    assert torch.equal(mine.classifier.weight[4], own_row)
    assert torch.equal(mine.features[0].weight, theirs.features[0].weight.sum(1, keepdim=True))
    assert torch.equal(mine.features[4][1].conv2.weight, theirs.features[4][1].conv2.weight)
    assert tags["init_same_charset"] == "False" and tags["init_shared_symbols"] == "3/4"
    with pytest.raises(engine.TrainingError, match="does not match model"):
        engine.init_weights(build_model(ModelConfig(depth="layer3"), 5, 1), str(path),
                            Charset("a0Z#"))
