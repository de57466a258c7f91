"""The `main` MLproject entry point: split -> pretrain -> finetune -> evaluate, one parent run.

Each step runs as its own MLproject entry point (so it is reproducible alone) in a child run
created here with the `mlflow.parentRunId` tag; the steps are chained by run ids.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from . import tracking


def _child(client: MlflowClient, parent, step: str, params: dict[str, str], project: str) -> str:
    run = client.create_run(parent.info.experiment_id, run_name=step,
                            tags={"mlflow.parentRunId": parent.info.run_id, "stage": step})
    submitted = mlflow.projects.run(project, entry_point=step, parameters=params,
                                    env_manager="local", run_id=run.info.run_id)
    if submitted.get_status() != "FINISHED":
        raise tracking.TrackingError(f"pipeline step {step} ended {submitted.get_status()}; "
                                     f"see run {run.info.run_id} in `mlflow ui`")
    return run.info.run_id


def run(data: str, splits: str = "data/splits", pretrain_config: str = "experiments/pretrain.yaml",
        finetune_config: str = "experiments/finetune.yaml", overrides: str = "",
        num_processes: int = 1, project: str = ".") -> dict[str, str]:
    """Run the whole pipeline; returns the run id of each step."""
    tracking.check_reachable()
    client = MlflowClient()
    ids: dict[str, str] = {}
    with mlflow.start_run(run_name="pipeline", tags={"stage": "pipeline"}) as parent:
        ids["split"] = _child(client, parent, "split", {"source": data, "out": splits}, project)
        common = {"overrides": overrides, "num_processes": str(num_processes)}
        ids["pretrain"] = _child(client, parent, "pretrain",
                                 {"config": pretrain_config, **common}, project)
        ids["finetune"] = _child(client, parent, "finetune", {
            "config": finetune_config, "init_from": f"runs:/{ids['pretrain']}/checkpoints/best.pt",
            "train": str(Path(splits) / "train.csv"), "valid": str(Path(splits) / "valid.csv"),
            **common}, project)
        ids["evaluate"] = _child(client, parent, "evaluate", {
            "model": f"runs:/{ids['finetune']}/checkpoints/best.pt",
            "data": str(Path(splits) / "test.csv")}, project)
        mlflow.set_tags({f"{k}_run_id": v for k, v in ids.items()})
        test = client.get_run(ids["evaluate"]).data.metrics
        mlflow.log_metrics({k: v for k, v in test.items() if k.startswith("test/")})
    return ids
