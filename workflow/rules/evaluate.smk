# Evaluate every input model and every merged node exactly once (a step promoted from its best
# variant is represented by that variant's results), then gate each step against its parents.
# Gates are bookkeeping: on the submitting node unless cluster.small.where: job.


if runs_locally("small"):

    localrules:
        gate,


rule evaluate:
    input:
        lambda wildcards: depends(
            node_name(wildcards), [PLAN.path(node_name(wildcards), "digest")]
        ),
    output:
        report(
            "results/{node}/eval/results.json",
            caption="../../reports/eval.rst",
            category="Evaluation",
            labels={"model": "{node}"},
        ),
    log:
        "results/logs/evaluate/{node}.log",
    wildcard_constraints:
        node=one_of([f"inputs/{name}" for name in PLAN.inputs] + PLAN.merged),
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        **job_resources(
            "evaluate",
            mem_mb=lambda wildcards: 2048 + 2 * model_mb(node_name(wildcards)),
            device=EVALUATION["device"],
        ),
    params:
        source=source,
        lock=PLAN.lockfile,
        options=evaluation_options(),
    shell:
        "(model=$(mergeflow locate {params.source:q} --lock {params.lock:q})"
        ' && mergeflow evaluate "$model" --output {output:q} {params.options}) > {log} 2>&1'


checkpoint gate:
    input:
        # Evaluations only: a gate that has to run must not be re-decided by a checkpoint
        # finishing, or the steps waiting on it would never see it complete.
        manifest=lambda wildcards: PLAN.path(
            PLAN.nodes[wildcards.node].step, "manifest"
        ),
        evals=lambda wildcards: [
            f
            for n in [wildcards.node, *PLAN.nodes[wildcards.node].parents]
            for f in eval_files(n)
        ],
    output:
        report(
            "results/{node}/gate.json",
            caption="../../reports/gate.rst",
            category="Gates",
            labels={"step": "{node}"},
        ),
    log:
        "results/logs/gate/{node}.log",
    wildcard_constraints:
        node=one_of(PLAN.nodes),
    conda:
        "../../envs/report.yaml"
    resources:
        **job_resources("small"),
    params:
        confidence=confidence_option(),
    shell:
        "mergeflow gate --manifest {input.manifest:q} --step {wildcards.node}"
        " {params.confidence} --output {output:q} > {log} 2>&1"
