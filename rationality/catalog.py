"""What the registries hold, for ``rationality list models|methods|explainers|datasets|metrics``.

Every entry comes from the registries themselves (model adapters and the :class:`ModelFamily` data
they declare, adaptation methods, explainers, dataset readers, localisation metrics), so a new module shows up here without
any edit.
"""

from __future__ import annotations

import sys

KINDS = ("models", "methods", "explainers", "datasets", "metrics")
READOUT_WORDS = {"cls": "the CLS token", "average": "the mean of the patch tokens",
                 "attention": "attention pooling with a learned query (no CLS token)"}


def _summary(obj: object) -> str:
    """The first line of a docstring."""
    return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""


def _per_spec(attribute: object) -> str:
    """A method's attribute that depends on its hyper-parameters (a property, e.g. ``external``'s start
    layer) as its docstring's first line; empty for a fixed one."""
    return _summary(attribute) if isinstance(attribute, property) else ""


def runnable_methods(capabilities: frozenset[str]) -> str:
    """``all`` or ``all but <kinds>``: the registered methods whose requirements ``capabilities`` meet."""
    from rationality.methods.base import list_methods, method_class

    refused = [kind for kind in list_methods() if not method_class(kind).requires <= capabilities]
    return "all" if not refused else "all but " + ", ".join(refused)


def catalog(kind: str) -> list[dict[str, str]]:
    """One row (field -> text) per registered entry of ``kind`` (one of :data:`KINDS`), in name order.

    Models are listed per family (an adapter may run several, e.g. open_clip: CLIP, SigLIP, EVA02-CLIP).
    """
    if kind == "models":
        from rationality.models.base import adapter_class, list_adapters

        return [{"family": family.name, "adapter": adapter, "names": family.examples, "weights": family.weights,
                 "image embedding": READOUT_WORDS[family.readout], "methods": runnable_methods(family.capabilities),
                 "explainers": "all", "tiny config": family.tiny}
                for adapter in list_adapters() for family in adapter_class(adapter).families]
    if kind == "methods":
        from rationality.methods.base import list_methods, method_class

        return [{"kind": name, "paper start layer": _per_spec(cls.paper_start_layer) or cls.paper_start_layer,
                 "trains the image tower": _per_spec(cls.trains_image_tower) or ("yes" if cls.trains_image_tower
                                                                                  else "no"),
                 "needs": ", ".join(sorted(cls.requires)) or "-", "about": _summary(cls)}
                for name in list_methods() for cls in [method_class(name)]]
    if kind == "explainers":
        from rationality.explain.base import explainer_class, list_explainers

        return [{"name": name, "about": _summary(explainer_class(name))} for name in list_explainers()]
    if kind == "datasets":
        from rationality.data.base import dataset_class, list_datasets

        return [{"reader": name, "about": _summary(sys.modules[dataset_class(name).__module__])}
                for name in list_datasets()]
    if kind == "metrics":
        from rationality.scoring.localisation import list_metrics, metric_class

        return [{"name": name, "title": cls.title, "valid evidence": cls.valid_rule,
                 "default threshold": f"{cls.default_threshold:g}",
                 "claims grid": ", ".join(f"{t:g}" for t in cls.thresholds), "reference": cls.reference,
                 "computed": "from the mask projections (exact on the token grid)" if not cls.needs_pixels
                 else "on the upsampled frame"} for name in list_metrics() for cls in [metric_class(name)]]
    raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")


def format_catalog(rows: list[dict[str, str]]) -> str:
    """Rows as blocks: the first field as a heading, the others indented below it."""
    blocks = []
    for row in rows:
        title, *rest = row.items()
        width = max((len(key) for key, _ in rest), default=0)
        blocks.append("\n".join([title[1], *(f"  {key + ':':<{width + 1}} {value}" for key, value in rest)]))
    return "\n".join(blocks)
