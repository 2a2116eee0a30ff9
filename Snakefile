# mergeflow: download -> gradual merge steps -> evaluate -> report -> upload, each stage cached.
# The rules live in workflow/rules/; the logic they run lives in the mergeflow package.
from snakemake.utils import min_version

min_version("9.0")


# The demo's config, unless `--configfile` names another (e.g. config/examples/*/config.yaml):
# that one then replaces it, rather than being merged into it. Jobs get the same --configfile.
if not workflow.overwrite_configfiles:

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
