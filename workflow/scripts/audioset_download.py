"""Snakemake script of rule `audioset_download`: fetch the AudioSet segments that are not on disk yet.

Renders one yt-dlp + ffmpeg command per missing segment (sslam.data.adapters.audioset.download_command)
into commands.sh, then runs them with `threads` parallel workers. A segment whose video is gone
fails on its own without stopping the others; failures are listed in failed.tsv beside commands.sh
and the availability scan (the AudioSet manifest rule) simply does not find those clips.
Needs network access, yt-dlp and ffmpeg: enable only on a cluster that has them (study.audioset.download).
"""
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sslam.data.adapters.audioset import download_command
from sslam.data.manifest import read_manifest

snakemake = globals()["snakemake"]  # injected by Snakemake
manifest = read_manifest(snakemake.input[0]).table
audio_dir = Path(snakemake.params.audio_dir)
if not str(snakemake.params.audio_dir):
    sys.exit("study.audioset.audio_dir must name the folder to download into")
pending = []
for _, row in manifest.iterrows():
    target = audio_dir / row["subset"] / row["file_name"]
    if any(target.with_suffix(suffix).exists() for suffix in (".wav", ".flac", ".ogg")):
        continue  # already downloaded: a re-run only fetches what is still missing
    target.parent.mkdir(parents=True, exist_ok=True)
    pending.append((row["ytid"], download_command(row, target.parent, snakemake.params.sample_rate)))
Path(snakemake.output.commands).write_text("#!/usr/bin/env bash\n" + "".join(command + "\n" for _, command in pending))
log = Path(snakemake.log[0])
log.write_text(f"{len(manifest) - len(pending)} of {len(manifest)} segments present; fetching {len(pending)}\n")


def fetch(item):
    ytid, command = item
    completed = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    return ytid, completed.returncode, completed.stderr.strip().splitlines()[-1:] or [""]


with ThreadPoolExecutor(max_workers=max(1, snakemake.threads)) as pool:
    failures = [(ytid, message[0]) for ytid, code, message in pool.map(fetch, pending) if code != 0]
failed = Path(snakemake.output.commands).with_name("failed.tsv")
failed.write_text("ytid\treason\n" + "".join(f"{ytid}\t{reason}\n" for ytid, reason in failures))
with log.open("a") as stream:
    stream.write(f"fetched {len(pending) - len(failures)}, failed {len(failures)} (see {failed})\n")
Path(snakemake.output.done).write_text(f"{len(pending) - len(failures)} fetched, {len(failures)} failed\n")
