"""Inference speed and accuracy on the real test split: torch, ONNX Runtime, and ddddocr.

    python benchmarks/inference_speed.py [CHECKPOINT] [--test-csv data/splits/test.csv] \
        [--calibration data/splits/train.csv]

Make the split first if it is missing:
    captcha-ml data split ../shared/data/captcha_images_v2 --out data/splits

Every timing is end to end from encoded PNG bytes in memory: decode, preprocess, forward, CTC
decode. "single" reads one image per call (latency median / p90); "batched" reads the whole
split with read_many (images/s). The int8 row is the ONNX export quantized with calibration
images from --calibration (the training split, never the test split). "same as torch" is the
share of images whose text equals the PyTorch model's. ddddocr (pip install ddddocr; not a
project dependency) has no batch API, so its images/s is 1 / mean single latency.

Throughput is also given as a fraction of what the model's FLOPs allow at this CPU's peak: the
peak is measured (best of several large matrix products, float32 by torch and by ONNX Runtime,
int8 by ONNX Runtime's MatMulInteger), and int8 rows are compared with the int8 peak. On a
shared machine numbers move with the load: compare rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from captcha_ml import checkpoint
from captcha_ml.reader import Reader, Reading, available_cpus, export_onnx

REAL_CHARSET = "2345678bcdefgmnpwxy"


def load_split(path: Path) -> tuple[list[bytes], list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [Path(r["path"]).read_bytes() for r in rows], [r["label"] for r in rows]


def latency(fn: Callable[[bytes], str], images: list[bytes],
            warmup: int = 5) -> tuple[list[float], list[str]]:
    """Seconds per call and the text read, for each image (after a few warm-up calls)."""
    for img in images[:warmup]:
        fn(img)
    times, texts = [], []
    for img in images:
        t = time.perf_counter()
        texts.append(fn(img))
        times.append(time.perf_counter() - t)
    return times, texts


def accuracy(preds: list[str], labels: list[str]) -> float:
    return sum(p == y for p, y in zip(preds, labels)) / max(1, len(labels))


def bench_reader(reader: Reader, images: list[bytes], labels: list[str], n_single: int,
                 batch_size: int, passes: int = 2) -> dict:
    single, _ = latency(lambda b: reader.read(b).text, images[:n_single])
    reader.read_many(images[:batch_size], batch_size)  # warm-up
    elapsed = float("inf")
    for _ in range(passes):  # best pass: the least disturbed by other load
        t = time.perf_counter()
        results = reader.read_many(images, batch_size)
        elapsed = min(elapsed, time.perf_counter() - t)
    preds = [r.text if isinstance(r, Reading) else "" for r in results]
    return {"single": single, "ips": len(images) / elapsed, "acc": accuracy(preds, labels),
            "texts": preds}


def restricted_decode(out: dict, allowed: str) -> str:
    """Greedy CTC over ddddocr's per-frame probabilities with only `allowed` symbols + blank."""
    charset = out.get("charset") or out.get("charsets")
    probs = np.asarray(out.get("probabilities") or out.get("probability"), dtype=np.float32)
    probs = probs.reshape(-1, probs.shape[-1])
    symbols = set(allowed)
    keep = np.array([i == 0 or c.lower() in symbols for i, c in enumerate(charset)])
    ids = np.where(keep, probs, -1.0).argmax(axis=1)
    text, prev = [], 0
    for i in ids:
        if i != prev and i != 0:
            text.append(charset[i].lower())
        prev = i
    return "".join(text)


def bench_ddddocr(images: list[bytes], labels: list[str], n_single: int) -> list[tuple[str, dict]]:
    try:
        import ddddocr
    except ImportError:
        print("ddddocr not installed (pip install ddddocr): skipped")
        return []
    ocr = ddddocr.DdddOcr(show_ad=False)
    rows: list[tuple[str, dict]] = []
    plain = lambda b: ocr.classification(b).lower()  # noqa: E731
    ocr_ranged = ddddocr.DdddOcr(show_ad=False)
    ocr_ranged.set_ranges(REAL_CHARSET)
    ranged = lambda b: restricted_decode(ocr_ranged.classification(b, probability=True),  # noqa: E731
                                         REAL_CHARSET)
    for name, fn in (("ddddocr default", plain), ("ddddocr ranges+prob", ranged)):
        times, preds = latency(fn, images)
        rows.append((name, {"single": times[:n_single], "ips": len(times) / sum(times),
                            "acc": accuracy(preds, labels)}))
    return rows


def model_flops(path: str) -> float:
    """Forward FLOPs per image (FlopCounterMode: 2 per multiply-add)."""
    model, _, pre, _ = checkpoint.load(path)
    x = torch.zeros(1, pre.channels, pre.height, pre.width)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return float(counter.get_total_flops())


def _best_seconds(fn: Callable[[], object], trials: int) -> float:
    fn()
    best = float("inf")
    for _ in range(trials):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _ort_matmul(n: int, int8: bool, threads: int) -> Callable[[], object]:
    """A one-node ONNX Runtime graph: (n x n) @ (n x n), float32 MatMul or u8 x s8 MatMulInteger."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    a_type, b_type = (TensorProto.UINT8, TensorProto.INT8) if int8 else (TensorProto.FLOAT,) * 2
    node = helper.make_node("MatMulInteger" if int8 else "MatMul", ["a", "b"], ["c"])
    graph = helper.make_graph([node], "peak", [helper.make_tensor_value_info("a", a_type, [n, n]),
                                               helper.make_tensor_value_info("b", b_type, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.INT32 if int8
                                                             else TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = ({"a": rng.integers(0, 255, (n, n), dtype=np.uint8),
              "b": rng.integers(-127, 127, (n, n), dtype=np.int8)} if int8 else
             {"a": rng.standard_normal((n, n), dtype=np.float32),
              "b": rng.standard_normal((n, n), dtype=np.float32)})
    return lambda: sess.run(None, feeds)


def cpu_peaks(threads: int, n: int = 2048, trials: int = 8) -> dict[str, float]:
    """Measured ops/s: float32 (best of torch and ONNX Runtime matmul) and int8 (ORT)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    flops = 2 * n**3
    fp32 = max(flops / _best_seconds(lambda: a @ b, trials),
               flops / _best_seconds(_ort_matmul(n, False, threads), trials))
    return {"fp32": fp32, "int8": flops / _best_seconds(_ort_matmul(n, True, threads), trials)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", nargs="?", default="outputs/finetune/best.pt",
                    help="Default: the finetuned model of the README's main command.")
    ap.add_argument("--test-csv", default="data/splits/test.csv")
    ap.add_argument("--calibration", default="data/splits/train.csv",
                    help="Images for int8 calibration (folder or manifest); empty: no int8 row.")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--single", type=int, default=100, help="Images timed one by one.")
    ap.add_argument("--threads", type=int, default=available_cpus())
    ap.add_argument("--no-ddddocr", action="store_true")
    args = ap.parse_args()

    images, labels = load_split(Path(args.test_csv))
    torch.set_num_threads(args.threads)
    readers = [("torch", Reader.load(args.checkpoint, threads=args.threads)),
               ("onnx fp32", Reader.load(args.checkpoint, engine="onnx", threads=args.threads))]
    if args.calibration:
        with tempfile.TemporaryDirectory() as tmp:
            q = export_onnx(args.checkpoint, Path(tmp) / "int8.onnx", [args.calibration])
            readers.append(("onnx int8", Reader.load(q, engine="onnx", threads=args.threads)))
    rows = []
    for name, reader in readers:
        r = bench_reader(reader, images, labels, args.single, args.batch_size)
        rows.append((name, r))
    if not args.no_ddddocr:
        rows += bench_ddddocr(images, labels, args.single)
    flops, peaks = model_flops(args.checkpoint), cpu_peaks(args.threads)
    torch_texts = rows[0][1]["texts"]
    fastest_dddd = min((statistics.median(r["single"]) for n, r in rows if n.startswith("dddd")),
                       default=None)
    print(f"\n{len(images)} images from {args.test_csv}; model {args.checkpoint}; "
          f"{args.threads} threads; batch {args.batch_size}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"model: {flops / 1e9:.3f} GFLOP/image; measured peak: float32 "
          f"{peaks['fp32'] / 1e9:.1f} GFLOP/s, int8 {peaks['int8'] / 1e9:.1f} GOP/s")
    print(f"{'reader':<20}{'median ms':>10}{'p90 ms':>9}{'vs dddd':>8}{'img/s':>9}{'% peak':>8}"
          f"{'seq acc':>9}{'same as torch':>14}")
    for name, r in rows:
        ms = sorted(t * 1000 for t in r["single"])
        med = statistics.median(ms)
        peak = peaks["int8" if "int8" in name else "fp32"]
        frac = f"{100 * r['ips'] * flops / peak:7.1f}%" if not name.startswith("ddddocr") else "      -"
        ratio = f"{med / 1000 / fastest_dddd:8.2f}" if fastest_dddd else "       -"
        same = (f"{accuracy(r['texts'], torch_texts):>14.3f}" if "texts" in r else f"{'-':>14}")
        print(f"{name:<20}{med:>10.2f}{ms[int(0.9 * (len(ms) - 1))]:>9.2f}{ratio}"
              f"{r['ips']:>9.1f}{frac:>8}{r['acc']:>9.3f}{same}")


if __name__ == "__main__":
    main()
