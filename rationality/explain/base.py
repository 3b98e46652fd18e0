"""The explainer contract and registry.

An explainer turns the image tower's recorded attention probabilities A_l and their gradients
dy_t/dA_l (one list entry per block l, each [B, heads, T, T], CLS token first) into heatmaps for
**every start layer** s: [B, L, T - 1], entry s being the CLS row without the CLS column when
blocks s..L-1 take part. All explainers share one forward and one backward pass.

Adding an explainer is one new module that subclasses :class:`Explainer`, decorates it with
:func:`register_explainer`, and is imported in :mod:`rationality.explain._explainers`.
"""

from __future__ import annotations

import abc
import torch

from rationality._registry import Registry


class Explainer(abc.ABC):
    """Computes CLS-row relevance for all start layers from attention and its gradient."""

    name: str

    @abc.abstractmethod
    def __call__(self, attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
        """Heatmaps [B, L, T - 1] for start layers 0..L-1 from L tensors [B, heads, T, T] each."""


_EXPLAINERS: Registry[type[Explainer]] = Registry("explainer", "rationality.explain._explainers", "name")

#: Class decorator: make an explainer available as ``<name>`` in configs and stores.
register_explainer = _EXPLAINERS.register
#: Names of the registered explainers.
list_explainers = _EXPLAINERS.names
#: ``check_explainer(name, key="")``: the name if registered, else ConfigError (about ``key``) listing them.
check_explainer = _EXPLAINERS.check


def create_explainer(name: str) -> Explainer:
    """The explainer registered as ``name``. Raises ConfigError listing the known names."""
    return _EXPLAINERS.get(name)()
