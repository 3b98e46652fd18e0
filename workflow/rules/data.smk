"""Data rules.

synthetic_data  -> results/data/{synthetic}/samples.csv (+ images/, masks/, classes.txt)
masks           dataset -> results/masks/{dataset}/{split}-{geometry}.zarr (CPU, once per geometry)
"""


rule synthetic_data:
    output:
        "results/data/{synthetic}/samples.csv",
    params:
        spec=synthetic_spec,
    log:
        "results/logs/synthetic_data/{synthetic}.log",
    benchmark:
        "results/benchmarks/synthetic_data/{synthetic}.tsv"
    threads: stage_threads("data")
    resources:
        mem_mb=stage_mem_mb("data"),
        runtime=stage_runtime("data"),
    shell:
        "rationality synth --spec {params.spec:q} --out results/data/{wildcards.synthetic} > {log:q} 2>&1"


rule masks:
    input:
        dataset_inputs,
    output:
        directory("results/masks/{dataset}/{split}-{geometry}.zarr"),
    params:
        dataset=dataset_spec,
    log:
        "results/logs/masks/{dataset}/{split}-{geometry}.log",
    benchmark:
        "results/benchmarks/masks/{dataset}/{split}-{geometry}.tsv"
    threads: stage_threads("data")
    resources:
        mem_mb=stage_mem_mb("data"),
        runtime=stage_runtime("data"),
    shell:
        "rationality masks --dataset-name {wildcards.dataset} --dataset {params.dataset:q}"
        " --split {wildcards.split} --geometry {wildcards.geometry} --out {output:q} > {log:q} 2>&1"
