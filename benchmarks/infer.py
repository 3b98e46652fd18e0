"""Benchmark of the GPU stage's batched explanation pass against per-sample loops.

For open_clip ViT-B/32 and ViT-B/16 (random weights: speed does not depend on the values) with a
zero-shot head of ``--classes`` prompts, explains the same ``--images`` random images for their
ground-truth class with generic attention for **every start layer**, three ways, in one run:

(a) ``batched``: :func:`rationality.explain.explain_batch` on batches of ``--batch-size``: one forward
    and one backward pass per batch, gradients taken for the attention probabilities only, all start
    layers from one row-vector recurrence;
(b) ``per-sample``: the same function, one image at a time: one forward and one backward per image
    (isolates batching);
(c) ``paper-loop``: the per-sample loop of the paper's code (its ``interpret``, after Chefer et al.'s
    CLIP notebook) with the first block as start layer, as it runs for LP/FT: per image one forward,
    then one ``torch.autograd.grad(y_t, A_l, retain_graph=True)`` per block l, and
    R = (I + C_{L-1})...(I + C_s) as products of full T x T matrices, here for every start layer s.

Each (model, way) runs in a fresh process after one warm-up, so that the peak memory is its own:
peak resident memory on the CPU, peak allocated CUDA memory on a GPU. The run checks that (b) and (c)
give the heatmaps of (a) and prints a Markdown table of images explained per second and the ratios.

    python benchmarks/infer.py                          # ViT-B/32 and ViT-B/16, 32 images, batch 32
    python benchmarks/infer.py --device cuda --images 256 --batch-size 64
    python benchmarks/infer.py --models tiny --images 512
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import time

import torch

WAYS = ("batched", "per-sample", "paper-loop")
MODELS = {"ViT-B/32": "ViT-B-32-quickgelu", "ViT-B/16": "ViT-B-16-quickgelu", "tiny": "rationality-tiny-vit"}
DEFAULT_MODELS = ["ViT-B/32", "ViT-B/16"]


def build_classifier(model: str, classes: int, device: torch.device):
    """Random-init open_clip ``model`` with a prompt head of ``classes`` classes, eval mode, on ``device``."""
    from rationality.models import ImageClassifier, PromptHead, create_adapter

    adapter = create_adapter({"adapter": "open_clip", "name": model, "seed": 0})
    head = PromptHead.from_prompts(adapter, [f"a photo of a class {c}." for c in range(classes)])
    return ImageClassifier(adapter, head).eval().to(device)


def explain_batched(classifier, pixels: torch.Tensor, labels: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Way (a) (and (b) with batch_size 1): heatmaps [N, L, T - 1]."""
    from rationality.explain import create_explainer, explain_batch

    explainer = [create_explainer("generic_attention")]
    heatmaps = [explain_batch(classifier, pixels[i : i + batch_size], labels[i : i + batch_size], explainer)[1]
                for i in range(0, len(pixels), batch_size)]
    return torch.cat(heatmaps)[:, 0].flatten(2)


def explain_paper_loop(classifier, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Way (c): heatmaps [N, L, T - 1], one image and one gradient call per block at a time."""
    rows = []
    for pixel, label in zip(pixels, labels):
        with classifier.adapter.recording_attention() as attentions:
            target = classifier(pixel[None])[0, label]
        gradients = [torch.autograd.grad(target, [a], retain_graph=True)[0] for a in attentions]
        relevances = [(g[0] * a[0]).clamp(min=0).mean(dim=0).detach() for a, g in zip(attentions, gradients)]
        identity = torch.eye(relevances[0].shape[0], device=pixels.device)
        product, per_start = identity, []
        for relevance in reversed(relevances):  # R_s = R_{s+1} (I + C_s)
            product = product @ (identity + relevance)
            per_start.append(product[0, 1:])
        rows.append(torch.stack(per_start[::-1]))
    return torch.stack(rows)


def measure(model: str, way: str, args: argparse.Namespace, queue: multiprocessing.Queue) -> None:
    """In a fresh process: warm up, time one pass over the images, report seconds, peak memory, heatmaps."""
    device = torch.device(args.device)
    torch.manual_seed(1)
    classifier = build_classifier(model, args.classes, device)
    size = classifier.adapter.geometry.crop
    pixels = torch.randn(args.images, 3, size, size, device=device)
    labels = torch.randint(0, args.classes, (args.images,), device=device)

    def run(p: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        if way == "paper-loop":
            return explain_paper_loop(classifier, p, l)
        return explain_batched(classifier, p, l, args.batch_size if way == "batched" else 1)

    run(pixels[:2], labels[:2])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    heatmaps = run(pixels, labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux
    queue.put((time.perf_counter() - start, peak, heatmaps.cpu().numpy()))  # numpy: no shared-memory handles


def run_in_fresh_process(model: str, way: str, args: argparse.Namespace) -> tuple[float, float, torch.Tensor]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(model, way, args, queue))
    process.start()
    seconds, peak, heatmaps = queue.get()
    process.join()
    return seconds, peak, torch.from_numpy(heatmaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=DEFAULT_MODELS,
                        help="tiny: the demo's 4-block, 64 px ViT")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=200, help="prompts of the zero-shot head (CUB: 200)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device_name = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                   else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    memory = "peak CUDA MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(f"device: {device_name}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.images} images, batch {args.batch_size}, {args.classes} classes, generic attention, "
          f"all start layers, fp32\n")
    print(f"| model | way | seconds | images/s | {memory} | speed-up of batched | max abs diff to batched |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, model in MODELS.items():
        if label not in args.models:
            continue
        results = {way: run_in_fresh_process(model, way, args) for way in WAYS}
        batched_seconds, _, batched_heatmaps = results["batched"]
        for way, (seconds, peak, heatmaps) in results.items():
            diff = (heatmaps - batched_heatmaps).abs().max().item()
            print(f"| {label} | {way} | {seconds:.2f} | {args.images / seconds:.2f} | {peak:.0f} | "
                  f"{seconds / batched_seconds:.1f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
