"""Plain-text tables for the terminal: evaluation reports and run comparisons."""

from __future__ import annotations

from typing import Any, Sequence

RUN_COLUMNS = ["stage", "status", "train.epochs", "train.lr", "data.train", "best/val_seq_acc",
               "val/seq_acc", "test/seq_acc", "test/cer"]


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[_fmt(c) for c in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def evaluation_text(report: dict[str, Any], max_misread: int = 20) -> str:
    m = report["metrics"]
    views = " with test-time views (--no-tta: without)" if report.get("tta") else ""
    parts = [f"model {report['model']} on {report['data']} ({int(m['count'])} images){views}",
             table([[f"{report['split']}/{k}", m[k]] for k in ("seq_acc", "char_acc", "cer", "loss")],
                   ["metric", "value"]),
             table([[i, acc] for i, acc in enumerate(report["per_position"])],
                   ["position", "accuracy"])]
    if report["confusions"]:
        parts.append(table([[c["true"], c["pred"], c["count"]] for c in report["confusions"]],
                           ["true", "read as", "count"]))
    misread = report["misread"]
    if misread:
        rows = [[r["label"], r["pred"], r["path"]] for r in misread[:max_misread]]
        more = f"\n... and {len(misread) - max_misread} more (--json lists all)" \
            if len(misread) > max_misread else ""
        parts.append(table(rows, ["label", "read", "file"]) + more)
    if report.get("skipped"):
        parts.append(f"skipped {len(report['skipped'])} unusable file(s) (--json lists them)")
    if report.get("run_id"):
        parts.append(f"logged to MLflow run {report['run_id']}")
    return "\n\n".join(parts)


def runs_text(runs: list[dict[str, Any]], extra: Sequence[str] = ()) -> str:
    if not runs:
        return "no runs yet"
    columns = [c for c in [*RUN_COLUMNS, *extra] if any(c in r for r in runs)]
    rows = [[r["run_id"][:8], r["name"], *[r.get(c) for c in columns]] for r in runs]
    return table(rows, ["run", "name", *columns])
