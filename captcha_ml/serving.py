"""The MLflow pyfunc reader: base64 images in, text / confidence / error per row out.

Kept apart from ``reader`` so that reading captchas never needs mlflow. A bad row gets an
error message in its own row; only a request with nothing readable is refused as a whole
(INVALID_PARAMETER_VALUE, which the scoring server answers with HTTP 400).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from .reader import Reader, Reading

COLUMN = "image"
ARTIFACT = "checkpoint"


def _bad_request(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def images_column(model_input: Any) -> list[Any]:
    """The base64 strings of a DataFrame's `image` column, or of a plain list / Series."""
    if isinstance(model_input, pd.DataFrame):
        if COLUMN not in model_input.columns:
            raise _bad_request(f"the input has no '{COLUMN}' column (got "
                               f"{list(map(str, model_input.columns))}); send "
                               f'{{"dataframe_split": {{"columns": ["{COLUMN}"], '
                               '"data": [["<base64 image>"], ...]}}')
        return model_input[COLUMN].tolist()
    if isinstance(model_input, dict) and COLUMN in model_input:
        value = model_input[COLUMN]
        return list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(model_input, (list, tuple, pd.Series)):
        return list(model_input)
    if isinstance(model_input, str):
        return [model_input]
    raise _bad_request(f"cannot read a {type(model_input).__name__}; send a DataFrame with an "
                       f"'{COLUMN}' column of base64-encoded images")


def decode(value: Any, row: int) -> bytes | str:
    """Base64 text -> image bytes; an error message (str) when it is not base64."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        return f"row {row}: empty or non-text '{COLUMN}' value; send base64-encoded image bytes"
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        return f"row {row}: '{COLUMN}' is not valid base64 ({e})"


def read_rows(reader: Reader, values: list[Any]) -> pd.DataFrame:
    """One output row (text, confidence, error) per input value; raise only if none is readable."""
    decoded = [decode(v, i) for i, v in enumerate(values)]
    good = [i for i, d in enumerate(decoded) if isinstance(d, bytes)]
    results = reader.read_many([decoded[i] for i in good], names=[f"row {i}" for i in good])
    rows = [{"text": "", "confidence": 0.0, "error": d} for d in decoded]
    for i, r in zip(good, results):
        rows[i] = ({"text": r.text, "confidence": r.confidence, "error": ""}
                   if isinstance(r, Reading) else {"text": "", "confidence": 0.0, "error": r.message})
    if not rows or all(r["error"] for r in rows):
        detail = "; ".join(r["error"] for r in rows[:5]) or "no rows"
        raise _bad_request(f"no readable image in the request: {detail}")
    return pd.DataFrame(rows, columns=["text", "confidence", "error"])


class CaptchaReaderModel(mlflow.pyfunc.PythonModel):
    """Pyfunc around ``Reader``; the checkpoint is the model's only artifact."""

    def load_context(self, context) -> None:
        self.reader = Reader.load(context.artifacts[ARTIFACT])

    def predict(self, context, model_input, params=None):  # noqa: ANN001 (mlflow's signature)
        return read_rows(self.reader, images_column(model_input))


def example_input(reader_preprocess) -> pd.DataFrame:
    """A one-row input example: a blank image of the model's size, base64 PNG."""
    from PIL import Image

    img = Image.new("L", (reader_preprocess.width, reader_preprocess.height), 255)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return pd.DataFrame({COLUMN: [base64.b64encode(buf.getvalue()).decode()]})
