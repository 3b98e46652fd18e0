"""Gradient accumulation: a global batch split into micro-steps trains the weights of one big batch.

The method's ``batch_size`` is the global batch of an optimiser step; ``max_batch_per_step`` only
bounds what one process passes at once. For losses that are means over independent samples (LP, FT)
the split is invisible up to float rounding; FLCP keeps whole contrastive groups in a micro-step, so
its loss is the same too, and a loss over the whole batch refuses to be split.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from rationality.errors import ConfigError
from rationality.methods import create_method
from rationality.methods._training import Run, StepPlan, TrainingOptions, plan_steps, train_epochs
from rationality.methods.flcp import clip_loss, grouped_clip_loss
from rationality.methods.linear_probe import classify_step
from rationality.models.checkpoint import load_checkpoint
from rationality.train import train_checkpoint


@pytest.mark.parametrize(("args", "expected"), [
    ((512, 1, None, 1), StepPlan(512, 1, 1, 512)),   # no limit: one pass
    ((512, 4, 128, 1), StepPlan(512, 4, 1, 512)),    # the paper's ImageNet runs: 4 GPUs x 128
    ((512, 1, 128, 1), StepPlan(512, 1, 4, 128)),    # the same global batch on one GPU
    ((512, 2, 128, 1), StepPlan(512, 2, 2, 256)),
    ((64, 1, 48, 1), StepPlan(64, 1, 2, 32)),        # as equal as possible: 32 + 32, not 48 + 16
    ((10, 1, 4, 1), StepPlan(10, 1, 3, 4)),          # 4 + 4 + 2
    ((512, 1, 200, 128), StepPlan(512, 1, 4, 128)),  # whole groups of 128: one per micro-step
    ((512, 2, 200, 128), StepPlan(512, 2, 2, 256)),
    ((64, 1, 64, None), StepPlan(64, 1, 1, 64)),     # a loss over the whole batch fits
])
def test_plan_steps(args: tuple, expected: StepPlan) -> None:
    assert plan_steps(*args) == expected


@pytest.mark.parametrize("args", [(512, 1, 100, 128), (64, 1, 32, None), (64, 2, 31, None)])
def test_a_coupled_unit_larger_than_a_micro_step_is_refused(args: tuple) -> None:
    with pytest.raises(ConfigError, match="max_batch_per_step"):
        plan_steps(*args)


def _head_problem(n: int = 42) -> tuple[nn.Module, TensorDataset]:
    generator = torch.Generator().manual_seed(0)
    features, labels = torch.randn(n, 16, generator=generator), torch.randint(0, 4, (n,), generator=generator)
    torch.manual_seed(1)
    return nn.Linear(16, 4), TensorDataset(features, labels)


@pytest.mark.parametrize("max_batch", [1, 3, 4, 7])
def test_accumulated_head_equals_one_big_batch(tmp_path: Path, max_batch: int, capsys: pytest.CaptureFixture) -> None:
    """42 samples in batches of 8 (the last of 2), each split into micro-steps of up to ``max_batch``."""
    options = TrainingOptions(lr=1e-2, epochs=3, batch_size=8)
    whole, dataset = _head_problem()
    train_epochs(whole, classify_step, dataset, options, Run(tmp_path / "whole"))
    split, _ = _head_problem()
    train_epochs(split, classify_step, dataset, options, Run(tmp_path / "split", max_batch_per_step=max_batch))
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(split.state_dict()[name], tensor, atol=1e-6, rtol=1e-5)
    assert (whole.weight - _head_problem()[0].weight).abs().max() > 1e-2  # training moved the weights
    assert "gradients accumulated" in capsys.readouterr().out


@pytest.mark.slow
def test_fine_tuning_accumulates_to_the_same_tower(tiny_model_spec: dict, synthetic_spec: dict, tmp_path: Path) -> None:
    """FT (image tower + head, layer norms only: no batch statistics) over 3 micro-steps of the batch of 8.

    Adam's eps is raised from 1e-8 to 1e-4 here: the attention key biases have an exactly zero true
    gradient (softmax ignores a shift shared by all keys), so theirs is float noise of about 1e-9,
    which Adam with eps 1e-8 turns into a step of +-lr whose sign depends on the summation order.
    """
    method = {"kind": "finetune", "epochs": 2, "lr": 3e-4, "batch_size": 8, "eps": 1e-4}
    weights = []
    for name, limit in (("whole", None), ("split", 3)):
        checkpoint = train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), method, "train", tmp_path / name,
                                      device="cpu", max_batch_per_step=limit)
        weights.append(load_checkpoint(checkpoint)[0].state_dict())
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, atol=2e-6, rtol=1e-4)
    log = (tmp_path / "split" / "train_log.csv").read_text().splitlines()
    assert len(log) == 3


def test_grouped_contrastive_loss_is_the_size_weighted_mean_of_its_groups() -> None:
    generator = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(10, 5, generator=generator), dim=-1)
    text = F.normalize(torch.randn(10, 5, generator=generator), dim=-1)
    labels, scale = torch.arange(10), torch.tensor(1 / 0.07)
    groups = [slice(0, 4), slice(4, 8), slice(8, 10)]
    expected = sum(clip_loss(scale * image[g] @ text[g].T) * (g.stop - g.start) / 10 for g in groups)
    torch.testing.assert_close(grouped_clip_loss(image, text, scale, labels, 4, False), expected)
    torch.testing.assert_close(grouped_clip_loss(image, text, scale, labels, None, False),
                               clip_loss(scale * image @ text.T))


@pytest.mark.slow
def test_flcp_groups_accumulate_to_the_same_weights(tiny_model_spec: dict, synthetic_spec: dict,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Contrastive groups of 4 in batches of 8: one pass or two micro-steps give the same loss and weights
    (Adam's eps 1e-4 for the reason given in the fine-tuning test)."""
    method = {"kind": "flcp", "epochs": 1, "lr": 1e-4, "batch_size": 8, "contrastive_batch_size": 4, "eps": 1e-4}
    weights = []
    for name, limit in (("whole", None), ("split", 4)):
        checkpoint = train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), method, "train", tmp_path / name,
                                      device="cpu", max_batch_per_step=limit)
        weights.append(load_checkpoint(checkpoint)[0].state_dict())
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, atol=2e-6, rtol=1e-4)
    output = capsys.readouterr().out
    assert "FLCP: optimiser steps of 8 images (batch_size, the global batch): 2 micro-steps x 1 process(es) x up " \
           "to 4 images, gradients accumulated" in output
    assert "contrastive loss over groups of 4 pairs (each image's negatives: the other 3 texts" in output


def test_flcp_over_the_whole_batch_is_not_split(tiny_model_spec: dict, synthetic_spec: dict, tmp_path: Path) -> None:
    method = {"kind": "flcp", "epochs": 1, "batch_size": 8}
    with pytest.raises(ConfigError, match="contrastive_batch_size"):
        train_checkpoint(dict(tiny_model_spec), dict(synthetic_spec), method, "train", tmp_path, device="cpu",
                         max_batch_per_step=4)
    with pytest.raises(ConfigError, match="must divide batch_size 8"):
        create_method({**method, "contrastive_batch_size": 3})
