"""The logged pyfunc reader behind the real `mlflow models serve`: same texts, 400 for garbage."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from captcha_ml.reader import Reader
from captcha_ml.serving import CaptchaReaderModel
from reader_fixtures import trained  # noqa: F401 (session fixture)

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict, timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(payload).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    """`mlflow models serve` on the reader URI; yields the base URL, stops the server after."""
    port = _free_port()
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": trained["tracking_uri"],
           "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                             trained["reader_uri"], "--env-manager", "local", "--host",
                             "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _wait_ready(url: str, proc: subprocess.Popen, log, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    log.seek(0)
    pytest.fail(f"server not ready after {timeout} s:\n{log.read()[-3000:]}")


def test_server_reads_like_the_reader(server, trained):
    files = trained["test_files"][:4]
    expected = [r.text for r in Reader.load(trained["best_checkpoint"]).read_many(files)]
    payload = {"dataframe_split": {"columns": ["image"],
                                   "data": [[_b64(f.read_bytes())] for f in files]}}
    status, body = _post(server + "/invocations", payload)
    assert status == 200, body
    rows = body["predictions"]
    assert [r["text"] for r in rows] == expected and not any(r["error"] for r in rows)


def test_server_reports_bad_rows_and_refuses_garbage(server, trained):
    good = _b64(trained["test_files"][0].read_bytes())
    mixed = {"dataframe_split": {"columns": ["image"],
                                 "data": [[good], [_b64(b"not an image")], ["%%%not base64"]]}}
    status, body = _post(server + "/invocations", mixed)
    assert status == 200, body
    errors = [r["error"] for r in body["predictions"]]
    assert errors[0] == "" and "row 1" in errors[1] and "base64" in errors[2]
    for garbage in ({"dataframe_split": {"columns": ["image"], "data": [[_b64(b"junk")]]}},
                    {"dataframe_split": {"columns": ["picture"], "data": [[good]]}},
                    {"nothing": "here"}):
        status, body = _post(server + "/invocations", garbage)
        assert status == 400, (garbage, status, body)


def test_pyfunc_in_process_accepts_lists_and_names_missing_column(trained):
    mlflow.set_tracking_uri(trained["tracking_uri"])
    model = mlflow.pyfunc.load_model(trained["reader_uri"])
    good = _b64(trained["test_files"][0].read_bytes())
    out = model.predict(pd.DataFrame({"image": [good, "xx"]}))
    assert list(out.columns) == ["text", "confidence", "error"] and out["error"][1]
    raw = model.unwrap_python_model()
    assert isinstance(raw, CaptchaReaderModel)
    assert raw.predict(None, [good])["text"][0] == out["text"][0]
    with pytest.raises(MlflowException, match="no 'image' column") as e:
        raw.predict(None, pd.DataFrame({"picture": [good]}))
    assert e.value.get_http_status_code() == 400
