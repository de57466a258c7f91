"""`captcha-ml fit`: a reader for a new captcha style from a folder of labeled examples.

One module per step, in the order the command runs them (`runner.run` chains them):

  sample   read and check the labeled images (charset, lengths, sizes, label noise); split
  style    derive a synthetic style from the sample's pixels and calibrate it
  fonts    lean the style on the bundled face that draws the sample's glyphs, if one clearly does,
           or on the faces the user names (--fonts)
  likeness tune the style's unmeasured noise and rotation to look most like the sample
  budget   model input sizes; probe the machine's speed and precision; split the wall time
  configs  the pretrain and finetune configs, and OUT/fit.yaml (written, edited, read back)
  reuse    skip pretraining when an unchanged one already lies in OUT/pretrain
  advice   what the finished run's evidence says to do next (the summary's last lines)
  runner   the command: the steps above, training, zero-shot check, test, registration,
           one MLflow parent run with a child run per step
"""

from .advice import OVERFIT_RISE, advice, confusion_line, overfit
from .budget import (DEFAULT_BUDGET_MINUTES, FINETUNE_MAX_HEIGHT, PRECISIONS, Plan, Probe,
                     input_cost, model_input, plan_budget, probe_throughput, replan_finetune)
from .configs import (FINETUNE_AUGMENT_LINES, FINETUNE_AUGMENT_STRENGTH, FINETUNE_GLYPH_SHARE,
                      FINETUNE_SYNTHETIC_SHARE, PRETRAIN_EVALS, PRETRAIN_PATIENCE, build_configs,
                      read_fit_yaml, write_fit_yaml)
from .fonts import MATCH_LEAD, MATCH_SHARE, FontMatch, match_fonts, rank_fonts
from .likeness import Likeness, tune_style
from .reuse import PRETRAIN_RECORD, pretrain_fingerprint, reusable_pretraining
from .runner import run
from .sample import Inspection, inspect, inspection_notes, make_split, split_sizes
from .style import (TextLayout, calibrate, derive_style, sample_stats, style_samples,
                    symbol_share, text_layout)

__all__ = [
    "DEFAULT_BUDGET_MINUTES", "FINETUNE_AUGMENT_LINES", "FINETUNE_AUGMENT_STRENGTH",
    "FINETUNE_GLYPH_SHARE",
    "OVERFIT_RISE", "advice", "overfit",
    "FINETUNE_MAX_HEIGHT", "FINETUNE_SYNTHETIC_SHARE", "FontMatch", "MATCH_LEAD",
    "MATCH_SHARE", "PRECISIONS", "PRETRAIN_EVALS", "PRETRAIN_PATIENCE", "PRETRAIN_RECORD",
    "Inspection", "Likeness", "Plan", "Probe", "build_configs", "calibrate", "confusion_line",
    "derive_style", "input_cost", "inspect", "inspection_notes", "make_split", "match_fonts",
    "model_input", "plan_budget", "pretrain_fingerprint", "probe_throughput", "rank_fonts",
    "read_fit_yaml", "replan_finetune", "reusable_pretraining", "run", "sample_stats",
    "split_sizes", "style_samples", "symbol_share", "text_layout", "TextLayout",
    "tune_style", "write_fit_yaml",
]
