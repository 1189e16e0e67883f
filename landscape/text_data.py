r"""Text every Python installation carries, as token tensors for a tiny language model.

``pydoc``: the standard library's ``pydoc_data.topics.topics`` (the help topics of the Python
reference, ≈ 0.47 MB of English and code; the exact text is that of the running Python
version), the topics in sorted order joined by blank lines; nothing is downloaded.

Vocabulary (:data:`VOCAB`, fixed, independent of the text): index 0 is the unknown character
(every character outside printable ASCII and the newline; 0.1 % of the pydoc text), 1 is the
newline, 2 … 96 are ASCII 32 … 126 — 97 tokens. Split: the first ``1 − val_fraction`` of the
characters train, the rest validate (contiguous, as nanoGPT's character-level Shakespeare).

Batches are dicts ``{"input_ids": LongTensor (B, T)}`` (the convention of
:func:`landscape.losses.causal_lm`): :func:`random_windows` draws training windows at seeded
random offsets; :func:`fixed_windows` cuts non-overlapping windows from the start of a split
(the fixed validation batches every measurement is taken on).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from landscape.errors import LandscapeError

__all__ = ["VOCAB", "UNKNOWN", "TextData", "encode", "decode", "load_pydoc", "random_windows", "fixed_windows"]

UNKNOWN = "\ufffd"
VOCAB = UNKNOWN + "\n" + "".join(chr(c) for c in range(32, 127))
_INDEX = {ch: i for i, ch in enumerate(VOCAB)}


class TextDataError(LandscapeError, ValueError):
    """A text split or window request that cannot be met; the message names the argument."""


def encode(text: str) -> torch.Tensor:
    """Token ids of ``text`` (int64); characters outside :data:`VOCAB` become 0 (unknown)."""
    return torch.tensor([_INDEX.get(ch, 0) for ch in text], dtype=torch.long)


def decode(ids: torch.Tensor) -> str:
    """The text of token ids (unknown: U+FFFD); ``decode(encode(s)) == s`` for ASCII ``s``."""
    return "".join(VOCAB[int(i)] for i in ids.reshape(-1).tolist())


@dataclass
class TextData:
    """A character-level corpus: ``train`` and ``val`` token ids (1-D int64)."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int = len(VOCAB)

    def spec(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "n_train": len(self.train), "n_val": len(self.val)}


def pydoc_text() -> str:
    """The pydoc help topics of this Python, sorted by name, joined by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def load_pydoc(val_fraction: float = 0.1) -> TextData:
    """The ``pydoc`` corpus, encoded, split contiguously: train first, validation last."""
    if not 0.0 < val_fraction < 1.0:
        raise TextDataError(f"pydoc: val_fraction = {val_fraction}; give a share strictly between 0 and 1, e.g. 0.1")
    ids = encode(pydoc_text())
    cut = int(round(len(ids) * (1.0 - val_fraction)))
    return TextData("pydoc", ids[:cut].clone(), ids[cut:].clone())


def _check(tokens: torch.Tensor, length: int, where: str) -> None:
    if length < 2:
        raise TextDataError(f"{where}: window length {length}; a causal LM needs at least 2 tokens per window")
    if len(tokens) < length:
        raise TextDataError(f"{where}: the split has {len(tokens)} tokens, fewer than one window of {length}")


def random_windows(tokens: torch.Tensor, batch_size: int, length: int, generator: torch.Generator) -> dict:
    """``{"input_ids": (batch_size, length)}``: windows at offsets drawn from ``generator``."""
    _check(tokens, length, "random_windows")
    start = torch.randint(0, len(tokens) - length + 1, (batch_size,), generator=generator)
    return {"input_ids": torch.stack([tokens[s:s + length] for s in start.tolist()])}


def fixed_windows(tokens: torch.Tensor, n_batches: int, batch_size: int, length: int) -> list[dict]:
    """``n_batches`` batches of non-overlapping windows from the start of ``tokens``, in order."""
    _check(tokens, length, "fixed_windows")
    need = n_batches * batch_size * length
    if need > len(tokens):
        raise TextDataError(f"fixed_windows: {n_batches} × {batch_size} windows of {length} tokens need {need} "
                            f"tokens; the split has {len(tokens)}: lower the batches, batch size or context")
    w = tokens[:need].reshape(n_batches, batch_size, length)
    return [{"input_ids": w[i].clone()} for i in range(n_batches)]
