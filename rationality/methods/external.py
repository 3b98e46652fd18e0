"""A model fine-tuned elsewhere, evaluated as it is: ``kind: external`` loads its files, trains nothing.

Two forms, on top of the run's base model (the config's model entry: architecture, preprocessing and
the weights of everything the files do not replace):

* **a whole fine-tuned model**: ``weights`` is the state dict of the whole model as its library saves
  it (open_clip's ``model.state_dict()``, a transformers model's ``save_pretrained`` directory or
  file). Without ``head``, it classifies as zero-shot does, with its own towers: a prompt head of the
  fine-tuned text tower's class prompts (class names from the dataset), and heatmaps explain the
  image-text similarity logit;
* **an image tower plus a linear head**: ``weights`` with ``weights_of: image_tower`` is the image
  tower's state dict (or none: the base model's tower), and ``head`` a file with ``weight`` [C, D] and
  ``bias`` [C] on the model's image embedding (open_clip: ``encode_image``, after the projection);
  heatmaps explain the head's logit, as for linear probing and fine-tuning. The head's row order is
  ``head_classes`` (checked against the dataset's classes and matched by name), or, unset, the
  dataset's own class order, with the count checked.

Files are read by :mod:`rationality.models.weights` (``.safetensors``, ``.pt``/``.pth``/``.bin``,
nested checkpoints flattened; ``key_prefix`` / ``head_prefix`` select the keys). A key or shape that
does not fit, or a class count that disagrees, is a ConfigError listing them. The ``train`` stage
writes the project's checkpoint from them (the image tower's state included), so the GPU stage runs
these models exactly as its own: the same weights give the same logits and heatmaps (tested).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import torch

from rationality.data.loader import ImageDataset
from rationality.errors import ConfigError
from rationality.methods._training import Run, write_untrained_log
from rationality.methods.base import AdaptationMethod, register_method
from rationality.models.base import VisionLanguageAdapter
from rationality.models.heads import ImageClassifier, LinearHead, PromptHead
from rationality.models.weights import fitting_prefix, listed, load_weights, read_tensors, select_prefix

#: What ``weights`` holds.
WEIGHTS_SCOPES = ("model", "image_tower")
_HEAD_KEYS = ("weight", "bias")


@register_method("external")
@dataclasses.dataclass
class ExternalCheckpoint(AdaptationMethod):
    """A model fine-tuned elsewhere, loaded from its files and evaluated as it is; nothing is trained.

    See the module docstring for the two forms.

    Attributes:
        weights: a weights file or ``save_pretrained`` directory; None keeps the base model's weights.
        weights_of: ``model`` (the whole model's state dict: both towers, the logit scale) or
            ``image_tower`` (the image tower's alone).
        key_prefix: read only the keys of ``weights`` that start with it, without it (e.g. ``module.``).
        head: a file holding a linear head's ``weight`` [C, D] and ``bias`` [C]; None: the prompt head
            of the model's text tower.
        head_prefix: the keys of ``head`` to read (e.g. ``fc.`` for ``fc.weight`` and ``fc.bias``).
        head_classes: the class of each row of the head, in order: a list of names or a text file with
            one name per line; None: the rows are the dataset's classes in the dataset's order.
        normalize_features: the head takes L2-normalised image embeddings.
    """

    uses_training_split = False

    weights: str | None = None
    weights_of: str = "model"
    key_prefix: str = ""
    head: str | None = None
    head_prefix: str = ""
    head_classes: list[str] | str | None = None
    normalize_features: bool = False

    def __post_init__(self) -> None:
        if self.weights is None and self.head is None:
            raise ConfigError("set weights (a fine-tuned model or image tower), head (a linear head), or both")
        if self.weights_of not in WEIGHTS_SCOPES:
            raise ConfigError(f"{self.weights_of!r} is not allowed; allowed: {', '.join(WEIGHTS_SCOPES)}", "weights_of")
        if self.head is None and (self.head_classes is not None or self.head_prefix or self.normalize_features):
            raise ConfigError("head_classes, head_prefix and normalize_features describe a linear head; set head, "
                              "or leave them out")
        names = self.head_classes
        if names is not None and not isinstance(names, str) and not (
                isinstance(names, list) and all(isinstance(name, str) for name in names)):
            raise ConfigError(f"must be a list of class names or a text file, got {names!r}", "head_classes")

    @property
    def paper_start_layer(self) -> str:  # type: ignore[override]
        """first with a linear head, last with a prompt head (as the paper's code for each head)."""
        return "last" if self.head is None else "first"

    @property
    def trains_image_tower(self) -> bool:  # type: ignore[override]
        """yes when weights replace the image tower (the checkpoint then keeps it), else no."""
        return self.weights is not None

    def input_files(self) -> list[str]:
        files = [self.weights, self.head, self.head_classes if isinstance(self.head_classes, str) else None]
        return [file for file in files if file is not None]

    def fit(self, adapter: VisionLanguageAdapter, class_names: Sequence[str], train: ImageDataset,
            run: Run) -> ImageClassifier:
        write_untrained_log(run.run_dir)
        return self.build(adapter, class_names)

    def build(self, adapter: VisionLanguageAdapter, class_names: Sequence[str]) -> ImageClassifier:
        """Load the files into ``adapter`` (in place) and return the classifier of ``class_names``.

        Raises:
            ConfigError: naming the file, for keys or shapes that do not fit, or classes that disagree.
        """
        spec = adapter.spec
        if self.weights is not None:
            whole = self.weights_of == "model"
            module = adapter.whole_model() if whole else adapter.image_tower()
            target = f"the {'whole model' if whole else 'image tower'} of {spec.adapter} model {spec.name!r}"
            count = load_weights(module, read_tensors(self.weights), self.key_prefix, self.weights, target,
                                 "key_prefix")
            print(f"external: {count} tensors of {self.weights} loaded into {target}", flush=True)
        if self.head is None:
            return ImageClassifier(adapter, PromptHead.from_prompts(adapter, self.prompts(class_names)))
        return ImageClassifier(adapter, self._linear_head(adapter, class_names))

    def _linear_head(self, adapter: VisionLanguageAdapter, class_names: Sequence[str]) -> LinearHead:
        """The head of ``self.head``, its rows in the order of ``class_names``, on the adapter's device."""
        weight, bias = self._head_tensors()
        device = next(adapter.parameters()).device
        with torch.no_grad():
            crop = adapter.geometry.crop
            dim = adapter.encode_image(torch.zeros(1, 3, crop, crop, device=device)).shape[-1]
        if weight.shape[1] != dim:
            raise ConfigError(f"{self.head}: the head's weight {list(weight.shape)} takes {weight.shape[1]}-dimensional "
                              f"embeddings, but the image embeddings of {adapter.spec.name!r} have {dim}")
        rows = self._rows(weight.shape[0], class_names)
        head = LinearHead(dim, len(class_names), self.normalize_features)
        with torch.no_grad():
            head.linear.weight.copy_(weight[rows])
            head.linear.bias.copy_(bias[rows])
        return head.to(device)

    def _head_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The head file's weight [C, D] and bias [C]."""
        tensors = read_tensors(self.head)
        selected = select_prefix(tensors, self.head_prefix)
        if set(selected) != set(_HEAD_KEYS):
            where = f" under head_prefix {self.head_prefix!r}" if self.head_prefix else ""
            fit = fitting_prefix(tensors, _HEAD_KEYS)
            hint = f"; the file holds them under {fit!r}: set head_prefix: {fit!r}" if fit not in (None, self.head_prefix) else ""
            raise ConfigError(f"{self.head}: a linear head needs exactly the keys 'weight' and 'bias'{where}, found "
                              f"{listed(selected, 'keys')}{hint}")
        weight, bias = selected["weight"], selected["bias"]
        if weight.ndim != 2 or bias.shape != (weight.shape[0],):
            raise ConfigError(f"{self.head}: a linear head needs weight [C, D] and bias [C], found weight "
                              f"{list(weight.shape)} and bias {list(bias.shape)}")
        return weight.float(), bias.float()

    def _rows(self, n_rows: int, class_names: Sequence[str]) -> list[int]:
        """The head's row of each dataset class, in the dataset's order (matched by name when
        ``head_classes`` is given; else the rows are taken in the dataset's order)."""
        if self.head_classes is None:
            if n_rows != len(class_names):
                raise ConfigError(f"{self.head}: the head has {n_rows} rows (classes) but the dataset has "
                                  f"{len(class_names)} classes; set head_classes to the class of each row")
            print(f"external: the head's {n_rows} rows are taken as the dataset's classes in its order "
                  f"({', '.join(class_names[:3])}{', ...' if n_rows > 3 else ''}); set head_classes to match them "
                  f"by name", flush=True)
            return list(range(n_rows))
        names, source = self._head_class_names()
        if len(names) != n_rows:
            raise ConfigError(f"{source}: head_classes names {len(names)} classes but the head in {self.head} has "
                              f"{n_rows} rows")
        repeated = {name for name in names if names.count(name) > 1}
        unknown, absent = set(names) - set(class_names), set(class_names) - set(names)
        if repeated or unknown or absent:
            faults = [listed(found, what) for what, found in (
                ("named twice", repeated), ("unknown to the dataset", unknown),
                ("dataset classes without a row", absent)) if found]
            raise ConfigError(f"{source}: head_classes do not match the dataset's classes: " + "; ".join(faults))
        print(f"external: the head's {n_rows} rows matched to the dataset's classes by name ({source})", flush=True)
        return [names.index(name) for name in class_names]

    def _head_class_names(self) -> tuple[list[str], str]:
        """The names of ``head_classes`` and where they come from (for messages)."""
        if isinstance(self.head_classes, list):
            return list(self.head_classes), "head_classes"
        path = Path(self.head_classes)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"{path}: head_classes file is not readable ({exc.strerror})") from exc
        return [line.strip() for line in lines if line.strip()], str(path)
