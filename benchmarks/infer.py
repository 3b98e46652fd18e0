"""Benchmark of the GPU stage's explanation pass: against per-sample loops, against the plain
forward and backward pass that bounds it, in memory, and in reduced precision.

For open_clip ViT-B/32 and ViT-B/16 (random weights: speed does not depend on the values) with a
zero-shot head of ``--classes`` prompts, explains random images for their ground-truth class with
generic attention for **every start layer**, four ways, side by side in one run:

(a) ``batched``: :func:`rationality.explain.explain_batch` on batches of each ``--batch-sizes`` (the
    GPU stage, weights frozen): one forward and one backward pass per batch, gradients for the
    attention probabilities only, all start layers from one row-vector recurrence;
(b) ``per-sample``: the same function, one image at a time (isolates batching);
(c) ``paper-loop``: the per-sample loop of the paper's code (its ``interpret``, after Chefer et al.'s
    CLIP notebook): per image one forward, then one ``torch.autograd.grad(y_t, A_l, retain_graph=True)``
    per block l, and R = (I + C_{L-1})...(I + C_s) as products of full T x T matrices, here for every
    start layer s;
(d) ``plain``: the limit: a forward and backward pass of the same classifier and batch with the
    model's own fused attention (SDPA inside ``nn.MultiheadAttention``), weights frozen, the gradient
    taken to the input pixels only. No heatmap; (a) / (d) is the price of explaining.

``trainable`` is (a) with the weights requiring grad, as before the GPU stage froze them: its peak
memory is the "before" figure. Peak memory is the peak allocated CUDA memory on a GPU (one process
per model, statistics reset per way) and the peak resident memory on the CPU (a fresh process per
model and way). The run checks that (b) and (c) give the heatmaps of (a).

Precision: on the same ViT-B/16 with its attention sharpened (the query and key projections scaled
by ``--sharpen``: random weights attend almost uniformly, a mean row maximum of 0.02 over 197 tokens;
a factor of 3 gives 0.56, so that maps are peaked as in trained models), the heatmaps of ``tf32``, ``bf16`` and
``fp16`` against ``fp32``: the largest and the 99th-percentile difference as a fraction of each map's
maximum, and what it does to the score: the largest RMA difference against random rectangle masks, and
the share of (image, explainer, start layer) whose evidence changes from valid to invalid or back at 0.5.

    python benchmarks/infer.py                                     # CPU: ViT-B/32 and ViT-B/16
    python benchmarks/infer.py --device cuda --batch-sizes 64 256 --images 1024 --json out.json
    python benchmarks/infer.py --tiny                              # seconds: the demo's tiny ViT (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import resource
import time
from typing import Any

import torch

#: Model labels -> (open_clip name, options). The 256 and 384 px ViT-B/16 stand in for the towers of ALBEF
#: (256 px) and BLIP (384 px), whose image towers are ViT-B/16 at those sizes.
MODELS = {"ViT-B/32": ("ViT-B-32-quickgelu", {}), "ViT-B/16": ("ViT-B-16-quickgelu", {}),
          "ViT-B/16@256": ("ViT-B-16-quickgelu", {"force_image_size": 256}),
          "ViT-B/16@384": ("ViT-B-16-quickgelu", {"force_image_size": 384}),
          "tiny": ("rationality-tiny-vit", {})}
DEFAULT_MODELS = ["ViT-B/32", "ViT-B/16"]
REDUCED_PRECISIONS = ("tf32", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class Job:
    """One measurement: ``way`` on ``images`` random images of ``model`` in batches of ``batch_size``."""

    model: str
    way: str
    batch_size: int
    images: int
    precision: str = "fp32"


def build_classifier(model: str, classes: int, device: torch.device, frozen: bool = True):
    """Random-init open_clip ``model`` with a prompt head of ``classes`` classes, eval mode, on ``device``."""
    from rationality.models import ImageClassifier, PromptHead, create_adapter

    name, options = MODELS[model]
    adapter = create_adapter({"adapter": "open_clip", "name": name, "seed": 0, "options": options})
    head = PromptHead.from_prompts(adapter, [f"a photo of a class {c}." for c in range(classes)])
    return ImageClassifier(adapter, head).eval().requires_grad_(not frozen).to(device)


def sharpen_attention(classifier, factor: float) -> None:
    """Scale every image block's query and key projections by ``factor`` (attention logits by factor²)."""
    with torch.no_grad():
        for block in classifier.adapter.image_tower().transformer.resblocks:
            width = block.attn.embed_dim
            block.attn.in_proj_weight[: 2 * width] *= factor
            block.attn.in_proj_bias[: 2 * width] *= factor


def explain_batched(classifier, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int,
                    precision: str = "fp32") -> torch.Tensor:
    """Ways (a) and (b) (batch_size 1): heatmaps [N, L, T - 1]."""
    from rationality.explain import create_explainer, explain_batch

    explainer = [create_explainer("generic_attention")]
    heatmaps = [explain_batch(classifier, pixels[i : i + batch_size], labels[i : i + batch_size], explainer,
                              precision)[1] for i in range(0, len(pixels), batch_size)]
    return torch.cat(heatmaps)[:, 0].flatten(2)


def explain_paper_loop(classifier, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Way (c): heatmaps [N, L, T - 1], one image and one gradient call per block at a time."""
    rows = []
    for pixel, label in zip(pixels, labels):
        with torch.enable_grad(), classifier.adapter.recording_attention() as attentions:
            target = classifier(pixel[None].requires_grad_(True))[0, label]
            gradients = [torch.autograd.grad(target, [a], retain_graph=True)[0] for a in attentions]
        relevances = [(g[0] * a[0]).clamp(min=0).mean(dim=0).detach() for a, g in zip(attentions, gradients)]
        identity = torch.eye(relevances[0].shape[0], device=pixels.device)
        product, per_start = identity, []
        for relevance in reversed(relevances):  # R_s = R_{s+1} (I + C_s)
            product = product @ (identity + relevance)
            per_start.append(product[0, 1:])
        rows.append(torch.stack(per_start[::-1]))
    return torch.stack(rows)


def plain_forward_backward(classifier, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int,
                           precision: str = "fp32") -> None:
    """Way (d): forward and backward with the model's fused attention, the gradient to the pixels only."""
    from rationality.precision import autocast_dtype, float32_matmul_precision

    dtype = autocast_dtype(precision)
    for i in range(0, len(pixels), batch_size):
        batch = pixels[i : i + batch_size].detach().requires_grad_(True)
        with (torch.enable_grad(), float32_matmul_precision(precision),
              torch.autocast(batch.device.type, dtype=dtype, enabled=dtype is not None)):
            logits = classifier(batch).float()
            torch.autograd.grad(logits.gather(1, labels[i : i + batch_size].view(-1, 1)).sum(), batch)


def _run(classifier, job: Job, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    if job.way == "plain":
        plain_forward_backward(classifier, pixels, labels, job.batch_size, job.precision)
        return None
    if job.way == "paper-loop":
        return explain_paper_loop(classifier, pixels, labels)
    return explain_batched(classifier, pixels, labels, job.batch_size, job.precision)


def _inputs(size: int, images: int, classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random images [images, 3, size, size] and labels [images] in every process of a run."""
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(images, 3, size, size, generator=generator)
    labels = torch.randint(0, classes, (images,), generator=generator)
    return pixels.to(device), labels.to(device)


def time_jobs(jobs: list[Job], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run jobs of one model in this process; each warmed up, timed and its peak memory recorded."""
    device = torch.device(args.device)
    classifiers = {frozen: build_classifier(jobs[0].model, args.classes, device, frozen)
                   for frozen in {job.way != "trainable" for job in jobs}}
    size = next(iter(classifiers.values())).adapter.geometry.crop
    pixels, labels = _inputs(size, max(args.images, args.loop_images), args.classes, device)
    results = []
    for job in jobs:
        classifier = classifiers[job.way != "trainable"]
        _run(classifier, job, pixels[: min(2, job.batch_size)], labels[: min(2, job.batch_size)])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        heatmaps = _run(classifier, job, pixels[: job.images], labels[: job.images])
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
        seconds = time.perf_counter() - start
        results.append({**dataclasses.asdict(job), "seconds": seconds, "images_per_second": job.images / seconds,
                        "peak_mib": peak, "heatmaps": None if heatmaps is None else heatmaps.cpu().numpy()})
    return results


def rectangle_masks(count: int, size: int, seed: int = 2) -> "np.ndarray":
    """``count`` random object rectangles (a quarter to three quarters of each side) in a size x size frame."""
    import numpy as np

    rng = np.random.default_rng(seed)
    masks = np.zeros((count, size, size), dtype=bool)
    for mask in masks:
        height, width = rng.integers(size // 4, 3 * size // 4, size=2)
        top, left = rng.integers(0, size - height), rng.integers(0, size - width)
        mask[top:top + height, left:left + width] = True
    return masks


def precision_errors(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Heatmaps of each reduced precision against fp32 on a sharpened model (see the module docstring), and
    what the difference does to RMA against random rectangle masks (min-max normalised, as scored)."""
    from rationality.explain import create_explainer, explain_batch, list_explainers
    from rationality.scoring.rma import MaskProjector, relevance_mass_accuracy

    device = torch.device(args.device)
    model = args.models[-1]
    classifier = build_classifier(model, args.classes, device)
    sharpen_attention(classifier, args.sharpen)
    size, grid = classifier.adapter.geometry.crop, classifier.adapter.grid
    pixels, labels = _inputs(size, args.precision_images, args.classes, device)
    explainers = [create_explainer(name) for name in list_explainers()]
    batch = min(args.batch_sizes)
    projector = MaskProjector(frame=(size, size), grid=grid)
    masks = rectangle_masks(len(pixels), size)
    projections, areas = projector.project(masks), masks.sum(axis=(1, 2))

    def heatmaps(precision: str) -> torch.Tensor:
        return torch.cat([explain_batch(classifier, pixels[i : i + batch], labels[i : i + batch], explainers,
                                        precision)[1] for i in range(0, len(pixels), batch)]).cpu()

    def rma(maps: torch.Tensor) -> "np.ndarray":
        return relevance_mass_accuracy(maps.double().numpy(), projections, areas, projector)[0]

    reference = heatmaps("fp32")
    reference_rma = rma(reference)
    scale = reference.flatten(3).abs().amax(dim=-1, keepdim=True)
    with torch.no_grad(), classifier.adapter.recording_attention() as attentions:
        classifier(pixels[:batch])
    row_max = torch.stack([a.amax(dim=-1).mean() for a in attentions]).mean().item()
    rows = []
    for precision in REDUCED_PRECISIONS:
        maps = heatmaps(precision)
        relative = ((maps - reference).flatten(3).abs() / scale).flatten()
        reduced_rma = rma(maps)
        rows.append({"model": model, "precision": precision, "images": len(pixels), "sharpen": args.sharpen,
                     "attention_row_max": row_max,
                     "max_relative_error": relative.max().item(),
                     "p99_relative_error": torch.quantile(relative[:2**24].float(), 0.99).item(),
                     "max_rma_difference": float(abs(reduced_rma - reference_rma).max()),
                     "validity_flips": float(((reduced_rma >= 0.5) != (reference_rma >= 0.5)).mean())})
    return rows


def _child(target: str, payload: Any, args: argparse.Namespace, queue: multiprocessing.Queue) -> None:
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    queue.put(time_jobs(payload, args) if target == "time" else precision_errors(args))


def in_fresh_process(target: str, payload: Any, args: argparse.Namespace) -> Any:
    """Run ``time_jobs`` or ``precision_errors`` in a spawned process (its own peak memory, no state)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(target, payload, args, queue))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode:
        raise RuntimeError(f"benchmark process for {target} {payload} exited with {process.exitcode}")
    return result


def plan(args: argparse.Namespace) -> list[list[Job]]:
    """Groups of jobs, each run in one process: per model on a GPU, per (model, way) on a CPU."""
    groups = []
    for model in args.models:
        jobs = []
        for batch in args.batch_sizes:
            jobs += [Job(model, "batched", batch, args.images), Job(model, "plain", batch, args.images),
                     Job(model, "trainable", batch, args.images)]
        if args.loop_images:
            jobs += [Job(model, "per-sample", 1, args.loop_images), Job(model, "paper-loop", 1, args.loop_images)]
        if args.device.startswith("cuda"):
            largest = max(args.batch_sizes)
            jobs += [Job(model, way, largest, args.images, precision)
                     for precision in REDUCED_PRECISIONS for way in ("batched", "plain")]
            groups.append(jobs)
        else:
            groups += [[job] for job in jobs]
    return groups


def report(results: list[dict[str, Any]], errors: list[dict[str, Any]]) -> str:
    """Markdown tables: speed and memory per (model, way, batch, precision), then precision errors."""
    lines = ["| model | way | batch | precision | images | seconds | images/s | peak MiB | (a) / (d) time | "
             "max abs diff to (a) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in results:
        batched = next((r for r in results if (r["model"], r["way"], r["batch_size"], r["precision"]) ==
                        (row["model"], "batched", row["batch_size"], row["precision"])), None)
        plain = next((r for r in results if (r["model"], r["way"], r["batch_size"], r["precision"]) ==
                      (row["model"], "plain", row["batch_size"], row["precision"])), None)
        ratio = f"{batched['seconds'] / batched['images'] / (plain['seconds'] / plain['images']):.2f}x" \
            if row["way"] == "batched" and plain else ""
        reference = next(r for r in results if (r["model"], r["way"], r["precision"]) == (row["model"], "batched", "fp32"))
        diff = ""
        if row["heatmaps"] is not None and row["precision"] == "fp32" and row["way"] != "batched":
            n = len(row["heatmaps"])
            diff = f"{abs(row['heatmaps'] - reference['heatmaps'][:n]).max():.1e}"
        lines.append(f"| {row['model']} | {row['way']} | {row['batch_size']} | {row['precision']} | {row['images']} | "
                     f"{row['seconds']:.2f} | {row['images_per_second']:.1f} | {row['peak_mib']:.0f} | {ratio} | {diff} |")
    if errors:
        lines += ["", "| model | precision | images | sharpen (mean attention row max) | max error / map max | "
                  "99th percentile | max RMA difference | validity flips at 0.5 |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {e['model']} | {e['precision']} | {e['images']} | {e['sharpen']} ({e['attention_row_max']:.2f}) | "
                  f"{100 * e['max_relative_error']:.2f}% | {100 * e['p99_relative_error']:.3f}% | "
                  f"{e['max_rma_difference']:.4f} | {100 * e['validity_flips']:.2f}% |" for e in errors]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=DEFAULT_MODELS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--images", type=int, default=32, help="images of the batched ways (a), (d) and trainable")
    parser.add_argument("--loop-images", type=int, default=8, help="images of the per-image ways (b) and (c); 0 skips them")
    parser.add_argument("--classes", type=int, default=200, help="prompts of the zero-shot head (CUB: 200)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--sharpen", type=float, default=3.0, help="query/key scale of the precision model")
    parser.add_argument("--precision-images", type=int, default=8, help="0 skips the precision comparison")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--tiny", action="store_true", help="the demo's tiny ViT, a few images: a smoke run")
    args = parser.parse_args()
    if args.tiny:
        args.models, args.batch_sizes, args.images, args.loop_images, args.classes, args.precision_images = (
            ["tiny"], [4], 8, 2, 4, 4)

    device_name = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                   else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"device: {device_name}; torch {torch.__version__}; {args.classes} classes, generic attention, "
          f"all start layers\n", flush=True)
    results = [row for group in plan(args) for row in in_fresh_process("time", group, args)]
    errors = in_fresh_process("precision", None, args) if args.precision_images else []
    print(report(results, errors), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": device_name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                       "classes": args.classes, "threads": args.threads or torch.get_num_threads(),
                       "results": [{k: v for k, v in row.items() if k != "heatmaps"} for row in results],
                       "precision_errors": errors}, handle, indent=1)


if __name__ == "__main__":
    main()
