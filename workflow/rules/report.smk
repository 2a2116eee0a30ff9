# Manifests (what gate, select, report and upload read) and the report. Manifests are written
# from the config and recipes; a step's manifest holds only the step, its variants and what it
# comes from, so editing one step touches nothing upstream of it.


localrules:
    engine_config,
    step_manifest,
    manifest,


if runs_locally("small"):

    localrules:
        report,


rule step_manifest:
    output:
        "results/{node}/manifest.json",
    log:
        "results/logs/step_manifest/{node}.log",
    wildcard_constraints:
        node=one_of(step.name for step in PLAN.steps),
    params:
        sha256=lambda wildcards: text_sha256(step_manifest_text(wildcards)),
    run:
        write_generated(output, log, step_manifest_text(wildcards))


rule manifest:
    input:
        # Written after the gates, which decide which steps ran.
        lambda wildcards: [f for n in reached() for f in gate_files(n)] if STOP else [],
    output:
        "results/manifest.json",
    log:
        "results/logs/manifest.log",
    params:
        sha256=lambda wildcards: text_sha256(report_manifest_text()),
    run:
        write_generated(output, log, report_manifest_text())


rule report:
    input:
        manifest="results/manifest.json",
        results=lambda wildcards: report_inputs(),
    output:
        html=report(
            "results/report/index.html",
            caption="../../reports/report.rst",
            category="Report",
        ),
        metrics=report(
            "results/report/metrics.csv",
            caption="../../reports/metrics.rst",
            category="Report",
        ),
        plots=report(
            directory("results/report/plots"),
            patterns=["{task}.png"],
            caption="../../reports/plots.rst",
            category="Report",
        ),
    log:
        "results/logs/report.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **job_resources("small"),
    params:
        out_dir=lambda wildcards, output: Path(output.html).parent,
        confidence=confidence_option(),
    shell:
        "mergeflow report --manifest {input.manifest:q} --out-dir {params.out_dir:q}"
        " {params.confidence} > {log} 2>&1"


onsuccess:
    from mergeflow.quality.summary import print_summary

    announce_gate_stops()
    print_summary(
        "results/manifest.json",
        "results/report/index.html",
        config["report"]["confidence"],
    )


onerror:
    from mergeflow.quality.summary import print_summary

    print_summary(
        "results/manifest.json",
        "results/report/index.html",
        config["report"]["confidence"],
    )
