"""The CPU stage (no model runs).

project_masks   masks -> results/masks/{dataset}/{split}-{geometry}-grid{grid}.zarr: each mask and its
                bounding box projected onto the token grid once (the linear metrics then read gy*gx
                numbers per sample)
score   cache + masks + their projections -> results/scores/{model}/{dataset}/{method}.zarr:
        score and edge_case (sample, normalization, metric, explainer, start_layer) for every metric of
        scoring.metrics under both normalisations, label, prediction, correct (sample).
        Only the scoring options are params: a new threshold never re-runs it.
score_ood   the same for results/cache/{model}/{ood}/{method}/{corruption}-s{severity}.zarr
        -> results/scores/{model}/{ood}/{method}/{corruption}-s{severity}.zarr.
"""


rule project_masks:
    input:
        "results/masks/{dataset}/{split}-{geometry}.zarr",
    output:
        directory("results/masks/{dataset}/{split}-{geometry}-grid{grid}.zarr"),
    log:
        "results/logs/project_masks/{dataset}/{split}-{geometry}-grid{grid}.log",
    benchmark:
        "results/benchmarks/project_masks/{dataset}/{split}-{geometry}-grid{grid}.tsv"
    threads: stage_threads("data")
    resources:
        mem_mb=stage_mem_mb("data"),
        runtime=stage_runtime("data"),
    shell:
        "rationality project-masks --masks {input:q} --grid {wildcards.grid} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule score:
    input:
        cache=CACHE,
        masks=masks_for_cache,
        projections=projections_for_cache,
    output:
        directory(SCORES),
    params:
        normalization=config["scoring"]["normalization"],
        metrics=config["scoring"]["metrics"],
    log:
        "results/logs/score/{model}/{dataset}/{method}.log",
    benchmark:
        "results/benchmarks/score/{model}/{dataset}/{method}.tsv"
    threads: stage_threads("score")
    resources:
        mem_mb=stage_mem_mb("score"),
        runtime=stage_runtime("score"),
    shell:
        "rationality score --cache {input.cache:q} --masks {input.masks:q} --projections {input.projections:q}"
        " --normalization {params.normalization} --metrics {params.metrics} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule score_ood:
    input:
        cache=OOD_CACHE,
        masks=masks_for_cache,
        projections=projections_for_cache,
    output:
        directory(OOD_SCORES),
    params:
        normalization=config["scoring"]["normalization"],
        metrics=config["scoring"]["metrics"],
    log:
        "results/logs/score/{model}/{ood}/{method}/{corruption}-s{severity}.log",
    benchmark:
        "results/benchmarks/score/{model}/{ood}/{method}/{corruption}-s{severity}.tsv"
    threads: stage_threads("score")
    resources:
        mem_mb=stage_mem_mb("score"),
        runtime=stage_runtime("score"),
    shell:
        "rationality score --cache {input.cache:q} --masks {input.masks:q} --projections {input.projections:q}"
        " --normalization {params.normalization} --metrics {params.metrics} --out {output:q} --threads {threads} > {log:q} 2>&1"
