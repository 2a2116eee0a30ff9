# Inputs: fetch each Hub model (or LoRA adapter) at its locked commit (only what a merge reads) into the HF cache,
# verify it against the lock, and write its digest; local model dirs just get their digest,
# recomputed whenever a file's size or mtime changes.
# A checkpoint, so a refetch that changes no byte lets Snakemake keep everything downstream.
# Runs on the submitting node by default (cluster.download.where), where the network is.


onstart:
    check_cluster_environment()
    remove_staging_leftovers()


if runs_locally("download"):

    localrules:
        fetch_model,


checkpoint fetch_model:
    output:
        "results/inputs/{model}/model.sha256",
    log:
        "results/logs/fetch_model/{model}.log",
    wildcard_constraints:
        model=one_of(PLAN.fetched),
    conda:
        "../../envs/mergeflow.yaml"
    resources:
        **job_resources("download", runtime=download_minutes),
    params:
        source=lambda wildcards: PLAN.source(wildcards.model, COMMITS),
        lock=PLAN.lockfile,
        # A local model is re-fingerprinted when any file's size or mtime changes.
        files=lambda wildcards: text_sha256(
            json.dumps(LOCAL_STATS.get(wildcards.model))
        ),
    shell:
        "mergeflow digest {params.source:q} --lock {params.lock:q} --output {output:q} > {log} 2>&1"
