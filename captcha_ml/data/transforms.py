"""The one preprocessing used by training, evaluation and prediction, plus safe image loading.

``Preprocess`` travels inside every checkpoint and logged model, so a reader always feeds the
network exactly what it was trained on.
"""

from __future__ import annotations

import io
import itertools
import math
import random
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageStat

from captcha_ml.config import check_crop

# Refuse images above this many pixels (decompression bombs); captchas are tiny.
MAX_PIXELS = 4096 * 4096

ImageSource = Union[str, Path, bytes, Image.Image]


class ImageError(ValueError):
    """An input that is not a readable image."""


@dataclass(frozen=True)
class Preprocess:
    height: int = 50
    width: int = 200
    channels: int = 1
    mean: float = 0.5
    std: float = 0.5
    # (left, top, right, bottom) shares of the image kept before resizing; () keeps it whole.
    # Shares, not pixels, so any source size crops alike (`captcha-ml fit` sets it to the
    # region the sample's text occupies, so the glyphs get the input's pixels).
    crop: tuple[float, ...] = ()
    # Read through the test-time views (TTA_VIEWS) and average them (`read`); reading only:
    # training and the pools see one image as it is.
    tta: bool = False

    def __post_init__(self) -> None:
        if self.crop:
            object.__setattr__(self, "crop", check_crop(self.crop))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """PIL image of any mode and size -> float tensor (channels, height, width)."""
        return self.normalize(self.pixels(img))

    def read(self, img: Image.Image) -> torch.Tensor:
        """What a reader feeds the network for one image: (views, channels, height, width),
        one view, or with ``tta`` one per TTA_VIEWS (merge the outputs with ``average_views``)."""
        if not self.tta:
            return self(img)[None]
        img = img.convert("L" if self.channels == 1 else "RGB")
        fill = median_fill(img)  # once, not per view
        return torch.stack([self(view(img, *v, fill=fill)) for v in TTA_VIEWS])

    def pixels(self, img: Image.Image) -> torch.Tensor:
        """The first half: PIL image -> resized uint8 tensor (channels, height, width), the
        compact form a pool of pre-rendered images keeps in memory."""
        img = img.convert("L" if self.channels == 1 else "RGB")
        if self.crop:
            w, h = img.size
            left, top, right, bottom = self.crop
            x0, y0 = min(int(left * w), w - 1), min(int(top * h), h - 1)
            img = img.crop((x0, y0, max(x0 + 1, round(right * w)), max(y0 + 1, round(bottom * h))))
        if img.size != (self.width, self.height):
            img = img.resize((self.width, self.height), Image.BILINEAR)
        data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        return data.view(self.height, self.width, self.channels).permute(2, 0, 1).contiguous()

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """The second half: uint8 pixels (..., channels, height, width) -> the network's input."""
        return (pixels.float() / 255.0 - self.mean) / self.std

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        known = {k: d[k] for k in ("height", "width", "channels", "mean", "std", "tta") if k in d}
        return cls(**known, crop=tuple(d.get("crop") or ()))  # older checkpoints: no crop


# Test-time views (zoom, shift right, shift down; shifts as shares of the width and height):
# the image as it is, 7% larger, and moved by 1% of its width or 3% of its height each way.
# The per-step probabilities of all views, averaged, decode better than one view's: a 56x152
# wheezy model read 0.817 of 1000 new images so, against 0.800 (benchmarks/fit_styles.py).
TTA_VIEWS = ((1.0, 0.0, 0.0), (1.07, 0.0, 0.0), (1.0, 0.01, 0.0), (1.0, -0.01, 0.0),
             (1.0, 0.0, 0.03), (1.0, 0.0, -0.03))


def view(img: Image.Image, zoom: float, dx: float, dy: float,
         fill: int | tuple[int, ...] | None = None) -> Image.Image:
    """The image zoomed about its centre and moved by (dx, dy) shares of its size; uncovered
    borders take ``fill``, by default its median (background) colour."""
    w, h = img.size
    a = 1 / zoom  # inverse map: output pixel -> input pixel
    return img.transform((w, h), Image.AFFINE, (a, 0, w / 2 * (1 - a) - dx * w,
                                                0, a, h / 2 * (1 - a) - dy * h),
                         Image.BILINEAR, fillcolor=median_fill(img) if fill is None else fill)


def median_fill(img: Image.Image) -> int | tuple[int, ...]:
    """The image's median colour as a fill colour (a number for one band)."""
    median = tuple(int(v) for v in ImageStat.Stat(img).median)
    return median if len(median) > 1 else median[0]


def average_views(log_probs: torch.Tensor, views: int) -> torch.Tensor:
    """(batch x views, T, classes) log-probabilities, each image's views in a row -> (batch, T,
    classes): the log of the views' mean probabilities."""
    if views == 1:
        return log_probs
    grouped = log_probs.reshape(-1, views, *log_probs.shape[1:])
    return torch.logsumexp(grouped, dim=1) - math.log(views)


def _eight_bit(img: Image.Image) -> Image.Image:
    """Greyscale of 16 or 32 bits (16-bit PNGs and TIFFs open as I;16 or I) or floats scaled
    to 8 bits, and CMYK or other colour spaces as RGB: Pillow's own conversion to L clips
    such values at 255, so a 16-bit captcha would read as a white image."""
    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        peak = float(a.max(initial=0.0))
        if img.mode == "F" and peak <= 1.0:
            top = 1.0
        elif img.mode.startswith("I;16") or 255 < peak <= 65535:
            top = 65535.0
        else:
            top = max(255.0, peak)
        return Image.fromarray(np.clip(a * (255 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        return img.convert("RGB")
    return img


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite transparent images on white, so an alpha channel never turns text black."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img


def load_image(src: ImageSource, name: str | None = None) -> Image.Image:
    """Open a path, bytes or PIL image fully; raise ImageError naming the input on any problem."""
    label = name or (str(src) if isinstance(src, (str, Path)) else type(src).__name__)
    if isinstance(src, Image.Image):
        img = src
    else:
        try:
            fp = io.BytesIO(src) if isinstance(src, bytes) else open(src, "rb")
        except OSError as e:
            raise ImageError(f"{label}: cannot open ({e.strerror or e}); check the path") from e
        with fp:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    img = Image.open(fp)
                    _check_size(img, label)
                    img.load()
            except ImageError:
                raise
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise ImageError(f"{label}: image is too large to be a captcha ({e})") from e
            except Exception as e:  # PIL raises many types for corrupt data
                raise ImageError(f"{label}: not a readable image ({type(e).__name__}: {e}); "
                                 "remove or replace the file") from e
    _check_size(img, label)
    return _flatten_alpha(_eight_bit(img))


def _check_size(img: Image.Image, label: str) -> None:
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(f"{label}: empty image ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(f"{label}: {w}x{h} pixels is above the limit of {MAX_PIXELS}; "
                         "captchas are small, so this input is refused")


def augment(img: Image.Image, rng: random.Random, strength: float = 1.0,
            local: bool = False, lines: float = 0.0, colours: float = 0.0) -> Image.Image:
    """Jitter for real training images (deterministic per rng): a global affine map, contrast
    and brightness; with ``local``, also a mesh warp that bends and stretches parts of the
    line, background-coloured specks that break strokes, and blur (``data.augment_local``);
    with chance ``lines``, a wavy line in the text's colour across it (``data.augment_lines``:
    the text under other curves than the few its images happen to have); with chance
    ``colours``, a colour image's channels in another order (``data.augment_colours``: its
    glyphs and noise in other hues)."""
    if colours and img.mode in ("RGB", "P") and rng.random() < colours:
        img = _reordered_channels(img, rng)
    if local:
        img = _mesh_warp(img, rng, strength)
    w, h = img.size
    angle = math.radians(rng.uniform(-4, 4) * strength)
    scale = 1 + rng.uniform(-0.06, 0.06) * strength
    shear = rng.uniform(-0.15, 0.15) * strength
    tx, ty = rng.uniform(-0.04, 0.04) * w * strength, rng.uniform(-0.08, 0.08) * h * strength
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    cx, cy = w / 2, h / 2
    # Inverse affine map (output -> input) about the centre.
    a, b = cos, sin + shear
    d, e = -sin, cos
    c = cx - a * (cx + tx) - b * (cy + ty)
    f = cy - d * (cx + tx) - e * (cy + ty)
    fill = (255,) * len(img.getbands()) if img.mode != "P" else 0
    if local:  # the uncovered corners take the background's colour (_mesh_warp made it L/RGB)
        fill = tuple(int(v) for v in ImageStat.Stat(img).median)
    out = img.transform((w, h), Image.AFFINE, (a, b, c, d, e, f), Image.BILINEAR, fillcolor=fill)
    out = ImageEnhance.Contrast(out).enhance(1 + rng.uniform(-0.3, 0.3) * strength)
    out = ImageEnhance.Brightness(out).enhance(1 + rng.uniform(-0.15, 0.15) * strength)
    if lines and rng.random() < lines:
        out = _occluding_line(out, rng)
    return _specks_and_blur(out, rng, strength) if local else out


_OTHER_ORDERS = tuple(itertools.permutations(range(3)))[1:]


def _reordered_channels(img: Image.Image, rng: random.Random) -> Image.Image:
    """The RGB channels in one of their five other orders."""
    bands = img.convert("RGB").split()
    return Image.merge("RGB", [bands[i] for i in rng.choice(_OTHER_ORDERS)])


def wave_points(rng: random.Random, x0: float, x1: float, h: int) -> list[tuple[float, float]]:
    """A smooth wave from x0 to x1 through 3-5 random heights in the middle 70% of ``h``:
    cosine interpolation between evenly spaced knots, a point every 2 pixels."""
    knots = [rng.uniform(0.15, 0.85) * h for _ in range(rng.randint(3, 5))]
    points = []
    for x in range(int(x0), int(x1) + 1, 2):
        t = (x - x0) / max(1.0, x1 - x0) * (len(knots) - 1)
        i = min(int(t), len(knots) - 2)
        f = (1 - math.cos(math.pi * (t - i))) / 2
        points.append((x, knots[i] * (1 - f) + knots[i + 1] * f))
    return points


def ink_colour(img: Image.Image, share: float = 0.03) -> tuple[int, ...] | None:
    """The text's colour: the mean colour of the ``share`` of pixels whose brightness lies
    farthest from the median (background) brightness; None for an image of one brightness."""
    grey = img.convert("L")
    median = int(ImageStat.Stat(grey).median[0])
    distance = grey.point(lambda v: abs(v - median))
    hist, need, cut, seen = distance.histogram(), share * img.width * img.height, 256, 0
    while cut > 1 and seen < need:  # the brightness distance that ``share`` of pixels reach
        cut -= 1
        seen += hist[cut]
    if not seen:
        return None
    mask = distance.point(lambda v: 255 if v >= cut else 0)
    return tuple(round(v) for v in ImageStat.Stat(img, mask).mean)


def _occluding_line(img: Image.Image, rng: random.Random) -> Image.Image:
    """A wave in the text's colour, 1 to h/18 pixels thick, starting in the left 40% of the
    image and running over half to all of the rest (30-100% of the width)."""
    img = img.convert(img.mode if img.mode in ("L", "RGB") else "RGB")  # a copy
    colour = ink_colour(img)
    if colour is None:
        return img
    w, h = img.size
    x0 = rng.uniform(0, 0.4) * w
    x1 = x0 + rng.uniform(0.5, 1.0) * (w - x0)
    ImageDraw.Draw(img).line(wave_points(rng, x0, x1, h),
                             fill=colour if len(colour) > 1 else colour[0],
                             width=rng.randint(1, max(1, round(h / 18))), joint="curve")
    return img


def _mesh_warp(img: Image.Image, rng: random.Random, strength: float) -> Image.Image:
    """Move the inner points of a grid (cells ~0.4 x the height wide, 2 rows) by up to
    3.5% of the height x strength: glyphs bend, widen and narrow locally, unlike under one
    affine map. Border points slide only along the border, so no pixel comes from outside."""
    w, h = img.size
    cols, rows = max(2, round(w / (0.4 * h))), 2
    amp = 0.035 * h * strength
    xs = [w * i / cols for i in range(cols + 1)]
    ys = [h * j / rows for j in range(rows + 1)]
    src = {(i, j): (xs[i] + (0 if i in (0, cols) else rng.uniform(-amp, amp)),
                    ys[j] + (0 if j in (0, rows) else rng.uniform(-amp, amp)))
           for i in range(cols + 1) for j in range(rows + 1)}
    mesh = [((round(xs[i]), round(ys[j]), round(xs[i + 1]), round(ys[j + 1])),
             (*src[i, j], *src[i, j + 1], *src[i + 1, j + 1], *src[i + 1, j]))
            for i in range(cols) for j in range(rows)]
    mode = img.mode if img.mode in ("L", "RGB") else "RGB"
    return img.convert(mode).transform((w, h), Image.MESH, mesh, Image.BILINEAR)


def _specks_and_blur(img: Image.Image, rng: random.Random, strength: float) -> Image.Image:
    """Up to 12 x strength specks per 200x50 pixels in the image's median (background) colour,
    which cut strokes as many generators' noise does; then, half of the time, a slight blur."""
    w, h = img.size
    bg = tuple(int(v) for v in ImageStat.Stat(img).median)
    draw = ImageDraw.Draw(img)
    side = max(1, round(h / 30))
    for _ in range(rng.randint(0, round(12 * strength * w * h / (200 * 50)))):
        # Whole pixels: Pillow refuses some float one-pixel boxes (y1 rounded below y0).
        x, y, s = int(rng.uniform(0, w)), int(rng.uniform(0, h)), side * rng.randint(1, 2)
        draw.rectangle((x, y, x + s - 1, y + s - 1), fill=bg if len(bg) > 1 else bg[0])
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.4) * strength * h / 50))
    return img
