# Data: every dataset → one canonical manifest → N HDF5 fbank shards.
#   synthetic (demo)   : sslam synth writes audio + manifests for the synth_* datasets
#   AudioSet           : metadata CSVs → download manifest → (download, networked clusters only)
#                        → availability scan = the manifest of the clips that exist
#   other benchmarks   : the dataset's adapter reads its folder (sslam manifest)
#   polyphony bins     : merges the manifests of its source datasets (SPASS scenes, URBAN-SED)


if SYNTHETIC_SETS:

    rule synth:
        """The embedded synthetic corpus (audio + canonical manifests) for the demo's synth_* datasets."""
        output:
            expand(f"{RESULTS}/data/synthetic/{{set}}/manifest.tsv", set=SYNTHETIC_SETS),
        params:
            code=CODE["synth"],
            settings=settings("synthetic"),
            out=lambda wildcards, output: str(Path(output[0]).parents[1]),
            sets=" ".join(SYNTHETIC_SETS),
            sslam=SSLAM,
            study=STUDY_CONFIG,
        log:
            f"{RESULTS}/logs/synth.log",
        benchmark:
            f"{RESULTS}/benchmarks/synth.tsv"
        conda:
            CONDA_ENV
        shell:
            "{params.sslam} synth --config {params.study} --out {params.out} --sets {params.sets} > {log} 2>&1"


if AUDIOSET_DATASETS:

    rule audioset_download_manifest:
        """One row per segment of every AudioSet segment file: YouTube URL, times, target file name."""
        output:
            f"{DOWNLOAD_DIR}/manifest.tsv",
        params:
            code=code_hash("sslam.data.commands", "sslam.data.adapters.audioset"),
            root=audioset_metadata_options()[0],
            options=audioset_metadata_options()[1],
            sslam=SSLAM,
        log:
            f"{RESULTS}/logs/audioset_download_manifest.log",
        conda:
            CONDA_ENV
        shell:
            "{params.sslam} manifest --adapter audioset --root {params.root} --option set=all --option weights=false "
            "{params.options} --out {output} > {log} 2>&1"

    rule audioset_download:
        """yt-dlp + ffmpeg for every segment whose audio is not in audio_dir yet (networked clusters only:
        enable with study.audioset.download). Clips already present are skipped, so it is resumable;
        videos that have disappeared from YouTube are listed in failed.tsv and left to the scan."""
        input:
            f"{DOWNLOAD_DIR}/manifest.tsv",
        output:
            commands=f"{DOWNLOAD_DIR}/commands.sh",
            done=f"{DOWNLOAD_DIR}/download.done",
        params:
            audio_dir=AUDIOSET.get("audio_dir", ""),
            sample_rate=section(config, "front_end.sample_rate", 16000),
        threads: resources_of("download")["threads"]
        resources:
            runtime=resources_of("download")["runtime"],
        log:
            f"{RESULTS}/logs/audioset_download.log",
        conda:
            CONDA_ENV
        script:
            "../scripts/audioset_download.py"


if ADAPTER_DATASETS or POLYPHONY_DATASETS:

    rule manifest:
        """The canonical manifest of one dataset, built by its adapter (datasets.<name>.adapter)."""
        input:
            unpack(manifest_inputs),
        output:
            manifest=f"{RESULTS}/data/{{dataset}}/manifest.tsv",
            classes=f"{RESULTS}/data/{{dataset}}/manifest.classes.tsv",
        wildcard_constraints:
            dataset="|".join(ADAPTER_DATASETS + POLYPHONY_DATASETS),
        params:
            code=lambda wildcards: MANIFEST_CODE[wildcards.dataset],
            settings=lambda wildcards: settings(f"datasets.{wildcards.dataset}"),
            sslam=SSLAM,
            study=STUDY_CONFIG,
        log:
            f"{RESULTS}/logs/manifest/{{dataset}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/manifest/{{dataset}}.tsv"
        conda:
            CONDA_ENV
        shell:
            "{params.sslam} manifest --config {params.study} --dataset {wildcards.dataset} --out {output.manifest} > {log} 2>&1"


if POLYPHONY_DATASETS:

    rule polyphony_source:
        """Place a source dataset's manifest (+ class list) where the polyphony_bins adapter reads it,
        named after the dataset so that merged clip ids stay unique (<dataset>/<clip id>)."""
        input:
            manifest=f"{RESULTS}/data/{{source}}/manifest.tsv",
            classes=f"{RESULTS}/data/{{source}}/manifest.classes.tsv",
        output:
            manifest=f"{POLYPHONY_ROOT}/{{source}}.tsv",
            classes=f"{POLYPHONY_ROOT}/{{source}}.classes.tsv",
        wildcard_constraints:
            source="|".join(source for name in POLYPHONY_DATASETS for source in polyphony_sources(name)),
        log:
            f"{RESULTS}/logs/polyphony_source/{{source}}.log",
        shell:
            "(cp {input.manifest} {output.manifest} && cp {input.classes} {output.classes}) > {log} 2>&1"


rule cache_shard:
    """Shard i of N of a dataset's HDF5 log-mel cache (rows i, i+N, ...), with its skip report."""
    input:
        manifest=lambda wildcards: manifest_path(wildcards.dataset),
    output:
        shard=f"{RESULTS}/cache/{{dataset}}/shard-{{shard}}-of-{{num_shards}}.h5",
        skips=f"{RESULTS}/cache/{{dataset}}/shard-{{shard}}-of-{{num_shards}}.skips.tsv",
    wildcard_constraints:
        shard=r"\d{3}",
        num_shards=r"\d{3}",
    params:
        code=CODE["cache"],
        settings=lambda wildcards: settings("front_end", "cache", f"datasets.{wildcards.dataset}"),
        target_length=lambda wildcards: target_length(wildcards.dataset),
        shard=lambda wildcards: int(wildcards.shard),
        num_shards=lambda wildcards: int(wildcards.num_shards),
        sslam=SSLAM,
        study=STUDY_CONFIG,
        env=thread_env(resources_of("cache")["threads"]),
    threads: resources_of("cache")["threads"]
    resources:
        mem_mb=resources_of("cache")["mem_mb"],
        runtime=resources_of("cache")["runtime"],
    log:
        f"{RESULTS}/logs/cache/{{dataset}}/shard-{{shard}}-of-{{num_shards}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cache/{{dataset}}/shard-{{shard}}-of-{{num_shards}}.tsv"
    conda:
        CONDA_ENV
    shell:
        "{params.env} {params.sslam} cache build --manifest {input.manifest} --out {output.shard} "
        "--shard {params.shard} --num-shards {params.num_shards} --target-length {params.target_length} "
        "--config {params.study} > {log} 2>&1"
