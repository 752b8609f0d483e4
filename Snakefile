# virnucflow: VirNucPro's viral short-sequence identification as a Snakemake workflow.
# Run:  snakemake --cores 2 --configfile config/demo.yaml      (tiny demo models, CPU)
#       snakemake --cores 8 --configfile config/config.yaml    (the real models)
#       snakemake --report report.html --configfile ...        (the report, after a run)
#       snakemake download_models --cores 1                     (fetch the real models once)

from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        final_outputs(),
        report_outputs(),
