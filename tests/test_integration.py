"""End to end through the real doors: `mlflow run` on the MLproject, `accelerate launch` with two
CPU processes, and an `mlflow server` over HTTP. Each test trains a tiny model (seconds)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from captcha_ml import launch
from captcha_ml.data.transforms import load_image
from helpers import ROOT, SMOKE, write_manifests

BIN = str(Path(sys.executable).parent)
REAL = "data.charset=2345678bcdefgmnpwxy data.min_len=5 data.max_len=5"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", ""),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", **extra}
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(leaked, None)  # set by MLflow in this process by earlier tests
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: Path = ROOT, timeout: int = 600) -> str:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout + proc.stderr


def _mlflow_run(entry: str, params: dict[str, str], env, experiment: str = "mlproject") -> None:
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry, "--env-manager",
           "local", "--experiment-name", experiment]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    _run(cmd, env)


def _runs_by_stage(client: MlflowClient, experiment: str) -> dict[str, list]:
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list] = {}
    for run in client.search_runs([exp.experiment_id]):
        out.setdefault(run.data.tags.get("stage"), []).append(run)
    return out


def test_mlproject_pretrain_finetune_evaluate(tmp_path, real_dir):
    env = _env(tmp_path)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    m = write_manifests(real_dir, tmp_path / "splits")
    common = f"{REAL} train.epochs=1 tracking.experiment=ignored"
    _mlflow_run("pretrain", {"config": str(SMOKE), "num_processes": "1",
                             "overrides": f"{common} train.output_dir={tmp_path / 'pre'}"}, env)
    pre = _runs_by_stage(client, "mlproject")["pretrain"][0]
    _mlflow_run("finetune", {
        "config": str(SMOKE), "init_from": f"runs:/{pre.info.run_id}/checkpoints/best.pt",
        "train": str(m["train"]), "valid": str(m["valid"]),
        "overrides": f"{common} train.stage=finetune train.output_dir={tmp_path / 'ft'}"}, env)
    ft = _runs_by_stage(client, "mlproject")["finetune"][0]
    _mlflow_run("evaluate", {"model": f"runs:/{ft.info.run_id}/checkpoints/best.pt",
                             "data": str(m["test"]), "config": str(ROOT / "experiments/evaluate.yaml")},
                env)
    runs = _runs_by_stage(client, "mlproject")
    assert sorted(runs) == ["evaluate", "finetune", "pretrain"]
    assert all(len(r) == 1 and r[0].info.status == "FINISHED" for r in runs.values())
    ft = client.get_run(ft.info.run_id)
    assert ft.data.tags["pretrain_run_id"] == pre.info.run_id
    assert ft.data.params["train.stage"] == "finetune" and ft.data.params["init_from"].startswith("runs:/")
    assert "val/seq_acc" in ft.data.metrics
    ev = runs["evaluate"][0]
    assert ev.data.metrics["test/count"] == 10
    assert {"test/seq_acc", "test/char_acc", "test/cer", "test/pos0_acc"} <= set(ev.data.metrics)
    assert "test_report.json" in {a.path for a in client.list_artifacts(ev.info.run_id)}
    # The logged model loads with plain mlflow.pytorch and reads a real image.
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    model = mlflow.pytorch.load_model(ft.data.tags["model_uri"])
    from captcha_ml.checkpoint import load
    _, charset, pre_fn, _ = load(tmp_path / "ft" / "best.pt")
    image = pre_fn(load_image(sorted(real_dir.glob("*.png"))[0])).unsqueeze(0)
    texts, _ = charset.ctc_decode(model(image))
    assert isinstance(texts[0], str)


def test_two_cpu_processes_make_one_run_and_count_every_image(tmp_path):
    # CPU processes; a visible GPU is hidden (with one GPU, rank 1's first barrier asked for
    # CUDA device 1 and failed, seen on an H200).
    env = _env(tmp_path, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    overrides = [f"train.output_dir={tmp_path / 'out'}", "data.synthetic_valid_size=15",
                 "data.synthetic_train_size=40", "train.epochs=2", "train.log_every=1",
                 f"tracking.tracking_uri={env['MLFLOW_TRACKING_URI']}", "tracking.log_model=false",
                 "tracking.experiment=ddp",
                 "train.ema_decay=0.9"]  # the weight average, its rank-0 statistics, under DDP
    out = _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "-m", "captcha_ml", "train", str(SMOKE),
                *[f"--set={o}" for o in overrides]], env)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("ddp").experiment_id])
    assert len(runs) == 1, out
    run = runs[0]
    assert run.data.params["data.synthetic_valid_size"] == "15"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    # 40 images / (2 processes x batch 8) = 3 steps per epoch, 2 epochs, a value per step.
    assert steps == [1, 2, 3, 4, 5, 6]
    counts = client.get_metric_history(run.info.run_id, "val/count") or []
    last = torch.load(tmp_path / "out" / "last.pt", weights_only=True)
    assert last["val"]["count"] == 15 and all(c.value == 15 for c in counts)


def test_launch_command_uses_real_cpu_processes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cmd, env = launch.accelerate_command(2, ["train", "x.yaml"])
    assert "--multi_gpu" in cmd and env["ACCELERATE_USE_CPU"] == "true"
    cmd, env = launch.accelerate_command(1, ["train", "x.yaml"])
    assert "--cpu" in cmd and "--multi_gpu" not in cmd


def test_launch_refuses_more_processes_than_gpus(monkeypatch):
    """On a GPU machine each process takes a GPU: more processes than GPUs is a clear error
    before anything starts, not a CUDA error in rank 1 after the data was built."""
    from captcha_ml.config import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="needs 2 GPUs on each of 1 machine.*this one has 1"):
        launch.accelerate_command(2, ["train", "x.yaml"])
    cmd, _ = launch.accelerate_command(4, ["train", "x.yaml"], num_machines=4)  # one per node
    assert "--multi_gpu" in cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(tmp_path))
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("mlflow server exited at start")
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not answer /health within 120 s")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def test_logs_to_a_real_tracking_server_over_http(tmp_path, mlflow_server, monkeypatch):
    from captcha_ml import engine
    from helpers import tiny_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config(tmp_path, f"tracking.tracking_uri={mlflow_server}", "train.epochs=1",
                      "tracking.experiment=remote")
    result = engine.train(cfg)
    client = MlflowClient(mlflow_server)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and "val/seq_acc" in run.data.metrics
    assert "checkpoints" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert (tmp_path / "artifacts").is_dir()
    mlflow.set_tracking_uri(mlflow_server)
    assert mlflow.pytorch.load_model(result["model_uri"]) is not None


def test_mlproject_main_chains_steps_under_one_parent(tmp_path, real_dir):
    env = _env(tmp_path)
    configs = {}
    for stage in ("pretrain", "finetune"):
        configs[stage] = tmp_path / f"{stage}.yaml"
        configs[stage].write_text(
            SMOKE.read_text().replace("stage: pretrain", f"stage: {stage}")
            .replace("output_dir: outputs/smoke", f"output_dir: {tmp_path / stage}"))
    _mlflow_run("main", {"data": str(real_dir), "splits": str(tmp_path / "splits"),
                         "pretrain_config": str(configs["pretrain"]),
                         "finetune_config": str(configs["finetune"]),
                         "overrides": f"{REAL} train.epochs=1 tracking.log_model=false "
                                      "data.synthetic_train_size=16"}, env, experiment="main")
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = _runs_by_stage(client, "main")
    assert sorted(runs) == ["evaluate", "finetune", "pipeline", "pretrain", "split"]
    parent = runs["pipeline"][0]
    for stage in ("split", "pretrain", "finetune", "evaluate"):
        (run,) = runs[stage]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert runs["evaluate"][0].data.metrics["test/count"] == 400
    assert parent.data.metrics["test/count"] == 400
    assert runs["finetune"][0].data.tags["pretrain_run_id"] == runs["pretrain"][0].info.run_id


def test_conda_env_lists_the_same_packages_as_pyproject():
    import tomllib

    import yaml

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    pip = next(d["pip"] for d in conda if isinstance(d, dict))
    assert sorted(deps) == sorted(p for p in pip if not p.startswith("-e"))
