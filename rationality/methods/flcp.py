"""FLCP (FLYP): contrastive fine-tuning of both towers on (image, class prompt) pairs.

Each image is paired with its class's prompt; the loss is CLIP's symmetric contrastive loss over the
batch (the paper's code: L2-normalised features, cosine / 0.07, targets on the batch diagonal, mean of
the image->text and text->image cross-entropies, every parameter trained with Adam at lr 1e-5). After
training the method classifies zero-shot style: a :class:`PromptHead` of the fine-tuned text tower's
class prompts, so heatmaps explain the image-text similarity logit.

Works for every adapter through the contract (``encode_image``, ``encode_text``, ``logit_scale``):
the parameters those reach are trained; the logit scale's own parameters only with ``learned_scale``;
parameters the contract never uses (BLIP's ITM head and cross-attention, open_clip's ``logit_bias``)
stay frozen, as DDP needs every trained parameter to receive a gradient.

Under DDP the features of every process are gathered before the loss, so the negatives are the
whole global batch and the gradients equal a single process's (tested).

``contrastive_batch_size`` splits each batch into consecutive groups whose pairs are each other's
only negatives; the loss is the mean of the groups' losses (weighted by their sizes). That is what
the paper's code computes on ImageNet: under DDP on 4 GPUs, each GPU's loss over its own 128 pairs,
averaged by DDP. Groups are also the unit of gradient accumulation: a micro-step holds whole groups,
so a run on fewer GPUs computes exactly the same loss. Without groups the loss couples the whole
global batch, which then cannot be split into micro-steps (a ConfigError names the way out).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from rationality.data.loader import ImageDataset
from rationality.errors import ConfigError
from rationality.methods._training import Run, train_epochs, world
from rationality.methods.base import TrainedMethod, register_method
from rationality.models.base import VisionLanguageAdapter
from rationality.models.heads import ImageClassifier, PromptHead

HEAD_SCALES = ("model", "temperature")
#: The paper's fixed loss temperature.
DEFAULT_TEMPERATURE = 0.07


def clip_loss(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric contrastive loss; pair i (image i, text i) is the positive of row and column i.

    Args:
        logits: [N, N], image i's similarity logit to text j.
        labels: [N] class labels to exclude same-class pairs (i != j) from the negatives in both
            directions (their texts are the positive's duplicates); None keeps every pair (the paper).

    Returns:
        The mean of the image->text and text->image cross-entropies (a scalar).
    """
    targets = torch.arange(len(logits), device=logits.device)
    if labels is not None:
        duplicates = (labels[:, None] == labels[None, :]) & (targets[:, None] != targets[None, :])
        logits = logits.masked_fill(duplicates, float("-inf"))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class _GatherRows(torch.autograd.Function):
    """Every process's rows, concatenated in rank order; the gradient sums all processes' gradients.

    Each process computes the same loss of the gathered rows, so the summed gradient of its own rows
    is world-size times the full one; DDP's averaging then yields exactly a single process's gradient.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, sizes: list[int]) -> torch.Tensor:  # type: ignore[override]
        rank, _ = world()
        ctx.own = (sum(sizes[:rank]), sizes[rank])
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start, size = ctx.own
        return grad[start : start + size], None


def gather_batch(*rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every process's rows of each tensor (first dimension: this process's share of the batch), in
    rank order, with gradients; the tensors themselves outside DDP."""
    _, size = world()
    if size == 1:
        return rows
    count = torch.tensor([len(rows[0])], device=rows[0].device)
    counts = [torch.zeros_like(count) for _ in range(size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    return tuple(_GatherRows.apply(r, sizes) for r in rows)


class _PairEncoder(nn.Module):
    """The adapter as FLCP trains it: one forward call per batch, so DDP sees every trained parameter.

    Args:
        adapter: the model (both towers).
        prompts: one prompt per class.
        temperature: the fixed temperature, or None for the adapter's own (trained) logit scale.
    """

    def __init__(self, adapter: VisionLanguageAdapter, prompts: list[str], temperature: float | None) -> None:
        super().__init__()
        self.adapter = adapter
        self.prompts = prompts
        self.temperature = temperature

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised image [B, D] and batch-prompt [B, D] features (with gradients) and the scale."""
        image = F.normalize(self.adapter.encode_image(pixels), dim=-1)
        text = F.normalize(self.adapter.encode_text([self.prompts[i] for i in labels.tolist()]), dim=-1)
        if self.temperature is None:
            scale = self.adapter.logit_scale()
        else:
            scale = torch.tensor(1.0 / self.temperature, device=image.device)
        return image, text, scale


def grouped_clip_loss(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, labels: torch.Tensor,
                      group_size: int | None, mask_same_class: bool) -> torch.Tensor:
    """:func:`clip_loss` of consecutive groups of ``group_size`` pairs (None: one group), averaged with
    weights group size / N.

    Args:
        image, text: normalised features [N, D] of the pairs, in batch order.
        scale: the logit scale (scalar).
        labels: [N] class labels (for ``mask_same_class``).
    """
    size = len(image) if group_size is None else group_size
    loss = image.new_zeros((), dtype=torch.float32)
    for start in range(0, len(image), size):
        part = slice(start, start + size)
        logits = (scale * image[part] @ text[part].T).float()
        loss = loss + clip_loss(logits, labels[part] if mask_same_class else None) * (len(logits) / len(image))
    return loss


def flcp_step(module: nn.Module, batch: list[torch.Tensor], num_classes: int, mask_same_class: bool = False,
              group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CLIP loss over the micro-step's pairs of every process, in groups of ``group_size`` (see
    :func:`grouped_clip_loss`), and logits [B, C] for the logged accuracy: each image's similarity to the
    prompts of the classes in its micro-step (-inf for the other classes)."""
    pixels, labels = batch[0], batch[1]
    image, text, scale = module(pixels, labels)
    all_image, all_text, all_labels = gather_batch(image, text, labels)
    loss = grouped_clip_loss(all_image, all_text, scale, all_labels, group_size, mask_same_class)
    return loss, in_batch_class_logits((scale * image @ text.T).detach().float(), labels, num_classes), labels


def in_batch_class_logits(similarity: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits [B, C] from image-prompt similarities [B, B] of a batch whose prompts have ``labels`` [B]:
    column c holds the similarity to class c's prompt, -inf where no prompt of the batch is of class c."""
    logits = similarity.new_full((len(similarity), num_classes), float("-inf"))
    return logits.scatter_reduce(1, labels.expand(len(similarity), -1), similarity, reduce="amax")


def contract_parameters(adapter: VisionLanguageAdapter, pixels: torch.Tensor, prompt: str,
                        scale: bool) -> list[nn.Parameter]:
    """The adapter's parameters that ``encode_image`` and ``encode_text`` (and, when ``scale``,
    ``logit_scale``) reach, found by a small backward pass from one sample [1, 3, H, W] and one prompt.

    Raises:
        ConfigError: ``scale`` for a model whose logit scale reaches no parameter (BLIP).
    """
    parameters = list(adapter.parameters())
    adapter.requires_grad_(True)
    towers = adapter.encode_image(pixels).sum() + adapter.encode_text([prompt]).sum()
    reached = {id(p) for p, grad in zip(parameters, torch.autograd.grad(towers, parameters, allow_unused=True))
               if grad is not None}
    if scale:
        logit_scale = adapter.logit_scale()
        grads = torch.autograd.grad(logit_scale, parameters, allow_unused=True) if logit_scale.requires_grad else ()
        scale_parameters = {id(p) for p, grad in zip(parameters, grads) if grad is not None}
        if not scale_parameters:
            raise ConfigError(f"learned_scale: the logit scale of {adapter.spec.adapter} model {adapter.spec.name!r} is "
                              f"not a trainable parameter (BLIP's is 1 / options.temperature); use a fixed temperature")
        reached |= scale_parameters
    return [p for p in parameters if id(p) in reached]


@register_method("flcp")
@dataclasses.dataclass
class FLCP(TrainedMethod):
    """Fine-tuning like CLIP pretraining (FLYP); heatmaps explain the image-text similarity logit.

    Attributes:
        temperature: the loss uses cosine / temperature, fixed (unset: 0.07, the paper's). Setting
            it together with ``learned_scale`` is a ConfigError.
        learned_scale: use the model's own logit scale in the loss and train it (open_clip's
            ``logit_scale``, not clamped at 100 as in CLIP's pretraining; ALBEF's ``temp``, clamped
            by the adapter; BLIP has none to train).
        mask_same_class: exclude other same-class pairs of the batch from the negatives (the paper:
            no; with few classes, most in-batch negatives are duplicates of the positive).
        head_scale: the prompt head's scale after training, i.e. which logit heatmaps explain:
            ``model``: the model's logit scale (CLIP: 100 for OpenAI's weights), what the paper's
            heatmap code used (DESIGN §1); ``temperature``: 1 / temperature, the scale of the loss.
            Predictions are the same; heatmaps are not (relevance is not scale invariant).
        contrastive_batch_size: pairs per contrastive group (each image's negatives are the other
            texts of its group; a divisor of ``batch_size``); None: the whole global batch. The paper's
            ImageNet runs: 128 (each GPU's own batch).

    The logged accuracy is the class accuracy among the classes of each batch: each image against the
    prompts of its batch (no extra text-tower pass over all C prompts per step).
    """

    paper_start_layer = "last"
    trains_image_tower = True

    lr: float = 1e-5
    temperature: float | None = None
    learned_scale: bool = False
    mask_same_class: bool = False
    head_scale: str = "model"
    contrastive_batch_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.contrastive_batch_size is not None and (
                self.contrastive_batch_size < 1 or self.batch_size % self.contrastive_batch_size):
            raise ConfigError(f"flcp contrastive_batch_size must divide batch_size {self.batch_size}, got "
                              f"{self.contrastive_batch_size}")
        if self.temperature is not None and self.temperature <= 0:
            raise ConfigError(f"flcp temperature must be positive, got {self.temperature}")
        if self.temperature is not None and self.learned_scale:
            raise ConfigError("flcp: set either temperature (a fixed loss temperature) or learned_scale (the "
                              "model's own, trained logit scale), not both")
        if self.head_scale not in HEAD_SCALES:
            raise ConfigError(f"flcp head_scale must be one of {HEAD_SCALES}, got {self.head_scale!r}")
        if self.head_scale == "temperature" and self.learned_scale:
            raise ConfigError("flcp head_scale 'temperature' needs a fixed temperature; with learned_scale the "
                              "model's scale is the trained one (head_scale: model)")

    def step_unit(self) -> int | None:
        """A micro-step must hold whole contrastive groups (the whole batch without groups)."""
        return self.contrastive_batch_size

    @property
    def loss_temperature(self) -> float:
        """The fixed temperature of the loss (meaningless with ``learned_scale``)."""
        return DEFAULT_TEMPERATURE if self.temperature is None else self.temperature

    def fit(self, adapter: VisionLanguageAdapter, class_names: Sequence[str], train: ImageDataset,
            run: Run) -> ImageClassifier:
        prompts = self.prompts(class_names)
        trained = contract_parameters(adapter, train[0][0][None].to(run.device), prompts[0], self.learned_scale)
        adapter.requires_grad_(False)
        for parameter in trained:
            parameter.requires_grad_(True)
        encoder = _PairEncoder(adapter, prompts, None if self.learned_scale else self.loss_temperature).train()
        step = functools.partial(flcp_step, num_classes=len(class_names), mask_same_class=self.mask_same_class,
                                 group_size=self.contrastive_batch_size)
        if world()[0] == 0:
            group = self.contrastive_batch_size or self.batch_size
            print(f"FLCP: contrastive loss over groups of {group} pairs (each image's negatives: the other "
                  f"{group - 1} texts of its group)", flush=True)
        train_epochs(encoder, step, train, self, run, "FLCP")
        adapter.requires_grad_(True).eval()
        head = PromptHead.from_prompts(adapter, prompts)
        if self.head_scale == "temperature":
            head.scale.fill_(1.0 / self.loss_temperature)
        return ImageClassifier(adapter, head)
