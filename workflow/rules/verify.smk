# Verify: a step with `expect: REPO[@REV]` is compared, tensor by tensor, with that published
# model. "different" is a result the report shows, not a failure; bad input (exit 2) fails the job.


rule verify:
    input:
        model=lambda wildcards: depends(
            wildcards.node,
            [PLAN.path(wildcards.node, "digest")],
            also=checkpoint_outputs(wildcards.node),
        ),
    output:
        "results/{node}/verify.json",
    log:
        "results/logs/verify/{node}.log",
    wildcard_constraints:
        node=one_of(PLAN.expecting),
    conda:
        "../../envs/mergeflow.yaml"
    params:
        model=lambda wildcards: PLAN.path(wildcards.node, "model"),
        expect=lambda wildcards: PLAN.nodes[wildcards.node].expect,
    shell:
        "(mergeflow verify {params.model:q} {params.expect:q} --json {output:q} --quiet"
        " || test $? -eq 1) > {log} 2>&1"
