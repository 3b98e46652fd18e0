# The rationality workflow. Rules live in workflow/; see README.md and config/README.md.
include: "workflow/Snakefile"
