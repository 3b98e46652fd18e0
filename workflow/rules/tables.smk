"""Tables (threshold applied here; no model runs, clean stores only).

pt_ir_table      every scores store of the runs grid ->
                 results/tables/pt_ir.csv: one row per (model, dataset, method, explainer, start-layer
                 policy) with accuracy, pt, ir, rr, rw, wr, ww, n, edge-case counts (empty mask,
                 zero-sum and non-finite heatmap) and the threshold;
                 results/tables/paper.{csv,md,tex}: the paper's layout (per runs grid, methods x models
                 x datasets plus each method's average over all its models and datasets, for accuracy,
                 PT and IR; best average bold, second best underlined).
bootstrap_table  the same stores -> results/tables/bootstrap.csv: accuracy, PT and IR with bootstrap
                 95% percentile intervals (1,000 resamples of the samples, seed 0).
ood_table        every out-of-distribution scores store -> results/tables/ood.csv: the columns of
                 pt_ir.csv, one row per (model, set, corruption, severity, method, explainer, policy);
                 the clean rows (severity 0) are pt_ir.csv's.
paired_table     the same stores -> results/tables/paired.csv: Δaccuracy, ΔPT, ΔIR of every run (each seed)
                 from the zero-shot run of its model and dataset on the same samples, with paired
                 bootstrap 95% intervals, per metric, explainer and start-layer policy.
seeds_table      (with several `seeds`) the same stores -> results/tables/seeds.{csv,md}: accuracy, PT, IR
                 mean ± sd over the seeds next to the pooled bootstrap intervals.
claims_table     the same stores -> results/tables/claims.csv: the paper's claims (C1 PT lower, C2 IR
                 higher, C3 accuracy higher than zero-shot) for every run, metric, threshold of the
                 metric's grid, normalisation, explainer and start-layer policy: effect, interval,
                 verdict. No threshold param: a new threshold never re-runs it.
ablation_table   the scores stores of one `ablations` entry's runs (its setups' own runs,
                 <method>@<setup>, and the unchanged methods' runs) ->
                 results/tables/ablations/{ablation}.{csv,md,tex}: the paper's Table 3 layout (setups x
                 accuracy, PT, IR; a column per method; the best of each row bold).
"""

from rationality.report.ablations import layout_for


def all_ablation_tables():
    """The Markdown file of every ablation table (the rule writes the CSV and LaTeX next to it)."""
    return [f"results/tables/ablations/{name}.md" for name in config["ablations"]]


def ablation_scores(wildcards):
    """The scores stores of every run an ablation table reads, once each."""
    runs = [cell.run for cell in ablation_cells(config) if cell.ablation == wildcards.ablation]
    return [SCORES.format(model=model, dataset=dataset, method=method) for model, dataset, method in dict.fromkeys(runs)]


def ablation_layout(wildcards):
    return as_json(layout_for(config, wildcards.ablation))


rule pt_ir_table:
    input:
        all_scores(),
    output:
        csv=report("results/tables/pt_ir.csv", caption="../report/pt_ir.rst", category="Tables",
                   labels=made_with_labels(table="pt_ir.csv")),
        paper_csv=report("results/tables/paper.csv", caption="../report/paper.rst", category="Tables",
                         labels=made_with_labels(table="paper.csv")),
        markdown="results/tables/paper.md",
        latex="results/tables/paper.tex",
    params:
        threshold=config["threshold"],
        thresholds=metric_thresholds(),
        undefined=config["undefined_policy"],
        grids=as_json(run_grids(config)),
    log:
        "results/logs/tables/pt_ir.log",
    benchmark:
        "results/benchmarks/tables/pt_ir.tsv"
    threads: stage_threads("report")
    resources:
        mem_mb=stage_mem_mb("report"),
        runtime=stage_runtime("report"),
    shell:
        "rationality table {input:q} --threshold {params.threshold} --metric-thresholds {params.thresholds:q}"
        " --undefined {params.undefined} --out {output.csv:q} --paper-csv {output.paper_csv:q} --markdown {output.markdown:q}"
        " --latex {output.latex:q} --grids {params.grids:q} --threads {threads} > {log:q} 2>&1"


rule bootstrap_table:
    input:
        all_scores(),
    output:
        report("results/tables/bootstrap.csv", caption="../report/bootstrap.rst", category="Tables",
               labels=made_with_labels(table="bootstrap.csv")),
    params:
        threshold=config["threshold"],
        thresholds=metric_thresholds(),
        undefined=config["undefined_policy"],
        resamples=1000,
        seed=0,
    log:
        "results/logs/tables/bootstrap.log",
    benchmark:
        "results/benchmarks/tables/bootstrap.tsv"
    threads: stage_threads("report")
    resources:
        mem_mb=stage_mem_mb("report"),
        runtime=stage_runtime("report"),
    shell:
        "rationality bootstrap {input:q} --threshold {params.threshold} --metric-thresholds {params.thresholds:q}"
        " --undefined {params.undefined} --resamples {params.resamples} --seed {params.seed} --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"


rule ood_table:
    input:
        all_ood_scores(),
    output:
        report("results/tables/ood.csv", caption="../report/ood_table.rst", category="Tables",
               labels=made_with_labels(table="ood.csv")),
    params:
        threshold=config["threshold"],
        thresholds=metric_thresholds(),
        undefined=config["undefined_policy"],
    log:
        "results/logs/tables/ood.log",
    benchmark:
        "results/benchmarks/tables/ood.tsv"
    threads: stage_threads("report")
    resources:
        mem_mb=stage_mem_mb("report"),
        runtime=stage_runtime("report"),
    shell:
        "rationality table {input:q} --threshold {params.threshold} --metric-thresholds {params.thresholds:q}"
        " --undefined {params.undefined} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule ablation_table:
    input:
        ablation_scores,
    output:
        csv=report("results/tables/ablations/{ablation}.csv", caption="../report/ablation.rst", category="Tables",
                   labels=made_with_labels(table="{ablation}.csv")),
        markdown="results/tables/ablations/{ablation}.md",
        latex="results/tables/ablations/{ablation}.tex",
    params:
        layout=ablation_layout,
        threshold=config["threshold"],
        thresholds=metric_thresholds(),
        undefined=config["undefined_policy"],
    log:
        "results/logs/tables/ablations/{ablation}.log",
    benchmark:
        "results/benchmarks/tables/ablations/{ablation}.tsv"
    threads: stage_threads("report")
    resources:
        mem_mb=stage_mem_mb("report"),
        runtime=stage_runtime("report"),
    shell:
        "rationality ablation-table {input:q} --layout {params.layout:q} --threshold {params.threshold}"
        " --metric-thresholds {params.thresholds:q} --undefined {params.undefined} --out {output.csv:q} --markdown {output.markdown:q}"
        " --latex {output.latex:q} --threads {threads} > {log:q} 2>&1"


rule paired_table:
    input:
        all_scores(),
    output:
        report("results/tables/paired.csv", caption="../report/paired.rst", category="Tables",
               labels=made_with_labels(table="paired.csv")),
    params:
        threshold=config["threshold"],
        thresholds=metric_thresholds(),
        undefined=config["undefined_policy"],
        resamples=1000,
        seed=0,
    log:
        "results/logs/tables/paired.log",
    benchmark:
        "results/benchmarks/tables/paired.tsv"
    threads: stage_threads("report")
    resources:
        mem_mb=stage_mem_mb("report"),
        runtime=stage_runtime("report"),
    shell:
        "rationality paired {input:q} --threshold {params.threshold} --metric-thresholds {params.thresholds:q}"
        " --undefined {params.undefined} --resamples {params.resamples} --seed {params.seed} --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"


rule seeds_table:
    input:
        all_scores(),
    output:
        csv=report("results/tables/seeds.csv", caption="../report/seeds.rst", category="Tables",
                   labels=made_with_labels(table="seeds.csv")),
        markdown="results/tables/seeds.md",
    params:
        threshold=config["threshold"],
        thresholds=metric_thresholds(),
        undefined=config["undefined_policy"],
        resamples=1000,
        seed=0,
    log:
        "results/logs/tables/seeds.log",
    benchmark:
        "results/benchmarks/tables/seeds.tsv"
    threads: stage_threads("report")
    resources:
        mem_mb=stage_mem_mb("report"),
        runtime=stage_runtime("report"),
    shell:
        "rationality seeds {input:q} --threshold {params.threshold} --metric-thresholds {params.thresholds:q}"
        " --undefined {params.undefined} --resamples {params.resamples} --seed {params.seed} --out {output.csv:q}"
        " --markdown {output.markdown:q} --threads {threads} > {log:q} 2>&1"


rule claims_table:
    input:
        all_scores(),
    output:
        report("results/tables/claims.csv", caption="../report/claims_table.rst", category="Tables",
               labels=made_with_labels(table="claims.csv")),
    params:
        undefined=config["undefined_policy"],
        resamples=1000,
        seed=0,
    log:
        "results/logs/tables/claims.log",
    benchmark:
        "results/benchmarks/tables/claims.tsv"
    threads: stage_threads("report")
    resources:
        mem_mb=stage_mem_mb("report"),
        runtime=stage_runtime("report"),
    shell:
        "rationality claims {input:q} --undefined {params.undefined} --resamples {params.resamples}"
        " --seed {params.seed} --out {output:q} --threads {threads} > {log:q} 2>&1"
