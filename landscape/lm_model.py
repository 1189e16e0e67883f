r"""A tiny causal transformer from ``torch.nn`` (GPT-style, pre-LN), for ``[model] name = "tinylm"``.

    x_0 = tok_emb(ids) + pos_emb(0..T-1)
    x_{i+1} = x_i' + mlp_i(LN(x_i')),   x_i' = x_i + attn_i(LN(x_i))      (i = 0 … blocks-1)
    logits = head(LN(x_blocks))                                           (B, T, vocab)

``attn_i`` is an ``nn.MultiheadAttention`` (packed q/k/v ``in_proj_weight``, ``out_proj``) with
a causal mask, ``mlp_i`` is Linear(width, 4·width) → GELU → Linear(4·width, width). Module names
``blocks.{i}.attn`` and ``blocks.{i}.mlp`` are the blocks of the per-block analyses. Position
t sees tokens 0 … t only (a test changes a later token and checks the earlier logits).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TinyLM", "Block", "lm_spec"]


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(LN x), then + mlp(LN x)."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False, is_causal=True)[0]
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    """Token + position embeddings, ``blocks`` pre-LN blocks, final LayerNorm, linear head."""

    def __init__(self, vocab: int = 97, width: int = 64, blocks: int = 2, heads: int = 4, context: int = 64,
                 mlp_ratio: int = 4):
        super().__init__()
        if width % heads:
            raise ValueError(f"TinyLM: width = {width} is not a multiple of heads = {heads}")
        self.context = context
        self.tok_emb = nn.Embedding(vocab, width)
        self.pos_emb = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(blocks))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) of ``input_ids`` (B, T), T ≤ context. ``attention_mask`` (padding)
        is not supported: windows of this model are never padded; all ones is accepted."""
        if attention_mask is not None and not bool((attention_mask != 0).all()):
            raise ValueError("TinyLM: padded batches are not supported; give full windows (attention_mask all ones)")
        T = input_ids.shape[1]
        if T > self.context:
            raise ValueError(f"TinyLM: {T} tokens exceed the context of {self.context}")
        x = self.tok_emb(input_ids) + self.pos_emb(torch.arange(T, device=input_ids.device))
        mask = torch.triu(torch.full((T, T), float("-inf"), device=x.device, dtype=x.dtype), diagonal=1)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln_f(x))


def lm_spec(vocab: int, width: int, blocks: int, heads: int, context: int, mlp_ratio: int = 4) -> dict:
    """The ``model_spec`` of a TinyLM (what teacher files hold; ``build_model(spec)`` rebuilds it)."""
    return {"name": "tinylm", "vocab": int(vocab), "width": int(width), "blocks": int(blocks), "heads": int(heads),
            "context": int(context), "mlp_ratio": int(mlp_ratio)}
