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
from typing import Callable

import torch

from rationality.errors import ConfigError


class Explainer(abc.ABC):
    """Computes CLS-row relevance for all start layers from attention and its gradient."""

    name: str

    @abc.abstractmethod
    def __call__(self, attentions: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
        """Heatmaps [B, L, T - 1] for start layers 0..L-1 from L tensors [B, heads, T, T] each."""


_EXPLAINERS: dict[str, type[Explainer]] = {}


def register_explainer(name: str) -> Callable[[type[Explainer]], type[Explainer]]:
    """Class decorator: make an explainer available as ``<name>`` in configs and stores."""

    def decorate(cls: type[Explainer]) -> type[Explainer]:
        if name in _EXPLAINERS:
            raise ValueError(f"explainer {name!r} is registered twice")
        cls.name = name
        _EXPLAINERS[name] = cls
        return cls

    return decorate


def list_explainers() -> list[str]:
    """Names of the registered explainers."""
    import rationality.explain._explainers  # noqa: F401  (registers the built-in explainers)

    return sorted(_EXPLAINERS)


def create_explainer(name: str) -> Explainer:
    """The explainer registered as ``name``. Raises ConfigError listing the known names."""
    known = list_explainers()
    if name not in _EXPLAINERS:
        raise ConfigError(f"unknown explainer {name!r}; known explainers: {', '.join(known)}")
    return _EXPLAINERS[name]()
