"""Everything MLflow: the run, params, metrics, datasets, artifacts, the logged model, lookups.

Only the main process creates a ``Tracker``; other ranks never call mlflow, so they never open
stray runs (see DESIGN.md, traps).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.tracking import MlflowClient

from .config import Config

CHECKPOINT_NAME = "captcha_ml_checkpoint.pt"


class TrackingError(RuntimeError):
    """The tracking server or a run/model URI cannot be used."""


def resolve_uri(uri: str = "") -> str:
    """The tracking URI in effect: the config's, else MLFLOW_TRACKING_URI, else MLflow's default."""
    if uri:
        mlflow.set_tracking_uri(uri)
    return mlflow.get_tracking_uri()


def check_reachable(uri: str = "", timeout: float = 5.0) -> str:
    """Fail fast (before any training) when an HTTP tracking server does not answer."""
    uri = resolve_uri(uri)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                r.read()
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({getattr(e, 'reason', e)}); start it "
                "(`mlflow server --host 127.0.0.1 --port 5000`) or set tracking.tracking_uri / "
                "MLFLOW_TRACKING_URI to a reachable server, or unset it for ./mlflow.db") from e
    return uri


def check_model_name(name: str) -> str:
    """A registered model's name as MLflow accepts it, checked before any work: it refuses an
    empty name and one holding '/' or ':' only when registering, after the training."""
    if not name.strip() or any(c in name for c in "/:"):
        raise TrackingError(f"model name {name!r}: give a non-empty name without '/' or ':' "
                            "(MLflow's rule for registered models), e.g. 'captcha-mysite'")
    return name


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def path_digest(path: str | Path) -> str:
    """Short digest of a manifest's bytes, or of a folder's sorted file names and sizes."""
    p = Path(path)
    if p.is_file():
        return hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    listing = sorted(f"{f.relative_to(p)} {f.stat().st_size}" for f in p.rglob("*") if f.is_file())
    return text_digest("\n".join(listing))


class Tracker:
    """One MLflow run for one stage.

    Under `mlflow run` it attaches to MLFLOW_RUN_ID; inside an active run of this process
    (`captcha-ml fit`, a notebook) it opens a child run; otherwise a new run in
    ``tracking.experiment``.
    """

    def __init__(self, cfg: Config, run_id: str | None = None):
        self.cfg = cfg
        check_reachable(cfg.tracking.tracking_uri)
        attached = os.environ.get("MLFLOW_RUN_ID")
        parent = mlflow.active_run()
        if not attached and parent is None:
            mlflow.set_experiment(cfg.tracking.experiment)
        tags = {"stage": cfg.train.stage, "git_commit": git_commit()}
        if run_id and not attached:  # resuming: keep logging into the interrupted run
            self.run = mlflow.start_run(run_id=run_id, nested=parent is not None)
        else:
            self.run = mlflow.start_run(run_name=cfg.tracking.run_name or cfg.train.stage,
                                        tags=tags, nested=parent is not None)
        self.run_id = self.run.info.run_id
        self.client = MlflowClient()

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params once; keys already on the run (e.g. `mlflow run -P` ones) are left alone."""
        existing = self.client.get_run(self.run_id).data.params
        fresh = {k: str(v) for k, v in params.items() if k not in existing}
        if fresh:
            mlflow.log_params(fresh)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)

    def log_dataset(self, name: str, source: str, digest: str, context: str) -> None:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset

        """Record a dataset: a local path (folder or manifest), or generated when source is ''."""
        if source:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": all local
                warnings.simplefilter("ignore", UserWarning)
                src = resolve_dataset_source(source)
        else:
            src = CodeDatasetSource(tags={"generator": "captcha_ml.data.synthetic"})
        mlflow.log_input(MetaDataset(src, name=name, digest=digest), context=context)

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        mlflow.log_dict(data, name)

    def log_image(self, image, name: str) -> None:
        mlflow.log_image(image, name)

    def log_model(self, model, checkpoint: str | Path, input_example) -> str:
        """Log the network with mlflow.pytorch (pt2) and our checkpoint inside it; returns its URI."""
        import mlflow.pytorch
        from mlflow.models import infer_signature

        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / CHECKPOINT_NAME
            ckpt.write_bytes(Path(checkpoint).read_bytes())
            with torch.no_grad():
                out = model(torch.from_numpy(input_example)).numpy()
            # MLflow checks the logged model on its example by loading it, onto the GPU where
            # there is one, and a torch.export program (exported here on the CPU) cannot move.
            with _prediction_device("cpu"):
                info = mlflow.pytorch.log_model(
                    model, name="model", input_example=input_example,
                    signature=infer_signature(input_example, out), extra_files=[str(ckpt)],
                    pip_requirements=_requirements())
        return info.model_uri

    def log_reader(self, checkpoint_path: str | Path) -> str:
        """Log the pyfunc reader (base64 images -> text, confidence, error) as "reader"; its URI."""
        import mlflow.pyfunc
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        from . import serving
        from .data.transforms import Preprocess
        from .checkpoint import load_payload

        pre = Preprocess.from_dict(load_payload(checkpoint_path)["preprocess"])
        signature = ModelSignature(
            inputs=Schema([ColSpec("string", serving.COLUMN)]),
            outputs=Schema([ColSpec("string", "text"), ColSpec("double", "confidence"),
                            ColSpec("string", "error")]))
        info = mlflow.pyfunc.log_model(
            name="reader", python_model=serving.CaptchaReaderModel(),
            artifacts={serving.ARTIFACT: str(checkpoint_path)}, signature=signature,
            input_example=serving.example_input(pre), pip_requirements=_requirements())
        return info.model_uri

    def end(self, status: str = "FINISHED") -> None:
        mlflow.end_run(status=status)


@contextlib.contextmanager
def _prediction_device(device: str):
    """MLFLOW_DEFAULT_PREDICTION_DEVICE while the block runs, unless the user set it."""
    name = "MLFLOW_DEFAULT_PREDICTION_DEVICE"
    if os.environ.get(name):
        yield
        return
    os.environ[name] = device
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _requirements() -> list[str]:
    from importlib.metadata import version
    return [f"{p}=={version(p)}" for p in ("torch", "torchvision", "mlflow", "pillow")]


def download_checkpoint(uri: str) -> Path:
    """A local captcha_ml checkpoint for a path or an MLflow model URI (runs:/, models:/, ...)."""
    if "://" not in uri and ":/" not in uri:
        return Path(uri)
    check_reachable()  # MLflow itself retries an unreachable server for minutes
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as e:
        raise TrackingError(f"cannot download model {uri!r} from {mlflow.get_tracking_uri()} "
                            f"({type(e).__name__}: {e}); check the run id / model name and "
                            "MLFLOW_TRACKING_URI") from e
    found = sorted(local.rglob(CHECKPOINT_NAME)) if local.is_dir() else [local]
    if not found:
        raise TrackingError(f"{uri}: no {CHECKPOINT_NAME} inside; was it logged by captcha_ml?")
    return found[0]


def runs_table(experiment: str, max_results: int = 50) -> list[dict[str, Any]]:
    """Runs of an experiment, newest first, with key params and last metrics."""
    check_reachable()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        raise TrackingError(f"no experiment {experiment!r} at {mlflow.get_tracking_uri()}; "
                            "train first or pass --experiment")
    rows = []
    for run in MlflowClient().search_runs([exp.experiment_id], max_results=max_results,
                                          order_by=["attributes.start_time DESC"]):
        rows.append({"run_id": run.info.run_id, "name": run.info.run_name,
                     "status": run.info.status, "stage": run.data.tags.get("stage", ""),
                     **{k: v for k, v in run.data.params.items()},
                     **{k: v for k, v in run.data.metrics.items()}})
    return rows


def run_accuracy(client: MlflowClient, run_id: str, metric: str) -> tuple[float, str] | None:
    """The run's own ``metric``, else the newest evaluate run's tagged evaluated_run_id=run_id."""
    run = client.get_run(run_id)
    if metric in run.data.metrics:
        return run.data.metrics[metric], run_id
    experiments = [e.experiment_id for e in client.search_experiments()]
    evals = client.search_runs(experiments, f"tags.evaluated_run_id = '{run_id}'",
                               order_by=["attributes.start_time DESC"])
    for ev in evals:
        if metric in ev.data.metrics:
            return ev.data.metrics[metric], ev.info.run_id
    return None


def register(run_id: str, name: str, metric: str = "test/seq_acc",
             alias: str = "champion") -> dict[str, Any]:
    """Register a run's reader as a new version; move ``alias`` only when it beats the holder."""
    check_model_name(name)
    check_reachable()
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except Exception as e:
        raise TrackingError(f"run {run_id!r} not found at {mlflow.get_tracking_uri()} "
                            f"({type(e).__name__}); check the id and MLFLOW_TRACKING_URI") from e
    found = run_accuracy(client, run_id, metric)
    if found is None:
        raise TrackingError(f"run {run_id} has no {metric} metric and no evaluate run tagged "
                            f"evaluated_run_id={run_id}; run `captcha-ml evaluate "
                            f"runs:/{run_id}/checkpoints/best.pt data/splits/test.csv` first")
    score, source_run = found
    uri = run.data.tags.get("reader_uri") or f"runs:/{run_id}/reader"
    try:
        version = mlflow.register_model(uri, name, tags={metric: str(score),
                                                         "metric_run_id": source_run})
    except Exception as e:
        raise TrackingError(f"cannot register {uri} as {name!r} ({type(e).__name__}: {e}); "
                            "was the run trained with tracking.log_model=true?") from e
    champion = _alias_holder(client, name, alias, metric)
    best = champion is None or score > champion[1]
    if best:
        client.set_registered_model_alias(name, alias, version.version)
    return {"name": name, "version": int(version.version), "run_id": run_id, "metric": metric,
            "score": score, "alias": alias, "moved": best,
            "previous": None if champion is None else
            {"version": int(champion[0]), "score": champion[1]}}


def _alias_holder(client: MlflowClient, name: str, alias: str,
                  metric: str) -> tuple[str, float] | None:
    """(version, score) of the version holding ``alias``, or None when no version holds it."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    if metric in mv.tags:
        return mv.version, float(mv.tags[metric])
    found = run_accuracy(client, mv.run_id, metric) if mv.run_id else None
    return mv.version, found[0] if found else float("-inf")
