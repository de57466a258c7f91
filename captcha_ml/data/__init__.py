"""Data: real labeled images, synthetic captchas, the one preprocessing, torch datasets."""

from captcha_ml.data.real import (DataError, LabeledSet, content_digest, fetch, read_folder,
                                  read_labeled, read_manifest, split)
from captcha_ml.data.synthetic import SyntheticSpec, generate, preset, render
from captcha_ml.data.transforms import ImageError, Preprocess, load_image

__all__ = ["DataError", "LabeledSet", "content_digest", "fetch", "read_folder", "read_labeled",
           "read_manifest", "split", "SyntheticSpec", "generate", "preset", "render",
           "ImageError", "Preprocess", "load_image"]
