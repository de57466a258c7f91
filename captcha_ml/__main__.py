"""``python -m captcha_ml`` runs the command-line interface."""

from captcha_ml.cli import app

if __name__ == "__main__":
    app(prog_name="captcha-ml")
