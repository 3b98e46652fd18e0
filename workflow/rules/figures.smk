"""Figures, from scores stores (galleries also from cache and mask stores): no model runs.

threshold_figure    scores of (model, dataset) -> results/figures/threshold_{model}_{dataset}.png:
                    PT and IR over the RMA threshold in [0, 1], per method (no threshold param)
start_layer_figure  the same -> results/figures/start_layer_{model}_{dataset}.png: PT and IR by
                    start layer, per method, at the configured threshold
gallery             scores + caches + mask store of (model, dataset), and the dataset's images ->
                    results/figures/gallery_{model}_{dataset}.png: heatmaps of samples every method
                    got right (the paper's Figure 3)
gallery_changed     the same -> results/figures/gallery_{model}_{dataset}_changed.png: samples whose
                    quadrant changed from zero-shot to a fine-tuned method
ood_figure          out-of-distribution scores of a model, severity 0 (none-s0) included ->
                    results/figures/ood_{model}.png: accuracy, PT and IR against corruption severity
                    (the paper's Figure 4), a line per method averaged over the corruptions
ood_figure_per_corruption  the same -> results/figures/ood_{model}_per_corruption.png: a row per
                    corruption
paired_figure       results/tables/paired.csv -> results/figures/paired_{model}_{dataset}.png: Δaccuracy,
                    ΔPT, ΔIR from zero-shot with paired intervals, per run and start-layer policy
claims_figure       results/tables/claims.csv -> results/figures/claims.png: where each of the paper's
                    claims holds, per run and metric
tables_and_figures  every table and figure of the grid, what the default target (the root Snakefile's
                    `all`) builds: `snakemake --cores 8`, then `snakemake --report results/report.html`
"""

GALLERY_SAMPLES = 6


report: "../report/workflow.rst"


def _runs_on(wildcards):
    """(model, dataset, method) of every method run on the wildcards' (model, dataset), in config order."""
    return [(model, dataset, method) for model, dataset, method in run_triples(config)
            if (model, dataset) == (wildcards.model, wildcards.dataset)]


def run_scores(wildcards):
    """The scores stores of every method run on (model, dataset)."""
    return [SCORES.format(model=model, dataset=dataset, method=method) for model, dataset, method in _runs_on(wildcards)]


def run_caches(wildcards):
    """The cache stores of every method run on (model, dataset), in the order of :func:`run_scores`."""
    return [CACHE.format(model=model, dataset=dataset, method=method) for model, dataset, method in _runs_on(wildcards)]


def run_masks(wildcards):
    """The mask store of the dataset's test split in the model's geometry."""
    split = config["datasets"][wildcards.dataset]["test_split"]
    return f"results/masks/{wildcards.dataset}/{split}-{model_geometry(wildcards.model)}.zarr"


def ood_figure_scores(wildcards):
    """A model's out-of-distribution scores stores, severity 0 (each set's clean images in its own
    frame, ``none-s0``) included; never the main table's clean stores."""
    return [path for path, run in zip(all_ood_scores(), ood_runs(config)) if run[0] == wildcards.model]


def all_figures():
    """Every figure of the runs grid (galleries of changed samples where one method is zero-shot)."""
    runs = {}
    for model, dataset, method in run_triples(config):
        runs.setdefault((model, dataset), []).append(config["methods"][method]["kind"])
    figures = [f"results/figures/{kind}_{model}_{dataset}.png"
               for model, dataset in runs for kind in ("threshold", "start_layer", "gallery")]
    figures += [f"results/figures/gallery_{model}_{dataset}_changed.png" for (model, dataset), kinds in runs.items()
                if kinds.count("zero_shot") == 1 and len(kinds) > 1]
    figures += [f"results/figures/ood_{model}{layout}.png" for model in dict.fromkeys(run[0] for run in ood_runs(config))
                for layout in ("", "_per_corruption")]
    figures += [f"results/figures/paired_{model}_{dataset}.png" for (model, dataset), kinds in runs.items()
                if kinds.count("zero_shot") == 1 and len(kinds) > 1]
    return figures + ["results/figures/claims.png"]


rule threshold_figure:
    input:
        run_scores,
    output:
        report("results/figures/threshold_{model}_{dataset}.png", caption="../report/threshold.rst",
               category="Figures", subcategory="Threshold sweeps",
               labels=made_with_labels(model="{model}", dataset="{dataset}")),
    params:
        undefined=config["undefined_policy"],
    log:
        "results/logs/figures/threshold_{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/figures/threshold_{model}_{dataset}.tsv"
    threads: stage_threads("report")
    resources:
        mem_mb=stage_mem_mb("report"),
        runtime=stage_runtime("report"),
    shell:
        "rationality figure threshold {input:q} --undefined {params.undefined} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule start_layer_figure:
    input:
        run_scores,
    output:
        report("results/figures/start_layer_{model}_{dataset}.png", caption="../report/start_layer.rst",
               category="Figures", subcategory="Start layers",
               labels=made_with_labels(model="{model}", dataset="{dataset}")),
    params:
        threshold=config["threshold"],
        thresholds=metric_thresholds(),
        undefined=config["undefined_policy"],
    log:
        "results/logs/figures/start_layer_{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/figures/start_layer_{model}_{dataset}.tsv"
    threads: stage_threads("report")
    resources:
        mem_mb=stage_mem_mb("report"),
        runtime=stage_runtime("report"),
    shell:
        "rationality figure start-layer {input:q} --threshold {params.threshold}"
        " --metric-thresholds {params.thresholds:q} --undefined {params.undefined} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule gallery:
    input:
        dataset_inputs,
        scores=run_scores,
        caches=run_caches,
        masks=run_masks,
    output:
        report("results/figures/gallery_{model}_{dataset}.png", caption="../report/gallery.rst",
               category="Figures", subcategory="Heatmap galleries",
               labels=made_with_labels(model="{model}", dataset="{dataset}", samples="right under every method")),
    params:
        selection="all_correct",
        samples=GALLERY_SAMPLES,
        threshold=config["threshold"],
        thresholds=metric_thresholds(),
        undefined=config["undefined_policy"],
    log:
        "results/logs/figures/gallery_{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/figures/gallery_{model}_{dataset}.tsv"
    threads: stage_threads("report")
    resources:
        mem_mb=stage_mem_mb("report"),
        runtime=stage_runtime("report"),
    shell:
        "rationality figure gallery --scores {input.scores:q} --cache {input.caches:q} --masks {input.masks:q}"
        " --selection {params.selection} --samples {params.samples} --threshold {params.threshold}"
        " --metric-thresholds {params.thresholds:q} --undefined {params.undefined} --out {output:q} --threads {threads} > {log:q} 2>&1"


use rule gallery as gallery_changed with:
    output:
        report("results/figures/gallery_{model}_{dataset}_changed.png", caption="../report/gallery_changed.rst",
               category="Figures", subcategory="Heatmap galleries",
               labels=made_with_labels(model="{model}", dataset="{dataset}", samples="quadrant changed from zero-shot")),
    params:
        selection="changed",
        samples=GALLERY_SAMPLES,
        threshold=config["threshold"],
        thresholds=metric_thresholds(),
        undefined=config["undefined_policy"],
    log:
        "results/logs/figures/gallery_{model}_{dataset}_changed.log",
    benchmark:
        "results/benchmarks/figures/gallery_{model}_{dataset}_changed.tsv"


rule ood_figure:
    input:
        ood_figure_scores,
    output:
        report("results/figures/ood_{model}.png", caption="../report/ood.rst", category="Figures",
               subcategory="Corruption severity", labels=made_with_labels(model="{model}", corruptions="mean")),
    params:
        threshold=config["threshold"],
        thresholds=metric_thresholds(),
        undefined=config["undefined_policy"],
        layout="",
    log:
        "results/logs/figures/ood_{model}.log",
    benchmark:
        "results/benchmarks/figures/ood_{model}.tsv"
    threads: stage_threads("report")
    resources:
        mem_mb=stage_mem_mb("report"),
        runtime=stage_runtime("report"),
    shell:
        "rationality figure ood {input:q} --threshold {params.threshold} --metric-thresholds {params.thresholds:q}"
        " --undefined {params.undefined} {params.layout} --out {output:q} --threads {threads} > {log:q} 2>&1"


use rule ood_figure as ood_figure_per_corruption with:
    output:
        report("results/figures/ood_{model}_per_corruption.png", caption="../report/ood_per_corruption.rst",
               category="Figures", subcategory="Corruption severity",
               labels=made_with_labels(model="{model}", corruptions="each")),
    params:
        threshold=config["threshold"],
        thresholds=metric_thresholds(),
        undefined=config["undefined_policy"],
        layout="--per-corruption",
    log:
        "results/logs/figures/ood_{model}_per_corruption.log",
    benchmark:
        "results/benchmarks/figures/ood_{model}_per_corruption.tsv"


rule paired_figure:
    input:
        rules.paired_table.output,
    output:
        report("results/figures/paired_{model}_{dataset}.png", caption="../report/paired_figure.rst",
               category="Figures", subcategory="Paired differences", labels={"model": "{model}", "dataset": "{dataset}"}),
    log:
        "results/logs/figures/paired_{model}_{dataset}.log",
    benchmark:
        "results/benchmarks/figures/paired_{model}_{dataset}.tsv"
    threads: stage_threads("report")
    resources:
        mem_mb=stage_mem_mb("report"),
        runtime=stage_runtime("report"),
    shell:
        "rationality figure paired {input:q} --model {wildcards.model} --dataset {wildcards.dataset}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule claims_figure:
    input:
        rules.claims_table.output,
    output:
        report("results/figures/claims.png", caption="../report/claims.rst", category="Figures",
               subcategory="Claims"),
    log:
        "results/logs/figures/claims.log",
    benchmark:
        "results/benchmarks/figures/claims.tsv"
    threads: stage_threads("report")
    resources:
        mem_mb=stage_mem_mb("report"),
        runtime=stage_runtime("report"),
    shell:
        "rationality figure claims {input:q} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule tables_and_figures:
    input:
        rules.pt_ir_table.output,
        rules.bootstrap_table.output,
        rules.paired_table.output,
        rules.claims_table.output,
        rules.seeds_table.output if len(run_seeds(config)) > 1 else [],
        rules.ood_table.output if config["ood"] else [],
        all_ablation_tables(),
        all_figures(),
