"""Read captchas with a trained model: a checkpoint, an MLflow URI or an exported ONNX file.

``Reader`` owns the network and the preprocessing that came with it; nothing else decides how
an image is fed. Batch reading never lets one bad item spoil the others: each item gets a
``Reading`` or a ``ReadError`` naming it.
"""

from __future__ import annotations

import glob
import io
import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image

from . import checkpoint
from .charset import Charset
from .checkpoint import CheckpointError
from .data.real import IGNORED_SUFFIXES, MANIFEST_SUFFIXES, DataError, read_manifest
from .data.transforms import ImageError, ImageSource, Preprocess, average_views, load_image

ONNX_FORMAT = "captcha_ml/onnx/1"
INPUT_NAME, OUTPUT_NAME = "images", "log_probs"
ENGINES = ("torch", "onnx")
GRAPH_OPT = ("all", "extended", "basic", "none")


@dataclass(frozen=True)
class Reading:
    text: str
    confidence: float


@dataclass(frozen=True)
class ReadError:
    """An item that could not be read; ``message`` names the item and says why."""

    item: str
    message: str


Result = Union[Reading, ReadError]


def available_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS says so)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Reader:
    """A trained captcha reader: ``read`` one image, ``read_many`` in batches."""

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], charset: Charset,
                 preprocess: Preprocess, engine: str, source: str):
        self._forward = forward
        self.charset, self.preprocess, self.engine, self.source = charset, preprocess, engine, source

    @classmethod
    def load(cls, path_or_uri: str | Path, engine: str = "torch", threads: int | None = None,
             graph_opt: str = "all", tta: bool | None = None) -> "Reader":
        """A checkpoint path, an MLflow model URI, or (engine="onnx") an exported .onnx file.

        ``threads``: intra-op threads (default: the CPUs available to this process).
        ``graph_opt``: ONNX Runtime graph optimisation level (all, extended, basic, none).
        ``tta``: average test-time views (True) or read each image once (False); None reads
        as the model's preprocessing says (Preprocess.tta, set by data.tta when it trained).
        """
        reader = cls._load(path_or_uri, engine, threads, graph_opt)
        if tta is not None:
            reader.preprocess = replace(reader.preprocess, tta=tta)
        return reader

    @classmethod
    def _load(cls, path_or_uri: str | Path, engine: str, threads: int | None,
              graph_opt: str) -> "Reader":
        if engine not in ENGINES:
            raise CheckpointError(f"engine {engine!r}: use one of {', '.join(ENGINES)}")
        threads = threads or available_cpus()
        src = str(path_or_uri)
        if src.endswith(".onnx"):
            if engine != "onnx":
                raise CheckpointError(f"{src} is an ONNX file; read it with engine='onnx' "
                                      "(--engine onnx)")
            return cls._from_onnx_bytes(_read_onnx_file(src), src, threads, graph_opt)
        from . import tracking

        model, charset, pre, _ = checkpoint.load(tracking.download_checkpoint(src))
        if engine == "onnx":
            return cls._from_onnx_bytes(to_onnx_bytes(model, charset, pre), src, threads,
                                        graph_opt)
        return cls(_torch_forward(model, threads), charset, pre, "torch", src)

    @classmethod
    def _from_onnx_bytes(cls, data: bytes, src: str, threads: int, graph_opt: str) -> "Reader":
        import onnx

        meta = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
        if meta.get("captcha_ml.format") != ONNX_FORMAT:
            raise CheckpointError(f"{src}: ONNX model without captcha_ml metadata; export it "
                                  "with `captcha-ml export onnx CHECKPOINT OUT.onnx`")
        charset = Charset.from_dict(json.loads(meta["captcha_ml.charset"]))
        pre = Preprocess.from_dict(json.loads(meta["captcha_ml.preprocess"]))
        return cls(_onnx_forward(data, threads, graph_opt), charset, pre, "onnx", src)

    def log_probs(self, images: np.ndarray) -> np.ndarray:
        """(B, C, H, W) preprocessed float32 images -> (B, T, classes) log-probabilities."""
        return self._forward(np.ascontiguousarray(images, dtype=np.float32))

    def read(self, x: ImageSource) -> Reading:
        """One image (PIL image, path or bytes); raises ImageError naming it when unreadable."""
        result = self.read_many([x], batch_size=1)[0]
        if isinstance(result, ReadError):
            raise ImageError(result.message)
        return result

    def read_many(self, items: Sequence[Any], batch_size: int = 32,
                  names: Sequence[str] | None = None) -> list[Result]:
        """Read in batches; a bad item yields a ReadError in its place, the rest are read."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        names = list(names) if names is not None else [_name(x, i) for i, x in enumerate(items)]
        results: list[Result] = []
        for start in range(0, len(items), batch_size):
            chunk = range(start, min(start + batch_size, len(items)))
            results += self._read_batch([items[i] for i in chunk], [names[i] for i in chunk])
        return results

    def _read_batch(self, items: list[Any], names: list[str]) -> list[Result]:
        out: list[Result | None] = [None] * len(items)
        tensors, good = [], []
        for i, (item, name) in enumerate(zip(items, names)):
            try:
                tensors.append(self.preprocess.read(_open(item, name)))  # (views, C, H, W)
                good.append(i)
            except ImageError as e:
                out[i] = ReadError(name, str(e))
        if tensors:
            views = tensors[0].shape[0]
            log_probs = self.log_probs(torch.cat(tensors).numpy())
            texts, confs = self.charset.ctc_decode(average_views(torch.from_numpy(log_probs), views))
            for i, text, conf in zip(good, texts, confs):
                out[i] = Reading(text, float(conf))
        return out  # type: ignore[return-value]


def _name(item: Any, index: int) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    return f"item {index} ({type(item).__name__})"


def _open(item: Any, name: str) -> Image.Image:
    """load_image with the empty and wrong-type inputs named too."""
    if item is None or (isinstance(item, (bytes, bytearray, str)) and len(item) == 0):
        raise ImageError(f"{name}: empty input; pass image bytes, a path or a PIL image")
    if isinstance(item, bytearray):
        item = bytes(item)
    if not isinstance(item, (bytes, str, Path, Image.Image)):
        raise ImageError(f"{name}: cannot read a {type(item).__name__}; pass image bytes, "
                         "a path or a PIL image")
    return load_image(item, name)


def _torch_forward(model: torch.nn.Module, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    model.eval()

    def forward(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(images)).numpy()

    return forward


def _onnx_forward(data: bytes, threads: int, graph_opt: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    if graph_opt not in GRAPH_OPT:
        raise ValueError(f"graph_opt {graph_opt!r} is not one of {GRAPH_OPT}")
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[graph_opt]
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])

    def forward(images: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]

    return forward


def _read_onnx_file(path: str) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"ONNX model {p} not found; write one with "
                              "`captcha-ml export onnx CHECKPOINT OUT.onnx`")
    return p.read_bytes()


def to_onnx_bytes(model: torch.nn.Module, charset: Charset, preprocess: Preprocess,
                  opset: int = 17) -> bytes:
    """The network as a checked ONNX model (dynamic batch) with charset and preprocessing inside."""
    import onnx

    buf = io.BytesIO()
    example = torch.zeros(1, preprocess.channels, preprocess.height, preprocess.width)
    with warnings.catch_warnings():  # the TorchScript exporter: no onnxscript needed
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), (example,), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    proto = onnx.load_from_string(buf.getvalue())
    meta = {"captcha_ml.format": ONNX_FORMAT,
            "captcha_ml.charset": json.dumps(charset.to_dict()),
            "captcha_ml.preprocess": json.dumps(preprocess.to_dict())}
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def quantize_int8(data: bytes, calibration: np.ndarray) -> bytes:
    """Static int8 quantization (QDQ, per-channel weights) of an exported model.

    ``calibration``: preprocessed images (N, C, H, W) whose activation ranges set the scales;
    a hundred or so from the training data is plenty. The captcha_ml metadata is kept, plus
    ``captcha_ml.quantized = int8``.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration.ndim != 4 or len(calibration) == 0:
        raise ValueError("int8 quantization needs calibration images (N, C, H, W), N >= 1")

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(np.array_split(calibration.astype(np.float32),
                                           max(1, len(calibration) // 16)))

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {INPUT_NAME: batch}

    meta = list(onnx.load_from_string(data).metadata_props)
    with tempfile.TemporaryDirectory() as tmp:
        src, prepped, dst = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        Path(src).write_bytes(data)
        quant_pre_process(src, prepped, skip_symbolic_shape=True)
        quantize_static(prepped, dst, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        proto = onnx.load(dst)
    del proto.metadata_props[:]
    for p in meta:
        proto.metadata_props.add(key=p.key, value=p.value)
    proto.metadata_props.add(key="captcha_ml.quantized", value="int8")
    return proto.SerializeToString()


def calibration_images(preprocess: Preprocess, sources: Iterable[str], count: int = 128,
                       seed: int = 0) -> np.ndarray:
    """Up to ``count`` preprocessed images from files, folders, globs or manifests (.csv or .tsv
    with an image column), drawn with a fixed seed; unreadable files are an error naming them."""
    import random

    sources = [str(s) for s in sources]
    files: list[str] = []
    for src in sources:
        if Path(src).suffix.lower() in MANIFEST_SUFFIXES:  # labels not needed: no charset check
            files += [path for path, _ in read_manifest(src).samples]
        else:
            files += [str(x) for _, x in expand_inputs([src])]
    if not files:
        raise DataError(f"no calibration images found in {list(sources)}; give a folder of "
                         "training images or a manifest (data/splits/train.csv)")
    random.Random(seed).shuffle(files)
    return torch.stack([preprocess(load_image(f)) for f in files[:count]]).numpy()


def export_onnx(model_uri: str | Path, out: str | Path,
                calibration: Sequence[str] = (), calibration_count: int = 128) -> Path:
    """Write a checkpoint / MLflow model as a self-contained .onnx file (tmp + rename).

    With ``calibration`` sources (images of the training data), the file is quantized to int8.
    """
    from . import tracking

    model, charset, pre, _ = checkpoint.load(tracking.download_checkpoint(str(model_uri)))
    data = to_onnx_bytes(model, charset, pre)
    if calibration:
        data = quantize_int8(data, calibration_images(pre, calibration, calibration_count))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def expand_inputs(inputs: Iterable[str], stdin: Callable[[], bytes] | None = None
                  ) -> list[tuple[str, Any]]:
    """Command-line inputs -> (name, source): files, folders (their files but documentation:
    real.IGNORED_SUFFIXES), globs, '-' = stdin."""
    found: list[tuple[str, Any]] = []
    for arg in inputs:
        p = Path(arg)
        if arg == "-":
            found.append(("-", stdin() if stdin else b""))
        elif p.is_dir():  # its documentation (SOURCE.md, labels.csv) is not an image to read
            found += [(str(f), f) for f in sorted(p.iterdir())
                      if f.is_file() and not f.name.startswith(".")
                      and f.suffix.lower() not in IGNORED_SUFFIXES]
        elif not p.exists() and glob.has_magic(arg):
            matches = sorted(glob.glob(arg))
            found += [(m, Path(m)) for m in matches if Path(m).is_file()] or [(arg, p)]
        else:
            found.append((arg, p))  # a missing file is reported by read_many, by name
    return found


def predict(model: str, inputs: Iterable[str], engine: str = "torch", batch_size: int = 32,
            stdin: Callable[[], bytes] | None = None, tta: bool | None = None
            ) -> list[tuple[str, Result]]:
    """Read every image named on a command line; (name, Reading | ReadError) per image
    (``tta``: see Reader.load)."""
    reader = Reader.load(model, engine, tta=tta)
    named = expand_inputs(inputs, stdin)
    results = reader.read_many([s for _, s in named], batch_size, [n for n, _ in named])
    return [(n, r) for (n, _), r in zip(named, results)]
