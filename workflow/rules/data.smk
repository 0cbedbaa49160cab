# Data: every dataset → one canonical manifest → N HDF5 fbank shards.
#   synthetic (demo)   : sslam synth writes audio + manifests for the synth_* datasets
#   AudioSet           : metadata CSVs → download manifest → (download, networked clusters only) → availability scan
#   other benchmarks   : the dataset's adapter reads its folder (sslam manifest)
#   polyphony bins     : merges the manifests of its source datasets (SPASS scenes, URBAN-SED)


SYNTHETIC = JobFolder("data/synthetic", log="synth")


rule synth:
    """The embedded synthetic corpus (audio + canonical manifests) for the demo's synth_* datasets."""
    output:
        manifests=expand(SYNTHETIC / "{set}/manifest.tsv", set=STUDY.synthetic_sets()),
        code=SYNTHETIC / "corpus.code.json",
    params:
        code=code("synth", SYNTHETIC / "corpus.json"),
        settings=STUDY.settings("synthetic"),
        sets=" ".join(STUDY.synthetic_sets()),
    log:
        SYNTHETIC.log,
    benchmark:
        SYNTHETIC.benchmark
    conda:
        CONDA_ENV
    shell:
        f"{RECORD} {SSLAM} synth --config {q(STUDY_CONFIG)} --out {q(SYNTHETIC.path)} --sets {{params.sets}} "
        "> {log:q} 2>&1"


AUDIOSET_DOWNLOAD = JobFolder("data/audioset_download", log="audioset_download")


rule audioset_download_manifest:
    """One row per segment of every AudioSet segment file: YouTube URL, times, target file name."""
    output:
        manifest=AUDIOSET_DOWNLOAD / "manifest.tsv",
        code=AUDIOSET_DOWNLOAD / "manifest.code.json",
    params:
        code=code("manifest", AUDIOSET_DOWNLOAD / "manifest.tsv"),
        root=lambda wildcards: STUDY.audioset_metadata()[0],
        options=lambda wildcards: " ".join(f"--option {q(f'{k}={v}')}" for k, v in STUDY.audioset_metadata()[1].items()),
    log:
        f"{RESULTS}/logs/audioset_download_manifest.log",
    conda:
        CONDA_ENV
    shell:
        f"{RECORD} {SSLAM} manifest --adapter audioset --root {{params.root:q}} --option set=all --option weights=false "
        "{params.options} --out {output.manifest:q} > {log:q} 2>&1"


rule audioset_download:
    """yt-dlp + ffmpeg for every segment not in audio_dir yet (networked clusters only: study.audioset.download).
    Clips already present are skipped, so it is resumable; vanished videos are listed in failed.tsv."""
    input:
        AUDIOSET_DOWNLOAD / "manifest.tsv",
    output:
        commands=AUDIOSET_DOWNLOAD / "commands.sh",
        done=AUDIOSET_DOWNLOAD / "download.done",
    params:
        audio_dir=STUDY.audioset.get("audio_dir") or "",
        sample_rate=STUDY.config.get("front_end", {}).get("sample_rate", 16000),
    threads: STUDY.resources("download")["threads"]
    resources:
        runtime=STUDY.resources("download")["runtime"],
    log:
        AUDIOSET_DOWNLOAD.log,
    conda:
        CONDA_ENV
    script:
        "../scripts/audioset_download.py"


MANIFEST = JobFolder("data/{dataset}", log="manifest/{dataset}")


rule manifest:
    """The canonical manifest of one dataset, built by its adapter (datasets.<name>.adapter)."""
    input:
        unpack(lambda wildcards: STUDY.manifest_inputs(wildcards.dataset)),
    output:
        manifest=MANIFEST / "manifest.tsv",
        classes=MANIFEST / "manifest.classes.tsv",
        code=MANIFEST / "manifest.code.json",
    wildcard_constraints:
        dataset=one_of(STUDY.datasets_with(exclude=("synthetic",))),
    params:
        code=code("manifest", MANIFEST / "manifest.tsv"),
        settings=lambda wildcards: STUDY.settings(f"datasets.{wildcards.dataset}"),
    log:
        MANIFEST.log,
    benchmark:
        MANIFEST.benchmark
    conda:
        CONDA_ENV
    shell:
        f"{RECORD} {SSLAM} manifest --config {q(STUDY_CONFIG)} --dataset {{wildcards.dataset}} "
        "--out {output.manifest:q} > {log:q} 2>&1"


rule polyphony_source:
    """Place a source dataset's manifest (+ class list) where the polyphony_bins adapter reads it, named after
    the dataset so that merged clip ids stay unique (<dataset>/<clip id>)."""
    input:
        manifest=f"{RESULTS}/data/{{source}}/manifest.tsv",
        classes=f"{RESULTS}/data/{{source}}/manifest.classes.tsv",
    output:
        manifest=f"{STUDY.polyphony_root()}/{{source}}.tsv",
        classes=f"{STUDY.polyphony_root()}/{{source}}.classes.tsv",
    wildcard_constraints:
        source=one_of([s for d in STUDY.datasets_with("polyphony_bins") for s in STUDY.polyphony_sources(d)]),
    log:
        f"{RESULTS}/logs/polyphony_source/{{source}}.log",
    conda:
        CONDA_ENV
    shell:
        "(cp {input.manifest:q} {output.manifest:q} && cp {input.classes:q} {output.classes:q}) > {log:q} 2>&1"


CACHE = JobFolder("cache/{dataset}", log="cache/{dataset}/shard-{shard}-of-{num_shards}")
SHARD = "shard-{shard}-of-{num_shards}"


rule cache_shard:
    """Shard i of N of a dataset's HDF5 log-mel cache (rows i, i+N, ...), with its skip report."""
    input:
        manifest=lambda wildcards: STUDY.manifest_path(wildcards.dataset),
    output:
        shard=CACHE / f"{SHARD}.h5",
        skips=CACHE / f"{SHARD}.skips.tsv",
        code=CACHE / f"{SHARD}.code.json",
    wildcard_constraints:
        shard=r"\d{3}",
        num_shards=r"\d{3}",
    params:
        code=code("cache", CACHE / f"{SHARD}.h5"),
        settings=lambda wildcards: STUDY.settings("front_end", "cache", f"datasets.{wildcards.dataset}"),
        target_length=lambda wildcards: STUDY.datasets[wildcards.dataset].target_length,
        min_samples=lambda wildcards: STUDY.datasets[wildcards.dataset].min_samples,
        env=EXECUTOR.thread_environment("cache"),
    threads: STUDY.resources("cache")["threads"]
    resources:
        **EXECUTOR.job_resources("cache"),
    log:
        CACHE.log,
    benchmark:
        CACHE.benchmark
    conda:
        CONDA_ENV
    shell:
        f"{RECORD} {{params.env}} {SSLAM} cache build --manifest {{input.manifest:q}} --out {{output.shard:q}} "
        "--shard {wildcards.shard} --num-shards {wildcards.num_shards} --target-length {params.target_length} "
        "--min-samples {params.min_samples} "
        f"--config {q(STUDY_CONFIG)} > {{log:q}} 2>&1"
