"""``rationality datasets check``: read every configured dataset once and report what is wrong.

For each dataset of a config: can its reader open it, how many images each split and class has,
what fraction of each image its mask covers (in the original image frame, i.e. what the reader
serves, before any model geometry), and every problem met on the way. For each ``ood:`` set: does
every (corruption, severity) dataset it makes open and list exactly the clean test split's samples
(for ImageNet-C: every corruption and severity folder present and complete). A problem in one
dataset or one image never stops the others from being checked.

Problems (they make the check fail): the reader cannot open the dataset, a split cannot be listed,
a split a run uses is missing or empty, a mask (or, with ``images``, an image) cannot be loaded, a
mask that is not 2-D bool or (with ``images``) not of its image's size; an out-of-distribution
dataset that cannot be opened or whose samples differ from the clean test split's. Reported
without failing: images the reader skipped under ``missing_annotation: skip`` (the config asked for
that), empty masks, classes without images.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rationality.data.base import DatasetReader, Sample, create_dataset
from rationality.data.shots import describe_short_classes
from rationality.errors import RationalityError
from rationality.progress import track

#: Problems and skipped images listed per dataset; the rest are counted.
SHOWN = 10


@dataclass
class SplitSummary:
    """What one split holds.

    Attributes:
        name: the split.
        class_counts: int [n_classes], images per label.
        mask_fractions: float [n_loaded], object pixels / all pixels, per image whose mask loaded.
    """

    name: str
    class_counts: np.ndarray
    mask_fractions: np.ndarray


@dataclass
class DatasetReport:
    """The outcome of checking one dataset; ``problems`` empty means it passed."""

    name: str
    spec: dict[str, Any]
    class_names: tuple[str, ...] = ()
    splits: list[SplitSummary] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class OodReport:
    """The outcome of checking one ``ood:`` set; ``problems`` empty means it passed.

    Attributes:
        name: the set's name in the config.
        spec: its config entry.
        opened: how many of its (corruption, severity) datasets opened.
        samples: the clean test split's sample count (each dataset must list exactly those samples).
    """

    name: str
    spec: dict[str, Any]
    opened: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)


def check_datasets(config: dict[str, Any], images: bool = False) -> list[DatasetReport]:
    """Check every dataset under the config's ``datasets``, in config order.

    Args:
        config: a validated config (:func:`rationality.config.load_config`).
        images: also decode every image (slow; catches truncated files).
    """
    from rationality.config import method_spec_for, run_triples
    from rationality.methods import method_class

    shots_needed: dict[str, int] = {}  # dataset -> the most images per class a run trains on (0: any)
    for model, dataset, method in run_triples(config):
        spec = method_spec_for(config, model, dataset, method)
        if method_class(spec["kind"]).uses_training_split:
            shots_needed[dataset] = max(shots_needed.get(dataset, 0), spec.get("shots") or 0)
    pretrain_splits: dict[str, set[str]] = {}
    for pretrain in config.get("pretrain", {}).values():
        pretrain_splits.setdefault(pretrain["dataset"], set()).add(pretrain["split"])
    return [check_dataset(name, spec, images, needs_train_split=name in shots_needed,
                          shots=shots_needed.get(name, 0), pretrain_splits=sorted(pretrain_splits.get(name, ())))
            for name, spec in config["datasets"].items()]


def check_dataset(name: str, spec: dict[str, Any], images: bool = False, needs_train_split: bool = False,
                  shots: int = 0, pretrain_splits: list[str] | tuple[str, ...] = ()) -> DatasetReport:
    """Open one dataset spec ``{reader, root, options}`` and load every mask of every split.

    Its ``test_split`` (and ``train_split`` when a run trains on it, and ``pretrain_splits``) must be
    splits of the dataset that hold images, and every class of the training split needs ``shots``
    images when a run trains on that many.
    """
    report = DatasetReport(name, spec)
    try:
        reader = create_dataset(spec["reader"], spec["root"], **spec.get("options", {}))
        report.class_names = reader.class_names
        splits = reader.splits
    except RationalityError as exc:
        report.problems.append(str(exc))
        return report
    used = {spec[role]: role for role in ("train_split", "test_split") if role in spec
            and (role == "test_split" or needs_train_split)}
    used.update({split: "pretrain split" for split in pretrain_splits})
    for split, role in used.items():
        if split not in splits:
            report.problems.append(f"{role} {split!r} is not a split of {spec['root']} (it has {list(splits)})")
    for split in splits:
        summary = _check_split(name, reader, split, images, report.problems)
        if summary is not None:
            report.splits.append(summary)
            if split in used and not summary.class_counts.sum():
                report.problems.append(f"{used[split]} {split!r} of {spec['root']} has no images")
            if needs_train_split and split == spec.get("train_split") and shots:
                _check_shots(summary, reader.class_names, shots, report.problems)
    report.skipped = list(reader.skipped)
    return report


def check_ood_sets(config: dict[str, Any], images: bool = False) -> list[OodReport]:
    """Check every ``ood:`` set of a config, in config order.

    Each (corruption, severity) dataset spec the set makes (:func:`rationality.config.ood_dataset_spec`)
    must open and list exactly the samples of the clean dataset's test split, so that its stores join
    the clean ones. With ``images``, ImageNet-C's files are decoded and checked to be the size of
    their masks (on-the-fly corruptions start from the clean images, which the clean check decodes).

    Args:
        config: a validated config (:func:`rationality.config.load_config`).
        images: also decode every ImageNet-C image (slow).
    """
    from rationality.config import ood_dataset_spec

    reports = []
    for name, ood in config["ood"].items():
        report = OodReport(name, ood)
        reports.append(report)
        clean = config["datasets"][ood["dataset"]]
        split = clean["test_split"]
        try:
            clean_reader = create_dataset(clean["reader"], clean["root"], **clean.get("options", {}))
            clean_ids = [sample.id for sample in clean_reader.samples(split)]
        except RationalityError as exc:
            report.problems.append(f"its dataset {ood['dataset']} cannot be read: {exc}")
            continue
        report.samples = len(clean_ids)
        if not clean_ids:
            report.problems.append(f"the test split {split!r} of its dataset {ood['dataset']} has no images")
        variants = list(itertools.product(ood["corruptions"], ood["severities"]))
        for corruption, severity in track(variants, f"check {name}", "datasets"):
            where = f"{corruption} severity {severity}"
            spec = ood_dataset_spec(config, name, corruption, severity)
            try:
                reader = create_dataset(spec["reader"], spec["root"], **spec.get("options", {}))
                samples = reader.samples(split)
            except RationalityError as exc:
                report.problems.append(f"{where}: {exc}")
                continue
            report.opened += 1
            ids = [sample.id for sample in samples]
            if ids != clean_ids:
                report.problems.append(f"{where}: samples differ from {ood['dataset']}/{split}'s: "
                                       + _describe_difference(ids, clean_ids))
            elif images and ood["source"] == "imagenet_c":
                for sample in track(samples, f"check {name}/{corruption}-s{severity}", "images"):
                    _check_sample(reader, sample, True, f"{where}: {sample.id}", report.problems)
    return reports


def _describe_difference(ids: list[str], clean_ids: list[str]) -> str:
    missing, extra = sorted(set(clean_ids) - set(ids)), sorted(set(ids) - set(clean_ids))
    if not missing and not extra:
        return "the same ids in another order"
    return (f"{len(missing)} missing (e.g. {missing[:SHOWN // 2]}), "
            f"{len(extra)} not in the clean split (e.g. {extra[:SHOWN // 2]})")


def _check_shots(summary: SplitSummary, class_names: tuple[str, ...], shots: int, problems: list[str]) -> None:
    """Append a problem naming the classes of the training split with fewer than ``shots`` images."""
    short = describe_short_classes(summary.class_counts, class_names, shots)
    if short:
        problems.append(f"split {summary.name}: a run trains on shots {shots} per class; {short}")


def _check_split(
    name: str, reader: DatasetReader, split: str, images: bool, problems: list[str]
) -> SplitSummary | None:
    """Count one split's images per class and load its masks; appends what fails to ``problems``."""
    try:
        samples = reader.samples(split)
    except RationalityError as exc:
        problems.append(f"split {split}: {exc}")
        return None
    counts = np.bincount([s.label for s in samples], minlength=len(reader.class_names))
    fractions = []
    if split not in reader.mask_splits:  # a training-only split: counted, no masks to load
        return SplitSummary(split, counts, np.array(fractions, dtype=np.float64))
    for sample in track(samples, f"check {name}/{split}", "images"):
        mask = _check_sample(reader, sample, images, f"{split}/{sample.id}", problems)
        if mask is not None:
            fractions.append(mask.mean())
    return SplitSummary(split, counts, np.array(fractions, dtype=np.float64))


def _check_sample(reader: DatasetReader, sample: Sample, images: bool, where: str,
                  problems: list[str]) -> np.ndarray | None:
    """Load one sample's mask (and with ``images`` its image); the mask bool [H, W], or None after a problem."""
    try:
        mask = reader.load_mask(sample)
        if mask.dtype != bool or mask.ndim != 2:
            raise ValueError(f"mask must be bool [H, W], got {mask.dtype} of shape {mask.shape}")
        if images:
            size = reader.load_image(sample).size
            if size != (mask.shape[1], mask.shape[0]):
                raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {size[0]}x{size[1]}")
    except (RationalityError, ValueError) as exc:
        problems.append(f"{where}: {exc}")
        return None
    return mask


def format_report(report: DatasetReport) -> str:
    """The report as indented text lines (no trailing newline)."""
    spec = report.spec
    lines = [f"{report.name}: reader {spec['reader']}, root {spec['root']}"]
    if report.class_names:
        lines.append(f"  {len(report.class_names)} classes; images per split: "
                     + ", ".join(f"{s.name} {int(s.class_counts.sum())}" for s in report.splits))
        width = max(len(name) for name in report.class_names)
        lines.append(f"    {'class':<{width}}" + "".join(f"  {s.name:>8}" for s in report.splits))
        for label, class_name in enumerate(report.class_names):
            lines.append(f"    {class_name:<{width}}" + "".join(f"  {int(s.class_counts[label]):>8d}"
                                                             for s in report.splits))
    for split in report.splits:
        lines.append(f"  {split.name}: {_fraction_summary(split.mask_fractions)}")
        empty_classes = [report.class_names[i] for i in np.flatnonzero(split.class_counts == 0)]
        if empty_classes:
            lines.append(f"  {split.name}: {len(empty_classes)} classes without images: "
                         + ", ".join(empty_classes[:SHOWN]) + (", ..." if len(empty_classes) > SHOWN else ""))
    if report.skipped:
        lines.append(f"  skipped {len(report.skipped)} images (missing_annotation: skip):")
        lines += [f"    {sample_id}: {reason}" for sample_id, reason in report.skipped[:SHOWN]]
        lines += [f"    ... and {len(report.skipped) - SHOWN} more"] if len(report.skipped) > SHOWN else []
    return "\n".join(lines + _problem_lines(report.problems))


def format_ood_report(report: OodReport) -> str:
    """The report of an out-of-distribution set as indented text lines (no trailing newline)."""
    ood = report.spec
    expected = len(ood["corruptions"]) * len(ood["severities"])
    lines = [f"{report.name}: out-of-distribution set of {ood['dataset']} ({ood['source']}), "
             f"{len(ood['corruptions'])} corruptions x {len(ood['severities'])} severities",
             f"  {report.opened} of {expected} datasets opened; the clean test split has {report.samples} images"]
    return "\n".join(lines + _problem_lines(report.problems))


def _problem_lines(problems: list[str]) -> list[str]:
    """The closing lines of a report: its problems (the first :data:`SHOWN`), or OK."""
    if not problems:
        return ["  OK"]
    lines = [f"  PROBLEMS ({len(problems)}):"] + [f"    {problem}" for problem in problems[:SHOWN]]
    return lines + ([f"    ... and {len(problems) - SHOWN} more"] if len(problems) > SHOWN else [])


def _fraction_summary(fractions: np.ndarray) -> str:
    if not len(fractions):
        return "no masks loaded"
    return (f"mask area fraction min {fractions.min():.4f}, median {np.median(fractions):.4f}, "
            f"max {fractions.max():.4f}; empty masks {int((fractions == 0).sum())} of {len(fractions)}")
