# Upload (off by default): chosen steps go to the Hub in one commit each, with a model card
# tracing their lineage back to pinned Hub commits and local inputs. Runs where the downloads
# do (cluster.download.where): it needs the network.


if runs_locally("download"):

    localrules:
        upload,


rule upload:
    input:
        manifest="results/{node}/manifest.json",
        model=lambda wildcards: depends(
            wildcards.node,
            [PLAN.path(wildcards.node, "digest")] + gate_files(wildcards.node),
            also=checkpoint_outputs(wildcards.node),
        ),
    output:
        "results/{node}/upload.json",
    log:
        "results/logs/upload/{node}.log",
    wildcard_constraints:
        node=one_of(upload_steps()),
    conda:
        "../../envs/mergeflow.yaml"
    resources:
        **job_resources("download", runtime=download_minutes),
    params:
        repo=lambda wildcards: UPLOAD["repo"].replace("{step}", wildcards.node),
        private="--private" if UPLOAD["private"] else "--no-private",
    shell:
        "mergeflow upload {wildcards.node} --manifest {input.manifest:q} --repo {params.repo:q}"
        " {params.private} --output {output:q} > {log} 2>&1"
