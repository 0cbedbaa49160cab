# Tables, plots and the AudioSet polyphony analysis; every rule here is cheap and runs on the main node.


localrules:
    tables,
    log_tables,
    audioset_polyphony,


if POLYPHONY_SEGMENTS:

    rule audioset_polyphony:
        """Paper Appendix B.1 / Figure 3: share of AudioSet clips with >= 2 distinct events per ontology level."""
        input:
            ontology=str(Path(AUDIOSET["metadata"]) / AUDIOSET.get("ontology", "ontology.json")),
            segments=POLYPHONY_SEGMENTS,
        output:
            POLYPHONY_ANALYSIS,
        params:
            code=CODE["polyphony"],
            levels=" ".join(map(str, AUDIOSET.get("polyphony_levels", [1, 2, 3, 4]))),
            sslam=SSLAM,
        log:
            f"{RESULTS}/logs/audioset_polyphony.log",
        conda:
            CONDA_ENV
        shell:
            "{params.sslam} polyphony --ontology {input.ontology} --segments {input.segments} "
            "--levels {params.levels} --out {output} > {log} 2>&1"


rule tables:
    """The paper's tables (Markdown, CSV, LaTeX; mean ± std over seeds) and the study's figures."""
    input:
        metrics=evaluation_results(),
        pretraining=pretraining_metrics(),
        polyphony=[POLYPHONY_ANALYSIS] if POLYPHONY_SEGMENTS else [],
    output:
        **{key: report(path, caption="../report/table.rst", category="Tables", labels={"table": Path(path).name})
           for key, path in table_files().items() if path.endswith(".md")},
        **{key: path for key, path in table_files().items() if not path.endswith(".md")},
        **{key: report(path, caption=f"../report/{key if key in ('pretrain_loss', 'audioset_polyphony') else 'polyphony'}.rst",
                       category="Figures", labels={"figure": Path(path).name})
           for key, path in figure_files().items()},
        runs=f"{TABLES_DIR}/runs.csv",
        summary=f"{TABLES_DIR}/summary.csv",
    params:
        code=CODE["tables"],
        settings=settings("study.tables", "study.variants"),
        polyphony=lambda wildcards, input: f"--audioset-polyphony {input.polyphony}" if input.polyphony else "",
        out=lambda wildcards, output: str(Path(output.runs).parent),
        sslam=SSLAM,
        study=STUDY_CONFIG,
    log:
        f"{RESULTS}/logs/tables.log",
    conda:
        CONDA_ENV
    shell:
        "{params.sslam} tables --config {params.study} --metrics {input.metrics} "
        "--pretrain-metrics {input.pretraining} {params.polyphony} --out {params.out} > {log} 2>&1"


rule log_tables:
    """Mirror the tables and figures into MLflow as artifacts of a `tables` child run of the study."""
    input:
        files=list(table_files().values()) + list(figure_files().values()),
        tracking=TRACKING,
    output:
        f"{TABLES_DIR}/mlflow-logged.txt",
    params:
        code=CODE["tracking"],
        study=STUDY["name"],
        sslam=SSLAM,
    log:
        f"{RESULTS}/logs/log_tables.log",
    conda:
        CONDA_ENV
    shell:
        "{params.sslam} track artifacts --tracking {input.tracking} --run-name tables --tag stage=tables "
        "--tag code_hash={params.code} --done {output} {input.files} > {log} 2>&1"
