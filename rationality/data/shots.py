"""Few-shot training subsets: the same ``k`` images of every class for every method."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from rationality.data.base import Sample
from rationality.errors import DataError


#: Classes named in a message about classes short of images; the rest are counted.
SHOWN_CLASSES = 10


def describe_short_classes(class_counts: Sequence[int], class_names: Sequence[str], shots: int) -> str | None:
    """``"2 classes have fewer: b (4), c (0)"`` for the classes with fewer than ``shots`` images, or None.

    Args:
        class_counts: images per label, indexed like ``class_names``.
    """
    short = [f"{name} ({count})" for name, count in zip(class_names, class_counts) if count < shots]
    if not short:
        return None
    more = " ..." if len(short) > SHOWN_CLASSES else ""
    return f"{len(short)} classes have fewer: {', '.join(short[:SHOWN_CLASSES])}{more}"


def few_shot_samples(samples: Sequence[Sample], shots: int, seed: int, class_names: Sequence[str],
                     where: str) -> list[Sample]:
    """``shots`` samples of every class, drawn without replacement, in the order of ``samples``.

    A class's draw depends only on ``seed``, its label and its sample ids (not on the order of
    ``samples`` or on other classes), so every method trained with the same seed sees the same images.

    Args:
        samples: a training split.
        shots: images per class, >= 1.
        seed: seeds the draw.
        class_names: the dataset's classes, indexed by label; each must have ``shots`` samples.
        where: the dataset and split, for messages.

    Raises:
        DataError: listing every class with fewer than ``shots`` samples (nothing is silently smaller).
    """
    by_label: dict[int, list[str]] = defaultdict(list)
    for sample in samples:
        by_label[sample.label].append(sample.id)
    short = describe_short_classes([len(by_label.get(label, [])) for label in range(len(class_names))],
                                   class_names, shots)
    if short:
        raise DataError(f"{where}: shots {shots} needs {shots} training images per class; {short}")
    chosen: set[str] = set()
    for label, ids in by_label.items():
        ids = sorted(ids)
        drawn = np.random.default_rng([seed, label]).permutation(len(ids))[:shots]
        chosen.update(ids[index] for index in drawn)
    return [sample for sample in samples if sample.id in chosen]
