"""The CPU stage (no model runs).

score   cache + masks (model-input geometry) -> results/scores/{model}/{dataset}/{method}.zarr:
        rma and edge_case (sample, explainer, start_layer), label, prediction, correct (sample).
        Only the scoring options are params: a new threshold never re-runs it.
"""


rule score:
    input:
        cache="results/cache/{model}/{dataset}/{method}.zarr",
        masks=masks_for_cache,
    output:
        directory("results/scores/{model}/{dataset}/{method}.zarr"),
    params:
        normalization=config["scoring"]["normalization"],
    log:
        "results/logs/score/{model}/{dataset}/{method}.log",
    benchmark:
        "results/benchmarks/score/{model}/{dataset}/{method}.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "rationality score --cache {input.cache:q} --masks {input.masks:q}"
        " --normalization {params.normalization} --out {output:q} > {log:q} 2>&1"
