# virnucflow: VirNucPro's viral short-sequence identification as a Snakemake workflow.
# Run:  snakemake --cores 2 --configfile config/demo.yaml      (tiny demo models, CPU)
#       snakemake --cores 8 --configfile config/config.yaml    (the real models)

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/classify.smk"


rule all:
    input:
        final_outputs(),
