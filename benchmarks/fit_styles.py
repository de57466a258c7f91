"""`captcha-ml fit` on development styles that differ clearly from captcha_images_v2, and on
captcha_images_v2 itself (a real site's set).

    nice -n 10 python benchmarks/fit_styles.py                    # default styles and budget
    nice -n 10 python benchmarks/fit_styles.py --styles digits4 --budget-minutes 5

Each generated style renders N labeled images (ground truth from the seed), then runs the real
`fit` on that folder, knowing nothing of how it was made (fit derives its own style from the
pixels). Styles: `wheezy` comes from another generator on PyPI (wheezy.captcha: pip install
wheezy.captcha; not a project dependency, skipped when missing); `ink` is drawn with PIL alone
as PHP GD captchas are (solid dark glyphs in their own colours, STIX serif and DejaVu Sans Mono
Bold, lines and dots, lowercase and digits of length 4-6, 160x60; `ink_small` and `ink_long`
draw it at the issue's size extremes: 4 symbols in 90x30, 8 in 300x80); `claptcha` from a third
generator on PyPI in a face fit's mix lacks (pip install claptcha multicolorcaptcha; skipped
when missing: `build_claptcha`); `multicolor` from a fourth (pip install multicolorcaptcha:
four digits in 44 faces, each in its own coloured cell, rotated and crossed by lines of its
colour, 256x64); `kaptcha` from a fifth (pip install kaptcha: four letters and digits in
random colours and its four faces under opaque coloured fragments, 200x80 JPEGs, read
case-insensitively: fit runs with --case-insensitive); `gvcode` from a sixth (pip install
gvcode: five letters and digits in Arial and six colours, turned by up to 90 degrees, over five
coloured lines, 200x80, read case-insensitively); `alnum62`, `lower4to7` (and
`digits4`) from captcha_ml's generator with fonts, colours, noise, sizes, charsets and lengths
unlike captcha_images_v2; `v2` is captcha_images_v2 (--real-data): fit reads N of its 1040
images (a seeded choice), the holdout is the others (540 for N = 500).
Prints: style, images, charset size, lengths, size, zero-shot valid seq acc (the pretrained
model before finetuning), test seq acc (fit's own 15% test part: 75 images), char acc, holdout
seq acc and its image count (--holdout new images of the style from another seed, read after
the timed fit: the less noisy number), minutes; then each holdout's misreads (how many, how
many of the wrong length, the most frequent symbol confusions). Work goes to --work (default
/tmp/fit_styles). --own-fonts passes fit the font files each generator draws in (`--fonts`),
as a user who knows their site's faces would.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import string
import time
from pathlib import Path
from typing import Any, Iterator

from captcha_ml import fit, report
from captcha_ml.config import DataConfig
from captcha_ml.data import synthetic
from captcha_ml.data.synthetic import SyntheticSpec
from machine import describe


def _font(name: str) -> str:
    return synthetic.font_path(name)


def styles() -> dict[str, SyntheticSpec]:
    """(a) captcha library look, (b) 62 mixed-case symbols light-on-dark serif with dots,
    (c) lowercase variable length, mono, grey with heavy strike lines."""
    return {
        "digits4": synthetic.preset("captcha", charset=string.digits, min_len=4, max_len=4,
                                    width=160, height=60),
        "alnum62": SyntheticSpec(style="captcha", width=240, height=70,
                                 charset=string.digits + string.ascii_letters, min_len=6,
                                 max_len=6, fonts=(_font("DejaVuSerif.ttf"),),
                                 font_sizes=(44, 50), background=(0, 50), foreground=(190, 255),
                                 dots=40, curves=0, strikes=(0, 0), blur=(0, 0), grey=False),
        "lower4to7": SyntheticSpec(style="real", width=120, height=40,
                                   charset=string.ascii_lowercase, min_len=4, max_len=7,
                                   fonts=(_font("DejaVuSansMono.ttf"),), font_sizes=(24, 26, 28),
                                   background=(170, 235), foreground=(0, 60), dots=0, curves=1,
                                   strikes=(2, 4), blur=(0.2, 0.5), grey=True),
    }


def generated() -> list[str]:
    """The styles drawn by a generator here (all but v2, a real set)."""
    return [*BUILDERS, *styles()]


# Digits and capitals without the look-alikes 0/O and 1/I, as captcha sites do.
WHEEZY = dict(charset="23456789ABCDEFGHJKLMNPQRSTUVWXYZ", min_len=5, max_len=5,
              width=200, height=75)


def build(spec: SyntheticSpec, n: int, folder: Path, seed: str) -> Path:
    """n labeled PNGs <label>_<index>.png (the generator's resumable writer)."""
    return synthetic.generate(folder, n, spec, seed=seed, workers=1).parent


def global_random_draws(n: int, seed: str, style: dict, length) -> Iterator[tuple[int, str]]:
    """(index, label) of n images for a generator that draws from the global random module:
    labels from ``random.Random(seed)``, ``length(rng)`` symbols long, and the global random
    module seeded per image just before each is yielded, so that an image is a pure function
    of (seed, index) (claptcha_cuts.py draws them again, recording what the glyphs lost)."""
    import random

    rng = random.Random(seed)
    for i in range(n):
        label = "".join(rng.choice(style["charset"]) for _ in range(length(rng)))
        random.seed(f"{seed}/{i}")
        yield i, label


def _global_random_set(n: int, folder: Path, seed: str, style: dict, draw, length,
                       suffix: str = ".png") -> Path:
    """n labeled images <label>_<index><suffix> (PIL encodes by the suffix) drawn by
    ``draw(label)`` (a PIL image), as ``global_random_draws`` says."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, label in global_random_draws(n, seed, style, length):
        path = folder / f"{label}_{i:07d}{suffix}"
        if not path.exists():
            draw(label).save(path)
    return folder


def build_wheezy(n: int, folder: Path, seed: str) -> Path | None:
    """n labeled PNGs from wheezy.captcha's documented example."""
    try:
        from wheezy.captcha import image as wz
    except ImportError:
        print("wheezy.captcha not installed (pip install wheezy.captcha): style skipped")
        return None
    render = wz.captcha(width=WHEEZY["width"], height=WHEEZY["height"], drawings=[
        wz.background(),
        wz.text(fonts=[_font("DejaVuSans-Bold.ttf"), _font("DejaVuSerif.ttf")],
                font_sizes=(32, 36, 40), drawings=[wz.warp(), wz.rotate(), wz.offset()]),
        wz.curve(), wz.noise(), wz.smooth()])
    # Fixed length: no draw from the label generator for it.
    return _global_random_set(n, folder, seed, WHEEZY, render, lambda rng: WHEEZY["min_len"])


# Lowercase and digits without look-alikes, 5-7 long, in a face that fit's font mix lacks.
CLAPTCHA = dict(charset="abcdefghijkmnpqrstuvwxyz23456789", min_len=5, max_len=7, width=180,
                height=60)


def claptcha_length(rng) -> int:
    return rng.randint(CLAPTCHA["min_len"], CLAPTCHA["max_len"])


def claptcha_class() -> tuple[type, Path] | None:
    """claptcha's Claptcha class and the Aldrich font file multicolorcaptcha bundles, or None
    where either package is missing (said on stdout)."""
    try:
        import multicolorcaptcha
        from claptcha import Claptcha
    except ImportError:
        print("claptcha or multicolorcaptcha not installed (pip install claptcha "
              "multicolorcaptcha): style skipped")
        return None
    return Claptcha, next(Path(multicolorcaptcha.__file__).parent.glob(
        "fonts/**/Aldrich-Regular.ttf"))


@contextlib.contextmanager
def pillow_getsize() -> Iterator[None]:
    """claptcha 0.3.3 measures text with FreeTypeFont.getsize, which Pillow 10 removed: lend
    it the equivalent (the ink box's right and bottom) while it draws."""
    from PIL import ImageFont

    added = not hasattr(ImageFont.FreeTypeFont, "getsize")
    if added:
        ImageFont.FreeTypeFont.getsize = lambda self, text: self.getbbox(text)[2:]
    try:
        yield
    finally:
        if added:
            del ImageFont.FreeTypeFont.getsize


def claptcha_captcha(cls: type, font: Path, label: str):
    """``cls`` (Claptcha or a subclass) set up to draw ``label`` as the style's images are
    drawn: 180x60, margins 10, white noise 0.3 (its ``image`` draws it)."""
    size = (CLAPTCHA["width"], CLAPTCHA["height"])
    return cls(label, str(font), size=size, margin=(10, 10), noise=0.3)


def build_claptcha(n: int, folder: Path, seed: str) -> Path | None:
    """n labeled PNGs from claptcha (PyPI), black on white, each glyph morphed by a random
    quad, one morphed line, white noise 0.3, in Aldrich (a Google font that multicolorcaptcha,
    also on PyPI, bundles): a generator and a face no session tuned fit on."""
    found = claptcha_class()
    if found is None:
        return None
    def draw(label: str):
        return claptcha_captcha(*found, label).image[1]

    with pillow_getsize():
        return _global_random_set(n, folder, seed, CLAPTCHA, draw, claptcha_length)


# Letters and digits as kaptcha (PyPI) draws them by default (`Captcha().letter_digit()`: its
# 46 letters, without i, j, l, q, I and Q, and the digits but 0), four to an image, 200x80.
# Sites read them case-insensitively (kaptcha's own demo compares lower-cased answers), so fit
# runs on them with --case-insensitive (CASE_INSENSITIVE): 33 symbols.
KAPTCHA = dict(charset="abcdefghkmnoprstuvwxyzABCDEFGHJKLMNOPRSTUVWXYZ123456789", min_len=4,
               max_len=4, width=200, height=80)


@contextlib.contextmanager
def pillow_boxes() -> Iterator[None]:
    """kaptcha 1.0.1 sizes its fragments at 8 +- 10 pixels at 80 rows, so a box can come out
    upside down, which Pillow 10 and later reject (older ones drew it): while it draws, a
    rectangle's or an ellipse's corners are put in order, the box between them drawn."""
    from PIL import ImageDraw

    saved = {m: getattr(ImageDraw.ImageDraw, m) for m in ("rectangle", "ellipse")}

    def ordered(method):
        def draw(self, xy, *args, **kwargs):
            (x0, y0, x1, y1) = xy
            return method(self, (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)),
                          *args, **kwargs)
        return draw

    for name, method in saved.items():
        setattr(ImageDraw.ImageDraw, name, ordered(method))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(ImageDraw.ImageDraw, name, method)


def build_kaptcha(n: int, folder: Path, seed: str) -> Path | None:
    """n labeled JPEGs from kaptcha (PyPI) at its defaults, saved as it serves them (PIL's
    JPEG at quality 75): each glyph in a random colour (pale ones too) and one of its four
    bundled Google faces at 60-75 pixels, so glyphs overlap and run off the edge, under 20
    opaque fragments (boxes, ellipses, thick lines) of random colours; on white. A fifth
    generator, measured before anything was tuned on it (session 44)."""
    try:
        from kaptcha.captcha import FONT, CaptchaPainter
    except ImportError:
        print("kaptcha not installed (pip install kaptcha): style skipped")
        return None

    def draw(label: str):
        return CaptchaPainter(text=label, im_x=KAPTCHA["width"], im_y=KAPTCHA["height"],
                              gran=5, mode="RGB", font=FONT, bg="white").normal

    with pillow_boxes():
        return _global_random_set(n, folder, seed, KAPTCHA, draw,
                                  lambda rng: KAPTCHA["min_len"], suffix=".jpg")


# Letters and digits as gvcode (PyPI) draws them by default (`VFCode().generate_mix()`: five of
# the 62), 200x80. Read case-insensitively (CASE_INSENSITIVE), as sites compare answers: under
# its turns of up to 90 degrees in one face, c/C, o/O, s/S, v/V, w/W, x/X and z/Z differ in
# size alone. 36 symbols.
GVCODE = dict(charset=string.digits + string.ascii_letters, min_len=5, max_len=5, width=200,
              height=80)


def build_gvcode(n: int, folder: Path, seed: str) -> Path | None:
    """n labeled PNGs from gvcode (PyPI) at its defaults: each glyph in Arial at 50 pixels, in
    one of six colours (black, grey, red, green, yellow, blue), turned by -30 to 90 degrees and
    shifted by up to 10 pixels from its fifth of the width; five random lines of those colours,
    3 pixels wide, under the text; on white. A sixth generator, measured before anything was
    tuned on it (session 48)."""
    try:
        from gvcode import VFCode
    except ImportError:
        print("gvcode not installed (pip install gvcode): style skipped")
        return None

    def draw(label: str):
        vc = VFCode()
        vc.generate(label)
        return vc._img.convert("RGB")  # drawn on an opaque white RGBA canvas

    return _global_random_set(n, folder, seed, GVCODE, draw, lambda rng: GVCODE["min_len"])


# Digits, four to an image, as multicolorcaptcha (PyPI; the generator of TLG_JoinCaptchaBot, a
# Telegram bot that tests new group members) draws them at its smallest size without margins:
# 256x64.
MULTICOLOR = dict(charset="0123456789", min_len=4, max_len=4, width=256, height=64)


def build_multicolor(n: int, folder: Path, seed: str) -> Path | None:
    """n labeled PNGs from multicolorcaptcha at its default difficulty: each digit in its own
    square cell, in one of 44 faces (scripts, outlines, pixel and digital faces among them),
    rotated up to 55 degrees, crossed by two lines of its own colour; horizontal lines and
    circles over all; one background, or (half the images) one per cell. The generator draws
    the digits itself from the global random module, seeded per image, so an image and its
    label are a pure function of (seed, index)."""
    try:
        from multicolorcaptcha import CaptchaGenerator
    except ImportError:
        print("multicolorcaptcha not installed (pip install multicolorcaptcha): style skipped")
        return None
    import random

    generator = CaptchaGenerator(0)
    generator.l_fonts.sort()  # listed in the file system's order: the same faces everywhere
    folder.mkdir(parents=True, exist_ok=True)
    # The label is drawn with the image, so a written image is found by its index alone.
    written = {p.stem.rpartition("_")[2] for p in folder.glob("*.png")}
    for i in range(n):
        if f"{i:07d}" in written:
            continue
        random.seed(f"{seed}/{i}")
        drawn = generator.gen_captcha_image(difficult_level=2, chars_mode="nums",
                                            multicolor=random.random() < 0.5, margin=False)
        drawn.image.convert("RGB").save(folder / f"{drawn.characters}_{i:07d}.png")
    return folder


# Solid dark glyphs, drawn with PIL alone the way PHP GD captchas are (imagettftext): a style
# whose ink is as dark as its colour, which neither captcha library draws (both mask a glyph
# by its brightness, so dark ink comes out pale). Lowercase and digits without look-alikes.
INK = dict(charset="abcdefhkmnprstuvwxyz2345678", min_len=4, max_len=6, width=160, height=60)


# ink at the size extremes: four symbols in a small image, eight in a large one.
INK_SMALL = dict(INK, min_len=4, max_len=4, width=90, height=30)
INK_LONG = dict(INK, min_len=8, max_len=8, width=300, height=80)


def build_ink(n: int, folder: Path, seed: str, style: dict = INK) -> Path:
    """n labeled PNGs: each glyph in its own dark colour, STIX serif or DejaVu Sans Mono Bold,
    rotated up to 25 degrees, on a light plain background with 3-5 dark lines and dots. Sizes
    and offsets scale with the style's height (INK's 60 pixels), the dots with its area."""
    import random

    from PIL import Image, ImageDraw, ImageFont

    w, h = style["width"], style["height"]
    k, area = h / INK["height"], w * h / (INK["width"] * INK["height"])

    def px(v: float) -> int:
        return round(v * k)

    fonts = [ImageFont.truetype(_font(f), px(size)) for f in ("STIXGeneralBol.ttf",
             "DejaVuSansMono-Bold.ttf") for size in (30, 34, 38)]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = random.Random(f"{seed}/{i}")
        label = "".join(rng.choice(style["charset"])
                        for _ in range(rng.randint(style["min_len"], style["max_len"])))
        path = folder / f"{label}_{i:07d}.png"
        if path.exists():
            continue
        im = Image.new("RGB", (w, h), tuple(rng.randint(225, 255) for _ in range(3)))
        x = rng.randint(px(4), px(14))
        for c in label:
            font = rng.choice(fonts)
            glyph = Image.new("L", (px(48), px(56)))
            ImageDraw.Draw(glyph).text((px(24), px(28)), c, font=font, fill=255, anchor="mm")
            glyph = glyph.rotate(rng.uniform(-25, 25), Image.BILINEAR)
            box = glyph.getbbox() or (0, 0, glyph.width, glyph.height)
            ink = tuple(rng.randint(0, 90) for _ in range(3))
            im.paste(Image.new("RGB", glyph.size, ink), (x - box[0], rng.randint(px(-2), px(6))),
                     glyph)
            x += box[2] - box[0] + rng.randint(px(-3), px(2))
        draw = ImageDraw.Draw(im)
        for _ in range(rng.randint(3, 5)):
            draw.line([(rng.randint(0, w), rng.randint(0, h)) for _ in range(2)],
                      fill=tuple(rng.randint(0, 110) for _ in range(3)), width=rng.randint(1, 2))
        for _ in range(rng.randint(round(60 * area), round(160 * area))):
            draw.point((rng.randrange(w), rng.randrange(h)), fill=(rng.randint(0, 120),) * 3)
        im.save(path)
    return folder


def build_real(source: Path, n: int, folder: Path, seed: str, skip: int = 0) -> Path | None:
    """A folder of up to n images of a real labeled folder (a seeded order, after its first
    ``skip``: the holdout takes the images fit did not see)."""
    import random
    import shutil

    files = sorted(p for p in source.glob("*.png"))
    if not files:
        print(f"no PNG images in {source} (--real-data): style skipped")
        return None
    random.Random(seed).shuffle(files)
    if len(files) <= skip:
        raise SystemExit(f"{source} has {len(files)} images; more than {skip} needed")
    folder.mkdir(parents=True, exist_ok=True)
    for p in files[skip:skip + n]:
        if not (folder / p.name).exists():
            shutil.copyfile(p, folder / p.name)
    return folder


# The styles drawn by other generators: (charset, lengths and size; the builder).
BUILDERS = {"wheezy": (WHEEZY, build_wheezy), "ink": (INK, build_ink),
            "ink_small": (INK_SMALL, functools.partial(build_ink, style=INK_SMALL)),
            "ink_long": (INK_LONG, functools.partial(build_ink, style=INK_LONG)),
            "claptcha": (CLAPTCHA, build_claptcha), "multicolor": (MULTICOLOR, build_multicolor),
            "kaptcha": (KAPTCHA, build_kaptcha), "gvcode": (GVCODE, build_gvcode)}
# Styles whose sites compare answers case-insensitively: fit runs with --case-insensitive.
CASE_INSENSITIVE = frozenset({"kaptcha", "gvcode"})


def own_fonts(name: str) -> tuple[str, ...]:
    """The font files the style's generator draws in (what fit --fonts gets with --own-fonts:
    a user who knows their site's faces); () where they are not known (v2, a real set)."""
    if name == "wheezy":
        return (_font("DejaVuSans-Bold.ttf"), _font("DejaVuSerif.ttf"))
    if name.startswith("ink"):
        return (_font("STIXGeneralBol.ttf"), _font("DejaVuSansMono-Bold.ttf"))
    if name == "claptcha":
        found = claptcha_class()
        return (str(found[1]),) if found else ()
    if name == "kaptcha":
        from kaptcha.captcha import FONT

        return tuple(FONT)
    if name == "gvcode":
        import gvcode

        return (str(Path(gvcode.__file__).parent / "fonts" / "arial.ttf"),)
    if name == "multicolor":
        from multicolorcaptcha import CaptchaGenerator

        return tuple(sorted(CaptchaGenerator(0).l_fonts))
    return styles()[name].font_files if name in styles() else ()


def make_data(name: str, n: int, folder: Path, seed: str, real: Path | None = None,
              skip: int = 0) -> tuple[SyntheticSpec, Path | None]:
    """The style's spec (for the table) and a folder of n labeled images of it."""
    if name == "v2":  # the project's defaults describe captcha_images_v2 (for the table)
        d = DataConfig()
        return (SyntheticSpec(charset=d.charset, min_len=d.min_len, max_len=d.max_len,
                              width=d.width, height=d.height),
                build_real(real, n, folder, "v2", skip))
    if name in BUILDERS:  # only its charset, lengths and size are used, for the table
        style, builder = BUILDERS[name]
        return SyntheticSpec(**style), builder(n, folder, seed)
    return styles()[name], build(styles()[name], n, folder, seed)


def read_holdout(checkpoint: str, folder: Path) -> dict:
    """The evaluation report of a large held-out set of the style: 75 test images leave +-6
    points of noise at 50% accuracy (one error = 1.3 points); 1000 images leave +-1.6."""
    from captcha_ml import config, engine

    cfg = config.load(None, ["data.num_workers=0"])
    return engine.evaluate_model(cfg, checkpoint, str(folder), log=False)


def refit_arguments(ap: argparse.ArgumentParser) -> None:
    """--work, --holdout and --seed of the scripts that finetune a fit of this one again."""
    ap.add_argument("--work", type=Path, required=True,
                    help="fit_styles.py's --work folder (its fits are read from there).")
    ap.add_argument("--holdout", type=int, default=1000, help="As fit_styles.py's --holdout.")
    ap.add_argument("--seed", type=int, default=0, help="As fit_styles.py's --seed.")


def enter_work(args: argparse.Namespace) -> None:
    """Work in --work (made if missing): MLflow's artifact root (./mlruns) lands there; print
    the machine."""
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)
    print(f"machine: {describe()}", flush=True)


def benchmark_fit(work: Path, name: str, holdout: int, seed: int) -> tuple[Path, Any, Path, Path]:
    """A fit this script ran in ``work`` (for scripts that finetune it again): its folder, its
    finetune config (fit.yaml's), its reader and the style's holdout folder."""
    folder = work / "fit" / name
    if not (folder / "fit.yaml").is_file() or not (folder / "pretrain" / "best.pt").is_file():
        raise SystemExit(f"{folder}: no fit of {name} (fit.yaml and pretrain/best.pt); run "
                         f"python benchmarks/fit_styles.py --work {work} --styles {name}")
    _, fine = fit.read_fit_yaml(folder / "fit.yaml")
    held = make_data(name, holdout, work / "holdout" / name, f"holdout{seed}/{name}")[1]
    return folder, fine, Path(fine.train.output_dir) / "best.pt", held


def misread_line(name: str, report: dict, top: int = 8) -> str:
    """What the holdout's misreads are: how many, how many of the wrong length, the most
    frequent symbol confusions (true->read, equal-length misreads)."""
    wrong = report["misread"]
    lengths = sum(len(m["pred"]) != len(m["label"]) for m in wrong)
    pairs = ", ".join(f"{c['true']}->{c['pred']} x{c['count']}" for c in report["confusions"][:top])
    return (f"{name} holdout misreads: {len(wrong)} of {int(report['metrics']['count'])}, "
            f"{lengths} of the wrong length; symbols true->read: {pairs or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--styles", nargs="*", default=["wheezy", "alnum62", "lower4to7", "v2"],
                    choices=[*generated(), "v2"])
    ap.add_argument("--real-data", type=Path,
                    default=Path(__file__).resolve().parents[1].parent / "shared" / "data"
                    / "captcha_images_v2", help="captcha_images_v2, for the v2 style.")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--budget-minutes", type=float, default=fit.DEFAULT_BUDGET_MINUTES)
    ap.add_argument("--work", type=Path, default=Path("/tmp/fit_styles"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--match-stroke", action="store_true",
                    help="fit --match-stroke: synthetic strokes calibrated to the sample's.")
    ap.add_argument("--no-universal", dest="universal", action="store_false",
                    help="fit --no-universal: pretraining from random weights.")
    ap.add_argument("--no-font-match", dest="font_match", action="store_false",
                    help="fit --no-font-match: the synthetic glyphs in the font mix only.")
    ap.add_argument("--no-likeness", dest="likeness", action="store_false",
                    help="fit --no-likeness: the style's noise and rotation not tuned.")
    ap.add_argument("--own-fonts", action="store_true",
                    help="fit --fonts with the font files the style's generator draws in.")
    ap.add_argument("--holdout", type=int, default=1000,
                    help="Also read this many new images of each style (0: skip).")
    args = ap.parse_args()
    enter_work(args)
    uri = f"sqlite:///{args.work / 'mlflow.db'}"
    rows, misreads = [], []
    for name in args.styles:
        spec, folder = make_data(name, args.images, args.work / "data" / name,
                                 f"bench{args.seed}/{name}", args.real_data)
        if folder is None:
            continue
        fonts = own_fonts(name) if args.own_fonts else ()
        if args.own_fonts and not fonts:
            print(f"{name}: its generator's faces are not known; fit matches its own")
        case_sensitive = name not in CASE_INSENSITIVE
        start = time.perf_counter()
        r = fit.run(folder, args.work / "fit" / name, case_sensitive,
                    budget_minutes=args.budget_minutes,
                    match_stroke=args.match_stroke, universal=args.universal,
                    font_match=args.font_match, likeness=args.likeness,
                    name=f"bench-{name}", tracking_uri=uri, seed=args.seed, fonts=fonts)
        minutes = (time.perf_counter() - start) / 60
        t = r["test"]
        lens = f"{spec.min_len}" if spec.min_len == spec.max_len else f"{spec.min_len}-{spec.max_len}"
        symbols = set(spec.charset if case_sensitive else spec.charset.lower())
        row = [name, args.images, len(symbols), lens, f"{spec.width}x{spec.height}",
               f"{r['zero_shot']['seq_acc']:.4f}", f"{t['seq_acc']:.4f}", f"{t['char_acc']:.4f}"]
        if args.holdout:  # after the timed fit: images fit never saw, from another seed
            _, extra = make_data(name, args.holdout, args.work / "holdout" / name,
                                 f"holdout{args.seed}/{name}", args.real_data, args.images)
            held = read_holdout(r["best_checkpoint"], extra)
            row += [f"{held['metrics']['seq_acc']:.4f}", int(held["metrics"]["count"])]
            misreads.append(misread_line(name, held))
        rows.append(row + [f"{minutes:.1f}"])
        print(report.table(rows, ["style", "images", "charset", "lengths", "size",
                                  "zero-shot valid", "test seq acc", "char acc"]
                           + (["holdout seq acc", "holdout images"] if args.holdout else [])
                           + ["minutes"]), flush=True)
        print("\n".join(misreads), flush=True)


if __name__ == "__main__":
    main()
