"""captcha_ml: train, track and serve deep-learning captcha readers (ResNet-18 + CTC)."""

__version__ = "0.1.0"
