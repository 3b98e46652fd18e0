"""The explainer contract, the readout every relevance recurrence starts from, and the registry.

An explainer turns the image tower's recorded attention probabilities A_l and their gradients
dy_t/dA_l (one list entry per block l, each [B, heads, T, T], the P prefix tokens first) into
heatmaps for **every start layer** s: [B, L, T - P], entry s being the relevance of the image
embedding to each patch token when blocks s..L-1 take part. All explainers share one forward and
one backward pass.

Where the recurrence starts is the :class:`Readout`, how the embedding reads the last block's
tokens: row e_0 for a CLS token (the paper's models), 1/N on each of the N patch tokens for average
pooling, and for an attention-pooling head (SigLIP) the pooling's attention of its learned query,
which each explainer turns into a start row by its own rule (see :mod:`rationality.explain.attribution`
for the derivation). With the CLS readout every explainer computes exactly what it computed before
readouts existed.

Adding an explainer is one new module that subclasses :class:`Explainer`, decorates it with
:func:`register_explainer`, and is imported in :mod:`rationality.explain._explainers`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from rationality._registry import Registry


@dataclass(frozen=True)
class Readout:
    """How the image embedding reads the last block's T tokens, per sample of a batch.

    Exactly one of ``weights`` and ``attention`` is set.

    Attributes:
        prefix_tokens: P, the tokens before the patch tokens (CLS, registers); heatmaps are columns P..T-1.
        weights: [B, T], a fixed readout row: e_0 (CLS token) or 1/N on the N patch tokens (average pooling).
        attention: [B, heads, T], an attention-pooling head's single query over the tokens (zero on
            tokens it does not see).
        gradient: [B, heads, T], dy_t / d ``attention``.
    """

    prefix_tokens: int
    weights: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    gradient: torch.Tensor | None = None

    @classmethod
    def cls_token(cls, batch: int, tokens: int, prefix_tokens: int = 1, *, like: torch.Tensor) -> "Readout":
        """The embedding is token 0's output (CLIP, BLIP, ALBEF, EVA-CLIP)."""
        weights = torch.zeros(batch, tokens, dtype=like.dtype, device=like.device)
        weights[:, 0] = 1.0
        return cls(prefix_tokens, weights=weights)

    @classmethod
    def average(cls, batch: int, tokens: int, prefix_tokens: int, *, like: torch.Tensor) -> "Readout":
        """The embedding is the mean of the patch tokens' outputs (prefix tokens excluded)."""
        weights = torch.zeros(batch, tokens, dtype=like.dtype, device=like.device)
        weights[:, prefix_tokens:] = 1.0 / (tokens - prefix_tokens)
        return cls(prefix_tokens, weights=weights)

    @classmethod
    def attention_pool(cls, attention: torch.Tensor, gradient: torch.Tensor, tokens: int,
                       prefix_tokens: int) -> "Readout":
        """The embedding is a learned query's attention over the last K tokens.

        Args:
            attention, gradient: [B, heads, 1, K], K <= T (a head that skips the prefix tokens sees
                K = T - P); the first T - K tokens get zero attention and gradient.
        """
        missing = tokens - attention.shape[-1]
        if attention.shape[-2] != 1 or missing < 0:
            raise ValueError(f"pooling attention must be [B, heads, 1, K <= {tokens}], got {tuple(attention.shape)}")
        pad = (missing, 0)
        return cls(prefix_tokens, attention=torch.nn.functional.pad(attention[:, :, 0], pad),
                   gradient=torch.nn.functional.pad(gradient[:, :, 0], pad))


class Explainer(abc.ABC):
    """Computes the readout's relevance rows for all start layers from attention and its gradient."""

    name: str

    @abc.abstractmethod
    def rows(self, attentions: list[torch.Tensor], gradients: list[torch.Tensor], readout: Readout) -> torch.Tensor:
        """Relevance rows [B, L, T] over all tokens for start layers 0..L-1, from L tensors
        [B, heads, T, T] each and the readout."""

    def __call__(self, attentions: list[torch.Tensor], gradients: list[torch.Tensor],
                 readout: Readout | None = None) -> torch.Tensor:
        """Heatmaps [B, L, T - P] for start layers 0..L-1: the rows' patch-token columns.

        The default readout is the CLS token (P = 1).
        """
        if readout is None:
            batch, _, tokens, _ = attentions[0].shape
            readout = Readout.cls_token(batch, tokens, like=attentions[0])
        return self.rows(attentions, gradients, readout)[:, :, readout.prefix_tokens:]


_EXPLAINERS: Registry[type[Explainer]] = Registry("explainer", "rationality.explain._explainers", "name")

#: Class decorator: make an explainer available as ``<name>`` in configs and stores.
register_explainer = _EXPLAINERS.register
#: Names of the registered explainers.
list_explainers = _EXPLAINERS.names
#: ``check_explainer(name, key="")``: the name if registered, else ConfigError (about ``key``) listing them.
check_explainer = _EXPLAINERS.check
#: The explainer class registered under a name (ConfigError listing the known names otherwise).
explainer_class = _EXPLAINERS.get


def create_explainer(name: str) -> Explainer:
    """The explainer registered as ``name``. Raises ConfigError listing the known names."""
    return _EXPLAINERS.get(name)()
