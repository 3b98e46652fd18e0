"""Tables (threshold applied here, and only here).

pt_ir_table   every scores store of the runs grid -> results/tables/pt_ir.csv: one row per
              (model, dataset, method, explainer, start-layer policy) with accuracy, pt, ir,
              rr, rw, wr, ww, n, edge-case counts and the threshold.
"""


rule pt_ir_table:
    input:
        all_scores(),
    output:
        "results/tables/pt_ir.csv",
    params:
        threshold=config["threshold"],
        undefined=config["undefined_policy"],
    log:
        "results/logs/tables/pt_ir.log",
    benchmark:
        "results/benchmarks/tables/pt_ir.tsv"
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    shell:
        "rationality table {input:q} --threshold {params.threshold} --undefined {params.undefined}"
        " --out {output:q} > {log:q} 2>&1"
