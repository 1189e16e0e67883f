"""``landscape compare``: quantizers × bit widths × layers, and whether curvature predicts the damage.

    from landscape.compare import run_compare
    tables = run_compare("analyses/compare.toml")      # figures/compare/: tables, figures, README, results

See :mod:`.settings` (the recipe's ``[compare]`` table), :mod:`.students` (quantize, calibrate,
fine-tune), :mod:`.study` (the measurements of one seed), :mod:`.claims` (the two findings),
:mod:`.plots` (the figures) and :mod:`.pipeline` (the stages).
"""

from landscape.compare.pipeline import run_compare
from landscape.compare.settings import compare_settings

__all__ = ["run_compare", "compare_settings"]
