"""The GPU stage.

infer   checkpoint + dataset (test split) -> results/cache/{model}/{dataset}/{method}.zarr:
        logits (sample, class), label (sample), heatmap (sample, explainer, start_layer, gy, gx).
        Written batch by batch to <store>.partial, resumable, renamed when complete.
infer_ood   the clean dataset's checkpoint + an out-of-distribution set at one (corruption, severity)
        -> results/cache/{model}/{ood}/{method}/{corruption}-s{severity}.zarr (same sample ids);
        none-s0.zarr is severity 0, the clean images in the set's frame (ImageNet-C's 256/224 crop
        for source imagenet_c).
Batch size, device and worker count are resources, not params: heatmaps do not depend on them, so
changing them re-runs nothing.
"""


rule infer:
    input:
        dataset_inputs,
        model_inputs,
        checkpoint=CHECKPOINT,
    output:
        directory(CACHE),
    params:
        dataset=dataset_spec,
        split=test_split,
        explainers=config["explainers"],
        precision=config["infer"]["precision"],
        method_name=store_method_name,
    log:
        "results/logs/infer/{model}/{dataset}/{method}.log",
    benchmark:
        "results/benchmarks/infer/{model}/{dataset}/{method}.tsv"
    threads: stage_threads("infer")
    resources:
        gpu=stage_gpus("infer"),
        local_gpu_jobs=local_gpu_jobs("infer"),
        mem_mb=stage_mem_mb("infer"),
        runtime=stage_runtime("infer"),
        batch_size=config["infer"]["batch_size"],
        device=config["infer"]["device"],
        num_workers=config["infer"]["num_workers"],
    shell:
        "rationality infer --checkpoint {input.checkpoint:q}"
        " --dataset-name {wildcards.dataset} --dataset {params.dataset:q} --split {params.split:q}"
        " --explainers {params.explainers} --batch-size {resources.batch_size} --device {resources.device}"
        " --num-workers {resources.num_workers} --precision {params.precision} --model-name {wildcards.model}"
        " --method-name {params.method_name:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule infer_ood:
    input:
        ood_inputs,
        model_inputs,
        checkpoint=ood_checkpoint,
    output:
        directory(OOD_CACHE),
    params:
        dataset=ood_spec,
        split=ood_test_split,
        explainers=config["explainers"],
        precision=config["infer"]["precision"],
    log:
        "results/logs/infer/{model}/{ood}/{method}/{corruption}-s{severity}.log",
    benchmark:
        "results/benchmarks/infer/{model}/{ood}/{method}/{corruption}-s{severity}.tsv"
    threads: stage_threads("infer")
    resources:
        gpu=stage_gpus("infer"),
        local_gpu_jobs=local_gpu_jobs("infer"),
        mem_mb=stage_mem_mb("infer"),
        runtime=stage_runtime("infer"),
        batch_size=config["infer"]["batch_size"],
        device=config["infer"]["device"],
        num_workers=config["infer"]["num_workers"],
    shell:
        "rationality infer --checkpoint {input.checkpoint:q}"
        " --dataset-name {wildcards.ood} --dataset {params.dataset:q} --split {params.split:q}"
        " --corruption {wildcards.corruption} --severity {wildcards.severity}"
        " --explainers {params.explainers} --batch-size {resources.batch_size} --device {resources.device}"
        " --num-workers {resources.num_workers} --precision {params.precision} --model-name {wildcards.model}"
        " --method-name {wildcards.method} --out {output:q} --threads {threads} > {log:q} 2>&1"
