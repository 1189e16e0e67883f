"""What :func:`~landscape.quant.quantize_model` quantized: one small report per student.

    report = coverage_report(student)
    report.covered     # ['features.0.0.weight', ..., 'fc.weight']: weight tensors now quantized
    report.skipped     # {'emb.weight': 'nn.Embedding is not quantized (...)', ...}
    print(report)      # one line per weight tensor

Names are those of the float model (a quantized layer keeps its name). A *weight tensor* is
every parameter called ``weight`` and the projection weights of nn.MultiheadAttention
(``in_proj_weight``, or ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``); 1-D ones (a
normalization layer's scale) are listed as skipped with their reason but not warned about; a
matrix or kernel left in float because its module type is not quantized (an nn.Embedding, an
nn.Conv1d) is warned about once, by quantize_model; one left out by ``include=``/``exclude=``
is reported, not warned about (you asked for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from landscape.quant.errors import QuantizerError

ATTR = "_landscape_coverage"
EXCLUDED = "left in float by include=/exclude="
NORM = "a 1-D scale (normalization layer): not quantized"


@dataclass
class CoverageReport:
    """``covered``: quantized weight tensors in model order; ``skipped``: {tensor: reason};
    ``activations``: the activation quantizers' module names; the quantizers and bit widths."""

    weight: str
    act: str | None
    w_bits: int
    a_bits: int | None
    covered: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    activations: list[str] = field(default_factory=list)

    def unsupported(self) -> dict[str, str]:
        """The skipped tensors of a module type quantize_model does not quantize (the warned ones)."""
        return {n: r for n, r in self.skipped.items() if r not in (EXCLUDED, NORM)}

    def rows(self) -> list[dict]:
        """Tidy rows ``{tensor, status, reason}``: status "quantized" or "skipped"."""
        return ([{"tensor": n, "status": "quantized", "reason": f"{self.weight}, {self.w_bits} bits"}
                 for n in self.covered]
                + [{"tensor": n, "status": "skipped", "reason": r} for n, r in self.skipped.items()])

    def __str__(self) -> str:
        acts = "no activation quantizers" if self.a_bits is None else \
            f"{len(self.activations)} activation quantizer(s) {self.act}, {self.a_bits} bits"
        head = (f"quantize_model: {len(self.covered)} weight tensor(s) quantized ({self.weight}, "
                f"{self.w_bits} bits), {len(self.skipped)} skipped; {acts}")
        return "\n".join([head] + [f"  {r['status']:9s} {r['tensor']}: {r['reason']}" for r in self.rows()])


QUANTIZED = "quantized: nn.Linear, nn.Conv2d and their subclasses, nn.MultiheadAttention, GPT-2's Conv1D"


def skip_reason(module: nn.Module, tensor) -> str:
    """Why a weight tensor of a module that quantize_model does not convert stays in float."""
    from landscape.quant.targets import already_quantized

    if tensor.dim() <= 1:
        return NORM
    if already_quantized(module):
        return f"{type(module).__name__} is already fake-quantized"
    name = f"nn.{type(module).__name__}" if type(module).__module__.startswith("torch.nn") else type(module).__name__
    if isinstance(module, nn.Embedding):
        return "nn.Embedding is not quantized (a lookup table; weight-only LLM quantizers keep it in float too)"
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.MultiheadAttention)):
        return f"{name}'s weight is not a plain parameter (a parametrization?): not quantized"
    return f"{name} is not quantized ({QUANTIZED})"


def coverage_report(student: nn.Module) -> CoverageReport:
    """The :class:`CoverageReport` of a student made by quantize_model."""
    report = getattr(student, ATTR, None)
    if report is None:
        raise QuantizerError(f"coverage_report: this {type(student).__name__} was not made by "
                             "landscape.quant.quantize_model (no coverage report on it); quantize it first")
    return report
