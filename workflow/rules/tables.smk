"""Tables (threshold applied here; no model runs, clean stores only).

pt_ir_table      every scores store of the runs grid ->
                 results/tables/pt_ir.csv: one row per (model, dataset, method, explainer, start-layer
                 policy) with accuracy, pt, ir, rr, rw, wr, ww, n, edge-case counts (empty mask,
                 zero-sum and non-finite heatmap) and the threshold;
                 results/tables/paper.{csv,md,tex}: the paper's layout (per model, methods x datasets
                 plus their average, for accuracy, PT and IR; best bold, second best underlined).
bootstrap_table  the same stores -> results/tables/bootstrap.csv: accuracy, PT and IR with bootstrap
                 95% percentile intervals (1,000 resamples of the samples, seed 0).
ood_table        every out-of-distribution scores store -> results/tables/ood.csv: the columns of
                 pt_ir.csv, one row per (model, set, corruption, severity, method, explainer, policy);
                 the clean rows (severity 0) are pt_ir.csv's.
"""


rule pt_ir_table:
    input:
        all_scores(),
    output:
        csv=report("results/tables/pt_ir.csv", caption="../report/pt_ir.rst", category="Tables"),
        paper_csv=report("results/tables/paper.csv", caption="../report/paper.rst", category="Tables"),
        markdown="results/tables/paper.md",
        latex="results/tables/paper.tex",
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
        " --out {output.csv:q} --paper-csv {output.paper_csv:q} --markdown {output.markdown:q}"
        " --latex {output.latex:q} --threads {threads} > {log:q} 2>&1"


rule bootstrap_table:
    input:
        all_scores(),
    output:
        report("results/tables/bootstrap.csv", caption="../report/bootstrap.rst", category="Tables"),
    params:
        threshold=config["threshold"],
        undefined=config["undefined_policy"],
        resamples=1000,
        seed=0,
    log:
        "results/logs/tables/bootstrap.log",
    benchmark:
        "results/benchmarks/tables/bootstrap.tsv"
    resources:
        gpu=0,
        mem_mb=4000,
        runtime=30,
    shell:
        "rationality bootstrap {input:q} --threshold {params.threshold} --undefined {params.undefined}"
        " --resamples {params.resamples} --seed {params.seed} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule ood_table:
    input:
        all_ood_scores(),
    output:
        report("results/tables/ood.csv", caption="../report/ood_table.rst", category="Tables"),
    params:
        threshold=config["threshold"],
        undefined=config["undefined_policy"],
    log:
        "results/logs/tables/ood.log",
    benchmark:
        "results/benchmarks/tables/ood.tsv"
    resources:
        gpu=0,
        mem_mb=2000,
        runtime=10,
    shell:
        "rationality table {input:q} --threshold {params.threshold} --undefined {params.undefined}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"
