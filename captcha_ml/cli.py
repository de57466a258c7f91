"""Command line: parses options and calls one function per command; no logic of its own."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Callable, Optional

import typer

from captcha_ml.charset import LabelError
from captcha_ml.config import ConfigError, DataConfig
from captcha_ml.data.real import DataError
from captcha_ml.data.transforms import ImageError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, LabelError, ImageError, DataError)

app = typer.Typer(help="Train, track and serve captcha readers.", rich_markup_mode="rich",
                  no_args_is_help=True)
data_app = typer.Typer(help="Fetch, split, generate and inspect data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _late_errors() -> tuple[type[Exception], ...]:
    """Errors of the heavy modules (torch, accelerate, mlflow), imported only when needed."""
    from captcha_ml.checkpoint import CheckpointError
    from captcha_ml.engine import TrainingError
    from captcha_ml.tracking import TrackingError

    return (CheckpointError, TrackingError, TrainingError, FileNotFoundError, PermissionError,
            IsADirectoryError, NotADirectoryError)


def friendly_errors(fn: Callable) -> Callable:
    """Turn the project's input errors into a red one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        # Our own messages at INFO; libraries (accelerate, mlflow) only when they warn.
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("captcha_ml").setLevel(logging.INFO)
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not (isinstance(e, USER_ERRORS) or isinstance(e, _late_errors())):
                raise
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper


@data_app.command("fetch")
@friendly_errors
def data_fetch(
    dest: Path = typer.Option(Path("data/captcha_images_v2"), help="Folder to create."),
    source: Optional[str] = typer.Option(None, "--from", help="Local folder, .zip or URL "
                                         "instead of the public download."),
) -> None:
    """Download the 1040-image real set and verify its checksum."""
    from captcha_ml.data.real import fetch

    typer.echo(f"ready: {fetch(dest, source)}")


@data_app.command("split")
@friendly_errors
def data_split(
    source: Path = typer.Argument(..., help="Folder of labeled images or a manifest "
                                  "(.csv or .tsv: path,label)."),
    out: Path = typer.Option(Path("data/splits"), help="Folder for train/valid/test.csv."),
    seed: int = typer.Option(0),
    test: int = typer.Option(400, help="Test images."),
    valid: int = typer.Option(120, help="Validation images."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unusable files and report them."),
) -> None:
    """Deterministic train/valid/test split by image content and seed."""
    from captcha_ml.data.real import make_splits

    paths, data = make_splits(source, out, seed=seed, test=test, valid=valid, skip_bad=skip_bad)
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")
    if data.skipped:
        typer.echo(f"skipped {len(data.skipped)} bad file(s)")


@data_app.command("generate")
@friendly_errors
def data_generate(
    out: Path = typer.Option(Path("data/synthetic"), help="Folder for train/ and valid/."),
    train: int = typer.Option(100_000, help="Training images."),
    valid: int = typer.Option(10_000, help="Validation images."),
    style: str = typer.Option("real", help="Style preset: real or captcha."),
    charset: str = typer.Option(DataConfig.charset, help="Symbols to draw labels from."),
    length: Optional[int] = typer.Option(None, help="Fixed label length (sets min and max)."),
    min_len: int = typer.Option(DataConfig.min_len),
    max_len: int = typer.Option(DataConfig.max_len),
    width: int = typer.Option(DataConfig.width),
    height: int = typer.Option(DataConfig.height),
    seed: int = typer.Option(0),
    workers: int = typer.Option(os.cpu_count() or 1, help="Processes that render images."),
) -> None:
    """Write synthetic captchas to disk (resumable); training can also render them on the fly."""
    from captcha_ml.data.synthetic import generate_sets, preset

    lo, hi = (length, length) if length else (min_len, max_len)
    spec = preset(style, charset=charset, min_len=lo, max_len=hi, width=width, height=height)
    for name, path in generate_sets(out, train, valid, spec, seed=seed, workers=workers).items():
        typer.echo(f"{name}: {path}")


@data_app.command("inspect")
@friendly_errors
def data_inspect(path: Path = typer.Argument(..., help="Folder of labeled images or a CSV.")) -> None:
    """Counts, charset, label lengths and image sizes."""
    from captcha_ml.data.real import describe

    for key, value in describe(path).items():
        typer.echo(f"{key}: {value}")


OVERRIDES = typer.Option([], "--set", help="Config overrides: section.key=value (repeatable).")
TTA = typer.Option(None, "--tta/--no-tta", help="Average test-time views (6x the compute) or "
                   "read each image once; default: as the model was trained (data.tta).")


def _launched() -> bool:
    """True inside a process started by accelerate launch / torchrun."""
    return os.environ.get("LOCAL_RANK") is not None


@app.command()
@friendly_errors
def train(
    config_path: Path = typer.Argument(..., metavar="CONFIG", help="YAML file (experiments/)."),
    overrides: list[str] = OVERRIDES,
    resume: bool = typer.Option(False, help="Continue from <train.output_dir>/state."),
    num_processes: int = typer.Option(1, help="Processes (GPUs, or CPU processes) to launch."),
) -> None:
    """Pretrain or finetune (the config decides), logging to MLflow."""
    from captcha_ml import config, launch

    cfg = config.load(config_path, overrides)  # fail on a bad config before launching anything
    if num_processes > 1 and not _launched():
        args = ["train", str(config_path), *[f"--set={o}" for o in overrides if o.strip()]]
        raise typer.Exit(launch.run(num_processes, args + (["--resume"] if resume else []),
                                    cfg.train.mixed_precision))
    from captcha_ml import engine

    result = engine.train(cfg, resume=resume)
    if result["run_id"]:
        typer.echo(f"best validation {result['val']} at step {result['best_step']}")
        typer.echo(f"checkpoint: {result['best_checkpoint']}  run: {result['run_id']}")


@app.command()
@friendly_errors
def evaluate(
    model: str = typer.Argument(..., help="Checkpoint path or MLflow URI (runs:/..., models:/...)."),
    data: Path = typer.Argument(..., help="Labeled folder or manifest (.csv or .tsv: path,label)."),
    config_path: Optional[Path] = typer.Option(None, "--config", help="YAML for batch size, "
                                               "workers and tracking."),
    overrides: list[str] = OVERRIDES,
    split: str = typer.Option("test", help="Metric prefix: test/seq_acc, ..."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    log: bool = typer.Option(True, help="Log the evaluation to MLflow."),
    tta: Optional[bool] = TTA,
) -> None:
    """Sequence and character accuracy, CER, per-position accuracy, confusions, misreads."""
    import json

    from captcha_ml import config, engine, report

    cfg = config.load(config_path, overrides)
    result = engine.evaluate_model(cfg, model, str(data), split=split, log=log, tta=tta)
    typer.echo(json.dumps(result, indent=2) if as_json else report.evaluation_text(result))


@app.command()
@friendly_errors
def runs(
    experiment: str = typer.Option("captcha_ml", help="MLflow experiment name."),
    tracking_uri: str = typer.Option("", help="Default: MLFLOW_TRACKING_URI or ./mlflow.db."),
    columns: list[str] = typer.Option([], "--column", help="Extra param or metric to show."),
    limit: int = typer.Option(20, help="Newest runs to list."),
) -> None:
    """Compare the runs of an experiment: key params and metrics as a table."""
    from captcha_ml import report, tracking

    tracking.resolve_uri(tracking_uri)
    typer.echo(report.runs_text(tracking.runs_table(experiment, limit), columns))


@app.command()
@friendly_errors
def pipeline(
    data: str = typer.Option("data/captcha_images_v2", help="Real labeled images."),
    splits: str = typer.Option("data/splits", help="Where split writes the manifests."),
    pretrain_config: str = typer.Option("experiments/pretrain.yaml"),
    finetune_config: str = typer.Option("experiments/finetune.yaml"),
    overrides: list[str] = OVERRIDES,
    num_processes: int = typer.Option(1),
) -> None:
    """split -> pretrain -> finetune -> evaluate, as MLflow child runs of one parent run."""
    from captcha_ml import pipeline as steps

    ids = steps.run(data, splits, pretrain_config, finetune_config, " ".join(overrides),
                    num_processes)
    for step, run_id in ids.items():
        typer.echo(f"{step}: {run_id}")


@app.command()
@friendly_errors
def predict(
    model: str = typer.Argument(..., help="Checkpoint, MLflow URI (runs:/..., models:/...) or "
                                "an exported .onnx file (with --engine onnx)."),
    inputs: list[str] = typer.Argument(..., help="Image files, folders, globs, or - for image "
                                       "bytes on stdin."),
    engine: str = typer.Option("torch", help="torch or onnx."),
    batch_size: int = typer.Option(32, min=1, help="Images per forward pass."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list."),
    tta: Optional[bool] = TTA,
) -> None:
    """Read captchas: prints path<TAB>text<TAB>confidence; exit 1 if any input failed."""
    import json
    import sys

    from captcha_ml.reader import ReadError, predict as read_inputs

    results = read_inputs(model, inputs, engine, batch_size, stdin=sys.stdin.buffer.read, tta=tta)
    rows = []
    for name, r in results:
        if isinstance(r, ReadError):
            typer.secho(f"error: {r.message}", fg=typer.colors.RED, err=True)
            rows.append({"path": name, "text": None, "confidence": None, "error": r.message})
        else:
            rows.append({"path": name, "text": r.text, "confidence": r.confidence, "error": None})
            if not as_json:
                typer.echo(f"{name}\t{r.text}\t{r.confidence:.4f}")
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
    if any(row["error"] for row in rows):
        raise typer.Exit(1)


export_app = typer.Typer(help="Export a trained model to other formats.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("onnx")
@friendly_errors
def export_onnx(
    model: str = typer.Argument(..., help="Checkpoint path or MLflow URI."),
    out: Path = typer.Argument(..., help="The .onnx file to write."),
    int8: list[str] = typer.Option([], "--int8", help="Quantize to int8, calibrated on these "
                                   "images (folder, glob or manifest .csv; repeatable)."),
    calibration_count: int = typer.Option(128, help="Images drawn for int8 calibration."),
) -> None:
    """ONNX with a dynamic batch axis; charset and preprocessing ride in its metadata."""
    from captcha_ml.reader import export_onnx as export

    path = export(model, out, int8, calibration_count)
    typer.echo(f"wrote {path}" + (" (int8)" if int8 else ""))


@app.command()
@friendly_errors
def register(
    run_id: str = typer.Argument(..., help="The training run whose reader to register."),
    name: str = typer.Option(..., "--name", help="Registered model name."),
    metric: str = typer.Option("test/seq_acc", help="Higher is better; the run's own or its "
                               "evaluate run's (tag evaluated_run_id)."),
    tracking_uri: str = typer.Option("", help="Default: MLFLOW_TRACKING_URI or ./mlflow.db."),
) -> None:
    """Register the run's reader as a new version; move the alias `champion` if it is better."""
    from captcha_ml import tracking

    tracking.resolve_uri(tracking_uri)
    r = tracking.register(run_id, name, metric)
    prev = r["previous"]
    held = f"v{prev['version']} ({metric} {prev['score']:.4f})" if prev else "nobody"
    verdict = "now holds" if r["moved"] else "does not beat"
    typer.echo(f"registered {r['name']} v{r['version']} ({metric} {r['score']:.4f}); "
               f"{verdict} '{r['alias']}' " + (f"(was {held})" if r["moved"] else f"{held}"))


@app.command()
@friendly_errors
def fit(
    data: Path = typer.Argument(..., help="Folder of labeled images (label = file name before "
                                "the first _ or .) or a manifest (.csv or .tsv: path,label)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: outputs/fit/<DATA name>)."),
    case_insensitive: bool = typer.Option(False, "--case-insensitive",
                                          help="Lower-case labels and charset."),
    budget_minutes: float = typer.Option(18.0, min=0.5, help="Wall time for the whole command, "
                                         "in minutes (training takes most of it)."),
    config_path: Optional[Path] = typer.Option(None, "--config", help="An edited OUT/fit.yaml "
                                               "to rerun with."),
    name: str = typer.Option("", help="Registered model name (default: captcha-<OUT name>)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unusable files and report them."),
    seed: int = typer.Option(0, help="Split and training seed."),
    max_steps: int = typer.Option(0, hidden=True, help="Steps per stage (quick trials, tests)."),
    tracking_uri: str = typer.Option("", help="Default: MLFLOW_TRACKING_URI or ./mlflow.db."),
    reuse_pretrain: bool = typer.Option(True, help="Reuse OUT/pretrain when its pretraining "
                                        "settings and style are unchanged (e.g. a --config "
                                        "rerun that edits only finetuning)."),
    precision: str = typer.Option("auto", help="Training precision: auto (bfloat16 autocast "
                                  "where the probe finds it faster, e.g. CPUs with AMX), no "
                                  "(float32) or bf16."),
    match_stroke: bool = typer.Option(False, help="Thin or thicken the synthetic glyphs to "
                                      "the sample's measured stroke width (helped a sample "
                                      "drawn in thin faces, hurt one drawn in a single regular "
                                      "serif: see docs/fit.md)."),
    universal: bool = typer.Option(True, help="Start pretraining from the universal model "
                                   "shipped with captcha_ml (general glyph features; "
                                   "--no-universal: random weights)."),
    font_match: bool = typer.Option(True, help="Where one bundled face clearly draws the "
                                    "sample's glyphs, half the synthetic glyphs are drawn in "
                                    "it (--no-font-match: the font mix only)."),
    fonts: list[Path] = typer.Option([], "--fonts", help="A font file (.ttf, .otf, .ttc) or a "
                                     "folder of them that your captchas are drawn in "
                                     "(repeatable): they draw half the synthetic glyphs or "
                                     "more, fit's mix the rest, instead of --font-match."),
    likeness: bool = typer.Option(True, help="Tune the synthetic style's curve width, specks, "
                                  "fragments, rotation, glyph warp, noise dots, spacing, glyph "
                                  "heights and strike lines to look most like the sample to "
                                  "the universal model (--no-likeness: fit's broad defaults)."),
    glyphs: bool = typer.Option(True, help="Compose finetuning's synthetic half of the train "
                                "images' own glyphs, cut where the pretrained model places "
                                "each symbol (--no-glyphs: render it from the style)."),
) -> None:
    """Train a reader for a new captcha style from labeled examples: inspect, split, match the
    style, pretrain on synthetic, finetune, test, register (one MLflow parent run "fit")."""
    from captcha_ml import fit as fitting

    fitting.run(data, out, not case_insensitive, budget_minutes,
                str(config_path) if config_path else None, name, max_steps, tracking_uri, seed,
                skip_bad, reuse_pretrain, precision, say=typer.echo, match_stroke=match_stroke,
                universal=universal, font_match=font_match, likeness=likeness, glyphs=glyphs,
                fonts=tuple(fonts))
