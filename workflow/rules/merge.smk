# Merge: one job per merged node (a step, or one variant of a step), through the merge engine
# (mergeflow moe for a step with experts).
# Downstream jobs read the weights' digest, not the model directory, and merge is a checkpoint:
# a rebuild with identical weights writes an identical digest and reruns nothing downstream.
# Selection and promotion are bookkeeping: on the submitting node unless cluster.small.where: job.


if runs_locally("small"):

    localrules:
        select,
        promote,


rule engine_config:
    output:
        "results/{node}/merge.yml",
    log:
        "results/logs/engine_config/{node}.log",
    wildcard_constraints:
        node=one_of(PLAN.merged),
    params:
        sha256=lambda wildcards: text_sha256(engine_config_text(wildcards)),
    run:
        write_generated(output, log, engine_config_text(wildcards))


checkpoint merge:
    input:
        config="results/{node}/merge.yml",
        models=lambda wildcards: depends(
            wildcards.node,
            [
                PLAN.path(p, "digest")
                for p in PLAN.nodes[wildcards.node].parents
                + PLAN.nodes[wildcards.node].adapters
            ],
        ),
    output:
        model=directory("results/{node}/model"),
        digest="results/{node}/model.sha256",
    log:
        "results/logs/merge/{node}.log",
    wildcard_constraints:
        node=one_of(PLAN.merged),
    conda:
        "../../envs/mergeflow.yaml"
    threads: MERGE["threads"]
    resources:
        **job_resources(
            "merge",
            mem_mb=lambda wildcards: 2048 + model_mb(wildcards.node),
            cpus=MERGE["threads"],
            device=MERGE["device"],
        ),
    params:
        command=merge_command,
        options=merge_options(),
    shell:
        "(HF_HUB_OFFLINE=1 mergeflow {params.command} {input.config:q} {output.model:q} {params.options}"
        " -j {threads} && mergeflow digest {output.model:q} --output {output.digest:q})"
        " > {log} 2>&1"


rule select:
    input:
        manifest="results/{node}/manifest.json",
        evals=lambda wildcards: [
            PLAN.path(v, "eval") for v in PLAN.nodes[wildcards.node].variants
        ],
    output:
        report(
            "results/{node}/selected.json",
            caption="../../reports/selected.rst",
            category="Variants",
            labels={"step": "{node}"},
        ),
    log:
        "results/logs/select/{node}.log",
    wildcard_constraints:
        node=one_of(PLAN.variant_steps),
    conda:
        "../../envs/report.yaml"
    resources:
        **job_resources("small"),
    shell:
        "mergeflow select --manifest {input.manifest:q} --step {wildcards.node}"
        " --output {output:q} > {log} 2>&1"


checkpoint promote:
    input:
        selected="results/{node}/selected.json",
        variants=lambda wildcards: depends(
            wildcards.node,
            [PLAN.path(v, "digest") for v in PLAN.nodes[wildcards.node].variants],
        ),
    output:
        model=directory("results/{node}/model"),
        digest="results/{node}/model.sha256",
    log:
        "results/logs/promote/{node}.log",
    wildcard_constraints:
        node=one_of(PLAN.variant_steps),
    conda:
        "../../envs/mergeflow.yaml"
    resources:
        **job_resources("small"),
    shell:
        "mergeflow promote {input.selected:q} --model {output.model:q} --digest {output.digest:q}"
        " > {log} 2>&1"
