# Tables, plots and the AudioSet polyphony analysis; every rule here is cheap and runs on the main node.


localrules:
    tables,
    log_tables,
    audioset_polyphony,


ANALYSIS = JobFolder("analysis", log="audioset_polyphony")
TABLES = JobFolder("tables")


rule audioset_polyphony:
    """Paper Appendix B.1 / Figure 3: share of AudioSet clips with >= 2 distinct events per ontology level."""
    input:
        ontology=str(Path(STUDY.audioset.get("metadata") or ".") / STUDY.audioset.get("ontology", "ontology.json")),
        segments=STUDY.polyphony_segments(),
    output:
        analysis=ANALYSIS / "audioset_polyphony.json",
        code=ANALYSIS / "audioset_polyphony.code.json",
    params:
        code=code("polyphony", ANALYSIS / "audioset_polyphony.json"),
        levels=" ".join(map(str, STUDY.audioset.get("polyphony_levels", [1, 2, 3, 4]))),
    log:
        ANALYSIS.log,
    conda:
        CONDA_ENV
    shell:
        f"{RECORD} {SSLAM} polyphony --ontology {{input.ontology:q}} --segments {{input.segments:q}} "
        "--levels {params.levels} --out {output.analysis:q} > {log:q} 2>&1"


rule tables:
    """The paper's tables (Markdown, CSV, LaTeX; mean ± std over seeds) and the study's figures."""
    input:
        metrics=STUDY.metrics_files(),
        pretraining=STUDY.pretraining_metrics(),
        polyphony=[ANALYSIS / "audioset_polyphony.json"] if STUDY.polyphony_segments() else [],
    output:
        # the HTML twins of the Markdown pages: the report shows HTML inline (a .md is only a download link)
        **{key: report(path, caption=f"../report/{Path(path).stem if key in ('study_html', 'significance_html') else 'table'}.rst",
                       category="Study" if key == "study_html" else "Tables", labels={"table": Path(path).stem})
           for key, path in STUDY.table_files().items() if path.endswith(".html")},
        **{key: path for key, path in STUDY.table_files().items() if not path.endswith(".html")},
        **{key: report(path, caption=f"../report/{key if key in ('pretrain_loss', 'audioset_polyphony') else 'polyphony'}.rst",
                       category="Figures", labels={"figure": Path(path).name})
           for key, path in STUDY.figure_files().items()},
        runs=TABLES / "runs.csv",
        summary=TABLES / "summary.csv",
        code=TABLES / "runs.code.json",
    params:
        code=code("tables", TABLES / "runs.csv"),
        settings=STUDY.settings("study.tables", "study.variants"),
        polyphony=lambda wildcards, input: " ".join(["--audioset-polyphony", *map(q, input.polyphony)]) if input.polyphony else "",
    log:
        TABLES.log,
    conda:
        CONDA_ENV
    shell:
        f"{RECORD} {SSLAM} tables --config {q(STUDY_CONFIG)} --metrics {{input.metrics:q}} "
        f"--pretrain-metrics {{input.pretraining:q}} {{params.polyphony}} --out {q(TABLES.path)} > {{log:q}} 2>&1"


rule log_tables:
    """Mirror the tables and figures into MLflow as artifacts of a `tables` child run, send every run a job
    kept (deferred tracking, or a store that was down), and end the study's parent run with its config and
    git commit. The metrics.json files stay the source of truth: this only mirrors them."""
    input:
        files=list(STUDY.table_files().values()) + list(STUDY.figure_files().values()),
        tracking=STUDY.tracking_file,
    output:
        done=TABLES / "mlflow-logged.txt",
        code=TABLES / "mlflow-logged.code.json",
    params:
        code=code("track", TABLES / "mlflow-logged.txt"),
    log:
        f"{RESULTS}/logs/log_tables.log",
    conda:
        CONDA_ENV
    shell:
        f"{RECORD} {SSLAM} track publish --tracking {{input.tracking:q}} --results {q(RESULTS)} --config {q(STUDY_CONFIG)} "
        '--git-commit "$(git rev-parse HEAD 2>/dev/null || echo unknown)" --tag code={params.code} '
        "--done {output.done:q} {input.files:q} > {log:q} 2>&1"
