"""`captcha-ml fit`, the whole command: a reader for a new captcha style from labeled examples.

inspect -> model input -> split -> style, font matching, noise tuning -> configs -> pretrain
on style-matched synthetic captchas -> zero-shot check -> glyph bank (the train part's glyphs,
cut at the pretrained model's alignment) -> finetune on the real train part and captchas
composed of its glyphs -> test -> register, under one MLflow parent run "fit" (pretrain,
zero_shot, finetune, test are its child runs).
Every choice is printed and logged to the parent run. Files under OUT:

  splits/{train,valid,test}.csv  the deterministic split (content hash + seed)
  style.yaml                     the derived SyntheticSpec (editable; data.style points here)
  fit.yaml                       sections fit / pretrain / finetune: the resolved configs;
                                 edit and pass back with --config to rerun with your changes
  glyphs/                        the glyph bank finetuning composes captchas of (samples.png:
                                 some of them)
  inspection.json, style_samples.png, pretrain/, finetune/ (checkpoints), fit_report.txt
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import checkpoint, config, files
from ..config import Config
from ..data import synthetic
from ..data.datasets import available_cores
from ..data.real import DataError, read_manifest
from ..data.synthetic import SyntheticSpec
from . import budget
from .advice import advice, confusion_line
from .bank import SAMPLES_FILE, cut_bank
from .budget import (DEFAULT_BUDGET_MINUTES, FALLBACK_IMAGES_PER_S, FINAL_RESERVE_S,
                     FINETUNE_MAX_HEIGHT, FINETUNE_TEXT_ROWS, POOL_REUSE, PRECISIONS, Probe,
                     input_cost, model_input, plan_budget, replan_finetune)
from . import configs
from .configs import (FINETUNE_AUGMENT_STRENGTH, FINETUNE_SYNTHETIC_SHARE, UNIVERSAL_WEIGHTS,
                      adopt_style, build_configs, override_precision, read_fit_yaml, repoint,
                      universal_start, write_fit_yaml)
from .fonts import given_fonts, match_fonts, usable_fonts, use_given_fonts
from .likeness import tune_style
from .reuse import PRETRAIN_RECORD, reusable_pretraining, write_pretrain_record
from .sample import Inspection, inspect, inspection_notes, make_split, split_sizes
from .style import (TextLayout, derive_style, other_shape, sample_stats, style_samples,
                    text_layout)


class _Notes:
    """Print each choice and keep it for fit_report.txt."""

    def __init__(self, say) -> None:
        self.lines: list[str] = []
        self.say = say

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self.say(line)


def _configs(insp: Inspection, out: Path, spec: SyntheticSpec, splits: dict[str, Path],
             budget_minutes: float, config_path: str | None, max_steps: int, seed: int,
             precision: str, note: _Notes, layout: TextLayout | None = None,
             universal: bool = True, glyphs: bool = True
             ) -> tuple[Config, Config, dict[str, Any]]:
    """``layout``: where the sample's text lies (style.text_layout): the crop, and the width
    share of one symbol in it, decide the model input; ``universal``: pretraining starts from
    the universal model (where it is installed); ``glyphs``: finetuning's synthetic half is
    composed of the train part's glyphs (build_configs)."""
    layout = layout or TextLayout()
    size, share = layout.cropped(insp.size)
    height, width, why = model_input(size, insp.max_len, symbol_share=share)
    fine_h, fine_w, fine_why = model_input(size, insp.max_len, FINETUNE_MAX_HEIGHT, share,
                                           layout.text_share * insp.size[1], FINETUNE_TEXT_ROWS)
    inputs = {"pretrain": (height, width), "finetune": (fine_h, fine_w)}
    if config_path:
        pre, fine = read_fit_yaml(config_path)
        pretrained_in = pre.train.output_dir  # the run that wrote it may be reusable
        repoint(pre, fine, out, splits)
        note(f"configs: from {config_path} (budget not applied; paths follow --out)")
        note(f"model input (from the configs): pretraining {pre.data.height}x{pre.data.width}, "
             f"finetuning {fine.data.height}x{fine.data.width} (height x width), crop "
             f"{fine.data.crop or 'none'}")
        info = {"config": str(config_path), "config_pretrain_dir": pretrained_in}
        note(override_precision(pre, fine, precision))
    else:
        note(f"model input: pretraining {why}; finetuning "
             + ("the same" if (fine_h, fine_w) == (height, width) else fine_why))
        probe = (Probe(FALLBACK_IMAGES_PER_S, "no" if precision == "auto" else precision, {},
                       f"--precision {precision} (--max-steps: no probe)")
                 if max_steps else  # --max-steps decides the steps: no probe needed
                 budget.probe_throughput(spec, height, width, insp.channels,
                                         len(insp.charset) + 1, precision))
        ips = probe.images_per_s
        plan = plan_budget(budget_minutes, ips, max_steps,
                           input_cost(inputs["pretrain"], inputs["finetune"]), probe.render_s,
                           available_cores(), FINETUNE_SYNTHETIC_SHARE)
        plan.precision, plan.loader_workers = probe.precision, budget.loader_workers()
        note(f"precision: {'bfloat16 autocast' if probe.precision == 'bf16' else 'float32'}"
             f" (train.mixed_precision={probe.precision}): {probe.why}")
        init = universal_start() if universal else ""
        pre, fine = build_configs(insp, out, inputs, plan, splits, seed, layout.crop, init,
                                  glyphs)
        known = checkpoint.load_payload(init)["charset"]["symbols"] if init else ""
        shared = sum(c in known for c in insp.charset)
        note(f"pretraining starts from the universal model {init} ({shared} of the "
             f"{len(insp.charset)} symbols known to it; --no-universal: random weights)"
             if init else "pretraining starts from random weights" + (
                 "" if not universal else f" ({UNIVERSAL_WEIGHTS} is missing)"))
        note(f"budget: {budget_minutes:g} min at ~{ips:.0f} training images/s (probe) -> pretrain "
             f"{plan.pretrain_steps} steps x {plan.pretrain_batch} synthetic images (at most "
             f"{plan.pretrain_minutes:g} min: train.max_minutes), finetune "
             f"{plan.finetune_steps} steps x {plan.finetune_batch} images (real, augmented at "
             f"strength {FINETUNE_AUGMENT_STRENGTH:g}; "
             f"{FINETUNE_SYNTHETIC_SHARE:.0%} synthetic: rendered from the style"
             + (", or composed of the train part's glyphs where the pretrained model reads the "
                f"real valid part below {configs.GLYPHS_BELOW:g})" if glyphs else
                "; --no-glyphs)"))
        note(f"synthetic pools: {plan.pretrain_pool} images for pretraining, "
             f"{plan.finetune_pool} for finetuning, rendered before each stage by "
             f"{available_cores()} processes ({1000 * probe.render_s:.1f} ms an image each), "
             f"each image used ~{POOL_REUSE} times; data.num_workers={plan.loader_workers}")
        info = {"budget_minutes": budget_minutes, "pretrain_init": init or "random",
                "probe_images_per_s": round(ips, 1),
                "probe_step_images_per_s": probe.step_images_per_s,
                "probe_render_ms": round(1000 * probe.render_s, 2), **asdict(plan)}
    info["symbol_share"] = round(layout.symbol_share, 4)
    info["text_share"] = round(layout.text_share, 4)  # the text's height: finetuning's input
    if max_steps:  # quick runs (tests, trials): few steps, one evaluation, small synthetic valid
        for cfg in (pre, fine):
            cfg.train.max_steps, cfg.train.eval_every = max_steps, max_steps
        pre.data.synthetic_valid_size = min(pre.data.synthetic_valid_size, 32)
    return pre, fine, info


def _fit_section(insp: Inspection, splits: dict[str, Path], info: dict[str, Any]) -> dict[str, Any]:
    return {"data": insp.path, "images": len(insp.samples), "charset": insp.charset,
            "case_sensitive": insp.case_sensitive, "lengths": [insp.min_len, insp.max_len],
            "source_size": list(insp.size), "channels": insp.channels,
            "splits": {k: str(v) for k, v in splits.items()}, **info}


def _log_parent(out: Path, section: dict[str, Any], insp: Inspection, spec: SyntheticSpec) -> None:
    import mlflow

    flat = {f"fit.{k}": v for k, v in section.items() if not isinstance(v, dict)}
    style = {f"style.{k}": v for k, v in spec.to_dict().items() if k != "fonts"}
    style["style.fonts"] = ",".join(Path(f).name for f in spec.fonts)
    mlflow.log_params({k: str(v)[:500] for k, v in {**flat, **style}.items()})
    mlflow.set_tags({"stage": "fit", "fit.style_drawer": spec.style,
                     "fit.warnings": str(sum(n.startswith("warning") for n in inspection_notes(insp)))})
    if section.get("likeness"):
        mlflow.log_metrics({"fit/likeness_derived": section["likeness"]["distance_derived"],
                            "fit/likeness_tuned": section["likeness"]["distance_tuned"]})
    for name in ("fit.yaml", "style.yaml", "inspection.json", "style_samples.png"):
        mlflow.log_artifact(str(out / name))
    for path in section["splits"].values():
        mlflow.log_artifact(path, "splits")
    for face in section.get("fonts_given", {}).get("files", []):  # style.yaml names them by path
        mlflow.log_artifact(face, "fonts")


def _eval_config(pre: Config, run_name: str) -> Config:
    return config.load(None, [f"tracking.tracking_uri={pre.tracking.tracking_uri}",
                              f"tracking.experiment={pre.tracking.experiment}",
                              f"tracking.run_name={run_name}", "data.num_workers=0"])


def _start_name(pre: Config) -> str:
    if not pre.train.init_from:
        return "random weights"
    same = Path(pre.train.init_from).resolve() == UNIVERSAL_WEIGHTS.resolve()
    return "the universal model" if same else Path(pre.train.init_from).name


def _valid_name(pre: Config) -> str:
    return "synthetic valid" if pre.data.valid == "synthetic" else "real valid part"


def _train(pre: Config, fine: Config, splits: dict[str, Path], note: _Notes,
           deadline: float | None = None, replanned=None,
           record: dict[str, Any] | None = None, render_s: float = 0.0) -> dict[str, Any]:
    """pretrain -> zero-shot on valid -> finetune -> test: each a child run of the active run.
    With a ``record`` (`reusable_pretraining`), its pretrained model is used instead of training.
    With a ``deadline`` (perf_counter seconds), finetuning gets the time left (`replan_finetune`)
    (``render_s``: the probe's seconds to render one synthetic image, for finetuning's pool)
    and ``replanned()`` is called after the finetune config changed."""
    import mlflow

    from .. import engine

    times, t0 = {}, time.perf_counter()
    if record:
        pre_result, pre_seconds = record["result"], record["seconds"]
        note(f"pretrain: reusing {pre_result['best_checkpoint']} (same pretraining settings and "
             f"style as the run {pre_result['run_id']} that wrote it; --no-reuse-pretrain trains "
             f"again): {_valid_name(pre)} seq_acc {pre_result['val'].get('seq_acc', 0):.4f}")
        mlflow.set_tags({"fit.pretrain_reused_from_run": str(pre_result["run_id"])})
    else:
        record_path = Path(pre.train.output_dir) / PRETRAIN_RECORD
        record_path.unlink(missing_ok=True)  # best.pt is about to change
        pre_result = engine.train(pre)
        pre_seconds = time.perf_counter() - t0
        write_pretrain_record(pre, pre_result, pre_seconds)
        stopped = (f"; stopped early, {pre.train.early_stop_patience} validations without a "
                   "better one: finetuning gets the time left" if pre_result.get("stopped_early")
                   else "")
        note(f"pretrain: {_valid_name(pre)} seq_acc {pre_result['val'].get('seq_acc', 0):.4f} "
             f"at step {pre_result['best_step']} of {pre_result['steps']}{stopped} "
             f"({pre_seconds / 60:.1f} min)")
    times["pretrain"] = time.perf_counter() - t0
    zero = engine.evaluate_model(_eval_config(pre, "zero_shot"), pre_result["best_checkpoint"],
                                 str(splits["valid"]), split="valid")["metrics"]
    mlflow.log_metrics({f"zero_shot/valid_{k}": v for k, v in zero.items() if k != "count"})
    start = pre_result.get("start") or {}  # absent: validate_start off, or an older record
    if start:
        mlflow.log_metrics({f"zero_shot/start_valid_{k}": start[k]
                            for k in ("seq_acc", "char_acc")})
    note(f"zero-shot (pretrained only) on the real valid part: seq_acc {zero['seq_acc']:.4f}, "
         f"char_acc {zero['char_acc']:.4f}"
         + (f" (before pretraining, {_start_name(pre)}: {start['seq_acc']:.4f}, "
            f"{start['char_acc']:.4f})" if start else ""))
    if fine.data.glyphs:
        _glyphs(pre_result["best_checkpoint"], zero["seq_acc"], fine, splits, note)
    if deadline is not None:
        ips = pre_result["steps"] * pre.train.batch_size / max(pre_seconds, 1e-6)
        fine_ips = budget.config_images_per_s(fine)
        left = deadline - time.perf_counter()
        planned = fine.train.max_steps
        fine.train.max_steps, fine.data.synthetic_pool = replan_finetune(
            planned, fine.train.batch_size, left, fine_ips, fine.data.synthetic_share, render_s,
            available_cores())
        fine.train.eval_every = max(1, fine.train.max_steps // 10)
        # A machine that slows down mid-run (a shared VM) must not overrun the budget: the
        # steps then shrink to the time (alnum62 once finetuned at 100-120 images/s where
        # 136 were timed, and the fit took 20.3 minutes of its 18).
        fine.train.max_minutes = round(max(left, 1.0) / 60, 3)
        fine.train.fill_time = True  # and grow to the time where the rate was timed too low
        note(f"budget: pretraining ran at {ips:.0f} images/s, finetuning at {fine_ips:.0f} "
             f"(timed on its own data); {left / 60:.1f} min left -> finetune "
             f"{fine.train.max_steps} steps (planned {planned}), a pool of "
             f"{fine.data.synthetic_pool} synthetic images; fewer if the machine slows, "
             f"more if it runs faster (train.max_minutes={fine.train.max_minutes:g}, "
             "train.fill_time)")
        mlflow.log_params({"fit.finetune_steps_replanned": fine.train.max_steps,
                           "fit.pretrain_images_per_s": round(ips, 1),
                           "fit.finetune_images_per_s": round(fine_ips, 1)})
        if replanned:
            replanned()
    t1 = time.perf_counter()
    fine_result = engine.train(fine)
    times["finetune"] = time.perf_counter() - t1
    note(f"finetune: valid seq_acc {fine_result['val'].get('seq_acc', 0):.4f} "
         f"({times['finetune'] / 60:.1f} min)")
    test = engine.evaluate_model(_eval_config(pre, "test"), fine_result["best_checkpoint"],
                                 str(splits["test"]), split="test")
    mlflow.log_metrics({f"test/{k}": v for k, v in test["metrics"].items()})
    return {"pretrain": pre_result, "zero_shot": zero, "finetune": fine_result, "test": test,
            "times": times}


def _glyphs(pretrained: str, zero_shot: float, fine: Config, splits: dict[str, Path],
            note: _Notes) -> None:
    """Where the pretrained model reads the real valid part below GLYPHS_BELOW, cut the glyph
    bank finetuning's synthetic half is composed of (fine.data.glyphs); else render that half
    from the style (fine.data.glyphs = "")."""
    import mlflow

    def render(why: str) -> None:
        fine.data.glyphs = ""
        note(f"glyphs: none cut{why}, so finetuning's synthetic half is rendered from the "
             "style (data.glyphs='')")
        mlflow.log_param("fit.glyphs", "rendered")

    if zero_shot >= configs.GLYPHS_BELOW:
        return render(f"; the style's pretrained model reads the real valid part at "
                      f"{zero_shot:.2f} (>= {configs.GLYPHS_BELOW:g})")
    try:
        bank, line = cut_bank(pretrained, splits["train"], fine.data.glyphs)
    except DataError as e:  # nothing to cut: the style is still there to render
        return render(f" ({e})")
    share = fine.data.glyph_share
    note(f"{line}: the style's pretrained model reads the real valid part at {zero_shot:.2f} "
         f"(< {configs.GLYPHS_BELOW:g}); data.glyph_share={share:g}"
         + (", the rest rendered from the style" if share < 1 else ""))
    mlflow.log_param("fit.glyphs", "composed")
    mlflow.log_metrics({"fit/glyphs": bank.count, "fit/glyph_symbols": len(bank.glyphs)})
    mlflow.log_artifact(str(Path(fine.data.glyphs) / SAMPLES_FILE), "glyphs")


def _register(fine_run_id: str, name: str, note: _Notes) -> dict[str, Any]:
    """tracking.register: a new version of the reader; alias champion if it beats the holder."""
    from .. import tracking

    r = tracking.register(fine_run_id, name)
    note(f"registered {r['name']} v{r['version']} (test/seq_acc {r['score']:.4f})"
         + (f"; alias '{r['alias']}' now points to it" if r["moved"] else
            f"; alias '{r['alias']}' stays on v{r['previous']['version']}"))
    return r


def _prepare(data: str | Path, out: Path, case_sensitive: bool, skip_bad: bool,
             keep_style: bool, seed: int, note: _Notes, match_stroke: bool = False,
             font_match: bool = True, likeness: bool = True, fonts: tuple[Path, ...] = ()
             ) -> tuple[Inspection, dict[str, Path], SyntheticSpec, TextLayout, dict[str, Any]]:
    """Steps 1, 3, 4: inspect, split, derive (or keep, with --config) the style, match its
    fonts (or draw in the FONTS given) and tune its noise; also where the text lies (for the
    model input), and the font match's and the tuning's summaries (under "fonts" and
    "likeness")."""
    insp = inspect(data, case_sensitive, skip_bad)
    for line in inspection_notes(insp):
        note(line)
    files.write_text(out / "inspection.json", json.dumps(insp.summary(), indent=1, default=str))
    splits = make_split(insp, out, seed)
    note(f"split: {split_sizes(len(insp.samples))} (valid, test) images by content hash, seed "
         f"{seed}; rest train -> {out / 'splits'}")
    stats = sample_stats(insp, seed=seed)
    spec, style_notes = derive_style(insp, seed=seed, stats=stats, match_stroke=match_stroke)
    for line in style_notes:
        note(line)
    style_file = out / "style.yaml"
    found: dict[str, Any] = {}
    if keep_style and style_file.exists():
        note(f"style: keeping {style_file} (it may hold your edits)")
    else:
        if fonts:
            symbols = spec.charset + (spec.charset.swapcase() if spec.mixed_case else "")
            faces, skipped = usable_fonts(fonts, symbols)
            for line in skipped:
                note(line)
            spec, line = use_given_fonts(spec, faces)
            note(line)
            found["fonts_given"] = {"files": list(faces)}  # fit.yaml; params name the faces
        elif font_match:
            spec, ranked, line = match_fonts(insp, spec, universal_start(), seed)
            note(line)
            found["fonts"] = ranked.summary() if ranked else {}
        if likeness:
            derived = spec
            spec, alike, line = tune_style(
                insp, spec, universal_start(), seed,
                other_shape=lambda: other_shape(derived, stats, match_stroke))
            note(line)
            found["likeness"] = alike.summary() if alike else {}
        synthetic.save_style(spec, style_file, "# derived by captcha-ml fit; edit and rerun with "
                             "--config OUT/fit.yaml (a face listed n times draws n shares)\n")
    spec = SyntheticSpec(**synthetic.load_style(style_file))
    style_samples(insp, spec).save(out / "style_samples.png")
    layout = text_layout(stats)
    if not keep_style:  # with --config the configs' crop holds
        note(layout.why)
    return insp, splits, spec, layout, found


EDITABLE = ("fit.yaml", "style.yaml")  # what a user edits in OUT; a fresh fit rewrites them


def set_aside(out: Path) -> Path | None:
    """Before a fresh fit (no --config) into an OUT that holds an earlier one: move its
    EDITABLE files to OUT/previous/<time>/, so no edit is lost; returns that folder (None: there
    was nothing to move)."""
    found = [out / name for name in EDITABLE if (out / name).is_file()]
    if not found:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = out / "previous" / stamp, 1
    while dest.exists():
        n += 1
        dest = out / "previous" / f"{stamp}-{n}"
    dest.mkdir(parents=True)
    for f in found:
        f.replace(dest / f.name)
    return dest


def run(data: str | Path, out: str | Path | None = None, case_sensitive: bool = True,
        budget_minutes: float = DEFAULT_BUDGET_MINUTES, config_path: str | None = None,
        name: str = "", max_steps: int = 0, tracking_uri: str = "", seed: int = 0,
        skip_bad: bool = False, reuse_pretrain: bool = True, precision: str = "auto",
        say=print, match_stroke: bool = False, universal: bool = True,
        font_match: bool = True, likeness: bool = True, glyphs: bool = True,
        fonts: tuple[str | Path, ...] = ()) -> dict[str, Any]:
    """The whole fit (see the module docstring); returns metrics, run ids, files and times.
    FONTS: font files or folders of them that draw the synthetic glyphs (see fonts.py)."""
    import mlflow

    from .. import tracking

    if precision not in PRECISIONS:
        raise config.ConfigError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    start = time.perf_counter()
    out = Path(out or Path("outputs/fit") / Path(data).resolve().stem)  # "." names its folder
    name = tracking.check_model_name(name or f"captcha-{out.name}")  # before any work
    tracking.check_reachable(tracking_uri)  # --config's own URI is checked once it is read
    if not Path(data).exists():  # before OUT is made
        raise DataError(f"{data}: no such folder or manifest; check the path")
    if fonts and config_path:
        raise config.ConfigError("--fonts applies to a fresh fit; with --config the style is "
                                 "OUT/style.yaml's: list the font files under its `fonts`")
    font_files = given_fonts(fonts) if fonts else ()
    out.mkdir(parents=True, exist_ok=True)
    note = _Notes(say)
    if config_path:
        adopt_style(config_path, out)
    else:
        kept = set_aside(out)
        if kept:
            note(f"{out} held an earlier fit: its fit.yaml and style.yaml (with any edits) are "
                 f"kept in {kept}; to rerun them, copy them back and pass --config "
                 f"{out / 'fit.yaml'}")
    insp, splits, spec, layout, found = _prepare(
        data, out, case_sensitive, skip_bad, bool(config_path), seed, note, match_stroke,
        font_match, likeness, font_files)
    pre, fine, info = _configs(insp, out, spec, splits, budget_minutes, config_path, max_steps,
                               seed, precision, note, layout, universal, glyphs)
    if not glyphs:  # a --config rerun too
        fine.data.glyphs = ""
    fonts_found = found.get("fonts")
    if fonts_found:  # fit.yaml keeps every face's score; the parent run the face chosen
        info["font_match"], info["font_scores"] = fonts_found["chosen"], fonts_found
    if found.get("fonts_given"):
        info["fonts_given"] = found["fonts_given"]
    if found.get("likeness"):  # fit.yaml keeps every distance measured
        info["likeness"] = found["likeness"]
    for cfg in (pre, fine):
        cfg.tracking.tracking_uri = tracking_uri or cfg.tracking.tracking_uri
    folders = [out / "pretrain"] + ([Path(info["config_pretrain_dir"])]
                                    if "config_pretrain_dir" in info else [])
    record = reusable_pretraining(pre, folders) if reuse_pretrain else None
    if record:  # finetuning starts from it, wherever it is
        fine.train.init_from = record["result"]["best_checkpoint"]
    section = _fit_section(insp, splits, info)
    write_fit_yaml(out / "fit.yaml", section, pre, fine)
    tracking.check_reachable(pre.tracking.tracking_uri)
    mlflow.set_experiment(pre.tracking.experiment)
    # The budget holds for the whole command: finetuning gets what pretraining left of it,
    # less a reserve for the test, registration and logging.
    deadline = (start + 60 * budget_minutes - FINAL_RESERVE_S
                if "budget_minutes" in info and not max_steps else None)

    def replanned() -> None:  # fit.yaml says what ran, so a --config rerun repeats it
        section["finetune_steps_replanned"] = fine.train.max_steps
        write_fit_yaml(out / "fit.yaml", section, pre, fine)
        mlflow.log_artifact(str(out / "fit.yaml"))

    with mlflow.start_run(run_name="fit") as parent:
        _log_parent(out, section, insp, spec)
        result = _train(pre, fine, splits, note, deadline, replanned, record,
                        info.get("probe_render_ms", 0.0) / 1000)
        reg = _register(result["finetune"]["run_id"], name, note)
        minutes = (time.perf_counter() - start) / 60
        mlflow.log_metric("fit/minutes", minutes)
        summary = _summary(result, reg, minutes, out, parent.info.run_id,
                           len(read_manifest(splits["train"]).samples))
        for line in summary:
            note(line)
        files.write_text(out / "fit_report.txt", "\n".join(note.lines) + "\n")
        mlflow.log_artifact(str(out / "fit_report.txt"))
    return {"out": str(out), "parent_run_id": parent.info.run_id, "minutes": minutes,
            "test": result["test"]["metrics"], "zero_shot": result["zero_shot"],
            "registered": reg, "best_checkpoint": result["finetune"]["best_checkpoint"],
            "run_ids": {"pretrain": result["pretrain"]["run_id"],
                        "finetune": result["finetune"]["run_id"],
                        "test": result["test"].get("run_id")}, "inspection": insp.summary()}


def _summary(result: dict[str, Any], reg: dict[str, Any], minutes: float, out: Path,
             parent_id: str, train_images: int) -> list[str]:
    t, z, fine = result["test"]["metrics"], result["zero_shot"], result["finetune"]
    return ["--- fit summary ---",
            f"test: seq_acc {t['seq_acc']:.4f}  char_acc {t['char_acc']:.4f}  cer {t['cer']:.4f} "
            f"({int(t['count'])} images); zero-shot valid seq_acc {z['seq_acc']:.4f}",
            confusion_line(result["test"]),
            *advice(t["seq_acc"], fine["history"], train_images, fine["best_step"]),
            f"time: {minutes:.1f} min (pretrain {result['times']['pretrain'] / 60:.1f}, "
            f"finetune {result['times']['finetune'] / 60:.1f})",
            f"model: {fine['best_checkpoint']}; registered "
            f"models:/{reg['name']}/{reg['version']}",
            f"MLflow parent run {parent_id}; files in {out}"]
