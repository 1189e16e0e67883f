"""landscape: loss-landscape analysis for quantized neural networks."""

__version__ = "0.2.0"  # the same as setup.cfg and the top of CHANGELOG.md (tested)
