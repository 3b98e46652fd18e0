"""The adaptation-method contract and registry.

A method turns a pretrained adapter and a training split into an :class:`ImageClassifier`
(adapter + head). Its hyper-parameters come from the config's method spec; unknown keys are errors.
``paper_start_layer`` records which start layer the paper's code used for the method's heatmaps
(``last`` block for prompt-based methods, ``first`` = all blocks for head-based ones). ``requires``
names the adapter capabilities the method needs (CoOp: a text tower taking learned context);
:func:`check_runs_supported` compares them with each run's model before anything runs.

Adding a method is one new module that subclasses :class:`AdaptationMethod`, decorates it with
:func:`register_method`, and is imported in :mod:`rationality.methods._methods`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar, Literal, Sequence

from rationality._registry import Registry
from rationality.data.base import Sample
from rationality.data.loader import ImageDataset
from rationality.data.shots import few_shot_samples
from rationality.errors import ConfigError
from rationality.methods._training import Run, TrainingOptions
from rationality.models.base import VisionLanguageAdapter
from rationality.models.heads import ImageClassifier


@dataclasses.dataclass
class AdaptationMethod(abc.ABC):
    """Base of every method; subclasses are dataclasses whose fields are the hyper-parameters."""

    kind: ClassVar[str]
    #: Whether results depend on the training seed (a method trained with ``seeds`` runs once per seed).
    seeded: ClassVar[bool] = True
    paper_start_layer: ClassVar[Literal["first", "last"]]
    trains_image_tower: ClassVar[bool] = False
    #: Whether :meth:`fit` reads the training split (False: the dataset needs none).
    uses_training_split: ClassVar[bool] = True
    requires: ClassVar[frozenset[str]] = frozenset()

    prompt_template: str = "a photo of a {}."

    @abc.abstractmethod
    def fit(self, adapter: VisionLanguageAdapter, class_names: Sequence[str], train: ImageDataset,
            run: Run) -> ImageClassifier:
        """Adapt ``adapter`` (on ``run.device``) to the classes; log per epoch into ``run.run_dir``.

        Returns:
            The classifier the GPU stage explains; its head alone says which logit that is.
        """

    def training_samples(self, samples: Sequence[Sample], class_names: Sequence[str], seed: int,
                         where: str) -> list[Sample]:
        """The samples of the training split this method trains on (all of them)."""
        return list(samples)

    def input_files(self) -> list[str]:
        """Files the method reads besides the model and the dataset (the workflow's inputs of its run)."""
        return []

    def prompts(self, class_names: Sequence[str]) -> list[str]:
        """One text prompt per class from ``prompt_template``."""
        return [self.prompt_template.format(name.replace("_", " ")) for name in class_names]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}


@dataclasses.dataclass
class TrainedMethod(AdaptationMethod, TrainingOptions):
    """A method with an optimisation loop: the shared training hyper-parameters are its fields."""

    def __post_init__(self) -> None:
        self.check_training_options()

    def training_samples(self, samples: Sequence[Sample], class_names: Sequence[str], seed: int,
                         where: str) -> list[Sample]:
        """All samples, or ``shots`` per class drawn with ``seed`` (DataError if a class has fewer)."""
        if self.shots is None:
            return list(samples)
        return few_shot_samples(samples, self.shots, seed, class_names, where)


_METHODS: Registry[type[AdaptationMethod]] = Registry("adaptation method", "rationality.methods._methods", "kind")

#: Class decorator: make a method available to configs as ``kind: <kind>``.
register_method = _METHODS.register
#: Kinds of the registered adaptation methods.
list_methods = _METHODS.names
#: The method class registered as a kind (ConfigError listing the known kinds otherwise).
method_class = _METHODS.get


def create_method(spec: dict[str, Any]) -> AdaptationMethod:
    """Build the method a spec ``{kind: ..., <hyper-parameter>: ...}`` names.

    The kind's hyper-parameters are its dataclass fields: their names and types are checked here,
    their ranges and combinations by the class itself, so that building a method is its whole check.

    Raises:
        ConfigError: about the key at fault (``kind``, or one hyper-parameter) when the kind is
            unknown (listing the known ones), a hyper-parameter unknown (listing the kind's) or of
            the wrong type; about the spec as a whole for values out of range.
    """
    options = dict(spec)
    kind = options.pop("kind", None)
    try:
        cls = _METHODS.get(kind)
    except ConfigError as error:
        raise error.within("kind") from None
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(types))
    if unknown:
        raise ConfigError(f"not a hyper-parameter of kind {kind!r}; allowed: {', '.join(sorted(types))}", unknown[0])
    return cls(**{name: _typed(name, value, types[name]) for name, value in options.items()})


def check_runs_supported(models: dict[str, Any], methods: dict[str, Any], runs: Sequence[tuple[str, str, str]]) -> None:
    """Refuse a run whose method needs a capability its model lacks (e.g. CoOp on SigLIP), decided from
    the adapters' data without building a model (adapters are imported only for methods with requirements).

    Args:
        models, methods: the config's sections (name -> spec).
        runs: (model, dataset, method) names.

    Raises:
        ConfigError: about ``runs``, naming the model, the method and the missing capability.
    """
    from rationality.models.base import ModelSpec, adapter_class

    for model, _, method in runs:
        spec = ModelSpec.from_dict(models[model])
        required = _METHODS.get(methods[method]["kind"]).requires
        capabilities = adapter_class(spec.adapter).capabilities_of(spec) if required else None
        missing = sorted(required - capabilities) if capabilities is not None else []
        if missing:
            raise ConfigError(f"method {method!r} needs {', '.join(missing)}, which model {model!r} ({spec.adapter} "
                              f"{spec.name}) lacks; list it in a runs grid without {method!r} (see `rationality list "
                              f"models`)", "runs")


#: How messages name the hyper-parameter types.
_TYPE_WORDS = {float: "a number", int: "an integer", bool: "true or false", str: "text"}


def _typed(name: str, value: Any, annotation: Any) -> Any:
    """Check a hyper-parameter's type; floats also accept YAML 1.1's dotless exponents ('1e-5' is text there).

    An optional hyper-parameter (annotated ``<type> | None``) also takes ``null``; a number must be finite.
    """
    annotation = str(annotation)
    if annotation.endswith(" | None"):
        if value is None:
            return None
        annotation = annotation.removesuffix(" | None")
    expected = {"float": float, "int": int, "bool": bool, "str": str}.get(annotation)
    if expected is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise ConfigError(f"must be {_TYPE_WORDS[expected]}, got {value!r}", name)
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value!r}", name)
    return value
