# mergeflow: download -> gradual merge steps -> evaluate -> report -> upload, each stage cached.
# The rules live in workflow/rules/; the logic they run lives in the mergeflow package.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "reports/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/merge.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/verify.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/upload.smk"


rule all:
    default_target: True
    input:
        final_targets,
