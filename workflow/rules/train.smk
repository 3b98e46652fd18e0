"""Pretraining (demo models only) and fine-tuning.

pretrain  seeded random model + a synthetic split -> results/pretrained/{model}.pt (open_clip state dict),
          for models listed under `pretrain:`; a stand-in for CLIP's web-scale pretraining.

train   model + dataset (train split) + method -> results/checkpoints/{model}/{dataset}/{method}/
        checkpoint.pt (what the GPU stage loads) and train_log.csv (loss / accuracy per epoch).
        Zero-shot writes a checkpoint too: its text head, nothing trained; so does `kind: external`
        from fine-tuned weights made elsewhere (its files are the job's inputs). An interrupted job
        resumes from its last finished epoch (train_state.pt in the same directory). With
        train.nproc_per_node > 1 the job runs under torchrun (DDP), one process per GPU; a method's
        batch_size larger than nproc_per_node x train.max_batch_per_step is accumulated over
        micro-steps (the log says how each optimiser step is split). With `seeds: [a, b, ...]` every
        trained method also runs as <method>@seed<b>, ... (the first seed keeps the method's name).
        Launcher, device and worker count are resources, not params: changing them re-runs nothing.
"""


rule pretrain:
    input:
        pretrain_inputs,
    output:
        "results/pretrained/{model}.pt",
    params:
        model=pretrain_base_spec,
        spec=pretrain_spec,
        dataset_name=pretrain_dataset,
        split=pretrain_split,
        dataset=pretrain_dataset_spec,
        seed=config["seed"],
    log:
        "results/logs/pretrain/{model}.log",
    benchmark:
        "results/benchmarks/pretrain/{model}.tsv"
    threads: stage_threads("train")
    resources:
        gpu=stage_gpus("train"),
        local_gpu_jobs=local_gpu_jobs("train"),
        mem_mb=stage_mem_mb("train"),
        runtime=stage_runtime("train"),
    shell:
        "rationality pretrain --model {params.model:q} --spec {params.spec:q}"
        " --dataset-name {params.dataset_name:q} --dataset {params.dataset:q} --split {params.split:q}"
        " --seed {params.seed} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule train:
    input:
        dataset_inputs,
        model_inputs,
        method_inputs,
    output:
        checkpoint=CHECKPOINT,
        train_log=CHECKPOINT_DIR + "/train_log.csv",
    params:
        model=model_spec,
        dataset=dataset_spec,
        method=method_spec,
        split=train_split,
        seed=train_seed,
        max_batch=max_batch_option,
        out=checkpoint_dir,
    log:
        "results/logs/train/{model}/{dataset}/{method}.log",
    benchmark:
        "results/benchmarks/train/{model}/{dataset}/{method}.tsv"
    threads: stage_threads("train")
    resources:
        gpu=stage_gpus("train") * config["train"]["nproc_per_node"],
        local_gpu_jobs=local_gpu_jobs("train"),
        mem_mb=stage_mem_mb("train"),
        runtime=stage_runtime("train"),
        launcher=train_launcher,
        device=config["train"]["device"],
        num_workers=config["train"]["num_workers"],
    shell:
        "{resources.launcher} train --model {params.model:q} --method {params.method:q}"
        " --dataset-name {wildcards.dataset} --dataset {params.dataset:q} --split {params.split:q}"
        " --seed {params.seed} --device {resources.device} --num-workers {resources.num_workers}{params.max_batch}"
        " --out {params.out:q} --threads {threads} > {log:q} 2>&1"
