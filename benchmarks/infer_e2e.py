"""The GPU stage end to end through the CLI: ``rationality infer`` on generated images, Zarr writes included.

Generates ``--images`` synthetic test images (4 classes, ``--size`` pixels on the short side, PNG),
writes a zero-shot checkpoint of each random-init open_clip model, then times one ``rationality infer``
process per (model, precision): start-up, model loading, image decoding in ``--workers`` DataLoader
processes, the explanation pass (generic attention and attention gradient, every start layer) and the
compressed Zarr writes. Prints a Markdown table (images/s over the command's whole wall time, the
GPU busy share the stage logs on a GPU, bytes per sample of the store) and writes it as JSON.

    python benchmarks/infer_e2e.py --device cuda --images 5000 --batch-size 256 --workers 12 \\
        --precisions fp32 bf16 --json e2e.json
    python benchmarks/infer_e2e.py --tiny                      # seconds, on the CPU (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {"ViT-B/32": "ViT-B-32-quickgelu", "ViT-B/16": "ViT-B-16-quickgelu", "tiny": "rationality-tiny-vit"}
EXPLAINERS = ["generic_attention", "attention_gradient"]
CLASSES = 4


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["ViT-B/32", "ViT-B/16"])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=224, help="short side of the generated images")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader processes")
    parser.add_argument("--precisions", nargs="+", default=["fp32"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", help="directory for data, checkpoints and stores (default: a temporary one)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--tiny", action="store_true", help="the tiny ViT on 32 images of 64 px on the CPU")
    args = parser.parse_args()
    if args.tiny:
        args.models, args.images, args.size, args.batch_size, args.workers, args.device = (
            ["tiny"], 32, 64, 8, 1, "cpu")

    from rationality.data.synthetic import generate_synthetic_dataset
    from rationality.train import train_checkpoint

    work = Path(args.work or tempfile.mkdtemp(prefix="infer-e2e-"))
    per_class = -(-args.images // CLASSES)
    start = time.perf_counter()
    data = work / "data"
    generate_synthetic_dataset(data, samples_per_class={"train": 1, "test": per_class},
                               image_size=(args.size * 8 // 7, args.size), seed=0, workers=max(args.workers, 1))
    print(f"generated {per_class * CLASSES} test images of {args.size} px in {time.perf_counter() - start:.1f} s",
          flush=True)
    dataset = {"name": "synthetic", "reader": "synthetic", "root": str(data)}
    rows = []
    for label in args.models:
        model = {"adapter": "open_clip", "name": MODELS[label], "seed": 0}
        checkpoint = train_checkpoint(model, dataset, {"kind": "zero_shot"}, "train", work / label.replace("/", "-"),
                                      device="cpu")
        for precision in args.precisions:
            out = work / f"{label.replace('/', '-')}-{precision}.zarr"
            command = [sys.executable, "-m", "rationality", "infer", "--checkpoint", str(checkpoint),
                       "--dataset-name", "synthetic", "--dataset", json.dumps({"reader": "synthetic", "root": str(data)}),
                       "--split", "test", "--explainers", *EXPLAINERS, "--batch-size", str(args.batch_size),
                       "--num-workers", str(args.workers), "--device", args.device, "--precision", precision,
                       "--out", str(out)]
            start = time.perf_counter()
            finished = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if finished.returncode:
                raise SystemExit(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
            busy = re.search(r"GPU busy ([\d.]+) s of ([\d.]+) s wall \((\d+)%\)", finished.stderr)
            rows.append({"model": label, "precision": precision, "images": per_class * CLASSES, "seconds": seconds,
                         "images_per_second": per_class * CLASSES / seconds,
                         "gpu_busy_percent": int(busy.group(3)) if busy else None,
                         "loop_seconds": float(busy.group(2)) if busy else None,
                         "bytes_per_sample": store_bytes(out) / (per_class * CLASSES)})
    print("| model | precision | images | seconds (whole command) | images/s | GPU busy / loop wall | "
          "store bytes per sample |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        busy = "" if row["gpu_busy_percent"] is None else f"{row['gpu_busy_percent']}% of {row['loop_seconds']:.1f} s"
        print(f"| {row['model']} | {row['precision']} | {row['images']} | {row['seconds']:.1f} | "
              f"{row['images_per_second']:.0f} | {busy} | {row['bytes_per_sample']:.0f} |", flush=True)
    if args.json:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "CPU"
        Path(args.json).write_text(json.dumps({
            "device": device, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "batch_size": args.batch_size, "workers": args.workers, "explainers": EXPLAINERS, "rows": rows},
            indent=1))


if __name__ == "__main__":
    main()
