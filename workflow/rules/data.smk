# Data: every dataset → one canonical manifest → N HDF5 fbank shards.
#   synthetic (demo)   : sslam synth writes audio + manifests for the synth_* datasets
#   AudioSet           : metadata CSVs → download manifest → (download, networked clusters only) → availability scan
#   other benchmarks   : the dataset's adapter reads its folder (sslam manifest)
#   polyphony bins     : merges the manifests of its source datasets (SPASS scenes, URBAN-SED)


rule synth:
    """The embedded synthetic corpus (audio + canonical manifests) for the demo's synth_* datasets."""
    output:
        manifests=expand(f"{RESULTS}/data/synthetic/{{set}}/manifest.tsv", set=STUDY.synthetic_sets()),
        code=f"{RESULTS}/data/synthetic/corpus.code.json",
    params:
        code=code("synth", f"{RESULTS}/data/synthetic/corpus.json"),
        settings=STUDY.settings("synthetic"),
        sets=" ".join(STUDY.synthetic_sets()),
    log:
        f"{RESULTS}/logs/synth.log",
    benchmark:
        f"{RESULTS}/benchmarks/synth.tsv"
    conda:
        CONDA_ENV
    shell:
        f"{RECORD} {SSLAM} synth --config {STUDY_CONFIG} --out {RESULTS}/data/synthetic --sets {{params.sets}} > {{log}} 2>&1"


rule audioset_download_manifest:
    """One row per segment of every AudioSet segment file: YouTube URL, times, target file name."""
    output:
        manifest=f"{RESULTS}/data/audioset_download/manifest.tsv",
        code=f"{RESULTS}/data/audioset_download/manifest.code.json",
    params:
        code=code("manifest", f"{RESULTS}/data/audioset_download/manifest.tsv"),
        root=lambda wildcards: STUDY.audioset_metadata()[0],
        options=lambda wildcards: " ".join(f"--option {k}={v}" for k, v in STUDY.audioset_metadata()[1].items()),
    log:
        f"{RESULTS}/logs/audioset_download_manifest.log",
    conda:
        CONDA_ENV
    shell:
        f"{RECORD} {SSLAM} manifest --adapter audioset --root {{params.root}} --option set=all --option weights=false "
        "{params.options} --out {output.manifest} > {log} 2>&1"


rule audioset_download:
    """yt-dlp + ffmpeg for every segment not in audio_dir yet (networked clusters only: study.audioset.download).
    Clips already present are skipped, so it is resumable; vanished videos are listed in failed.tsv."""
    input:
        f"{RESULTS}/data/audioset_download/manifest.tsv",
    output:
        commands=f"{RESULTS}/data/audioset_download/commands.sh",
        done=f"{RESULTS}/data/audioset_download/download.done",
    params:
        audio_dir=STUDY.audioset.get("audio_dir") or "",
        sample_rate=STUDY.config.get("front_end", {}).get("sample_rate", 16000),
    threads: STUDY.resources("download")["threads"]
    resources:
        runtime=STUDY.resources("download")["runtime"],
    log:
        f"{RESULTS}/logs/audioset_download.log",
    conda:
        CONDA_ENV
    script:
        "../scripts/audioset_download.py"


rule manifest:
    """The canonical manifest of one dataset, built by its adapter (datasets.<name>.adapter)."""
    input:
        unpack(lambda wildcards: STUDY.manifest_inputs(wildcards.dataset)),
    output:
        manifest=f"{RESULTS}/data/{{dataset}}/manifest.tsv",
        classes=f"{RESULTS}/data/{{dataset}}/manifest.classes.tsv",
        code=f"{RESULTS}/data/{{dataset}}/manifest.code.json",
    wildcard_constraints:
        dataset=one_of(STUDY.datasets_with(exclude=("synthetic",))),
    params:
        code=code("manifest", f"{RESULTS}/data/{{dataset}}/manifest.tsv"),
        settings=lambda wildcards: STUDY.settings(f"datasets.{wildcards.dataset}"),
    log:
        f"{RESULTS}/logs/manifest/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/manifest/{{dataset}}.tsv"
    conda:
        CONDA_ENV
    shell:
        f"{RECORD} {SSLAM} manifest --config {STUDY_CONFIG} --dataset {{wildcards.dataset}} --out {{output.manifest}} > {{log}} 2>&1"


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
        "(cp {input.manifest} {output.manifest} && cp {input.classes} {output.classes}) > {log} 2>&1"


rule cache_shard:
    """Shard i of N of a dataset's HDF5 log-mel cache (rows i, i+N, ...), with its skip report."""
    input:
        manifest=lambda wildcards: STUDY.manifest_path(wildcards.dataset),
    output:
        shard=f"{RESULTS}/cache/{{dataset}}/shard-{{shard}}-of-{{num_shards}}.h5",
        skips=f"{RESULTS}/cache/{{dataset}}/shard-{{shard}}-of-{{num_shards}}.skips.tsv",
        code=f"{RESULTS}/cache/{{dataset}}/shard-{{shard}}-of-{{num_shards}}.code.json",
    wildcard_constraints:
        shard=r"\d{3}",
        num_shards=r"\d{3}",
    params:
        code=code("cache", f"{RESULTS}/cache/{{dataset}}/shard-{{shard}}-of-{{num_shards}}.h5"),
        settings=lambda wildcards: STUDY.settings("front_end", "cache", f"datasets.{wildcards.dataset}"),
        target_length=lambda wildcards: STUDY.datasets[wildcards.dataset].target_length,
        env=EXECUTOR.thread_environment("cache"),
    threads: STUDY.resources("cache")["threads"]
    resources:
        **EXECUTOR.job_resources("cache"),
    log:
        f"{RESULTS}/logs/cache/{{dataset}}/shard-{{shard}}-of-{{num_shards}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cache/{{dataset}}/shard-{{shard}}-of-{{num_shards}}.tsv"
    conda:
        CONDA_ENV
    shell:
        f"{RECORD} {{params.env}} {SSLAM} cache build --manifest {{input.manifest}} --out {{output.shard}} "
        "--shard {wildcards.shard} --num-shards {wildcards.num_shards} --target-length {params.target_length} "
        f"--config {STUDY_CONFIG} > {{log}} 2>&1"
