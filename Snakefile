# The rationality workflow. Rules live in workflow/; see README.md and config/README.md.
include: "workflow/Snakefile"


# Here, not in workflow/Snakefile: Snakemake ignores `default_target` in an included file.
rule all:
    default_target: True
    input:
        rules.tables_and_figures.input,
