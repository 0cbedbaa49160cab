# The study model and the few names every rules file shares. All logic lives in sslam.study (unit-tested):
# which datasets, models, jobs, paths, arguments and code fingerprints the study has (dag), and what the executor
# needs for each job group (resources).

import os
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.settings.types import DeploymentMethod

# The package of THIS checkout answers (the jobs run `python -m sslam.cli` from the same root).
sys.path.insert(0, str(Path(workflow.basedir).parent))

from sslam.study.dag import REGIME_COMMAND, Study, one_of, record_path
from sslam.study.resources import Executor

# Without --configfile the workflow runs the embedded demo (a `configfile:` directive would be MERGED with
# a --configfile given on the command line); `snakemake --profile slurm` gets config/config.yaml.
if not config:
    config.update(yaml.safe_load((Path(workflow.basedir).parent / "config" / "demo.yaml").read_text()))

STUDY = Study(config)
EXECUTOR = Executor(STUDY)  # what the executor needs per job group (SLURM resources, launcher, device)
RESULTS = STUDY.results
STUDY_CONFIG = f"{RESULTS}/study-config.yaml"  # the exact config every job reads, written by onstart
CONDA_ENV = "../../envs/sslam.yaml"
# The interpreter reaches the jobs through the environment, so no absolute path is in any rule.
os.environ["SSLAM_PYTHON"] = "python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else sys.executable
SSLAM = '"$SSLAM_PYTHON" -m sslam.cli'


envvars:
    "SSLAM_PYTHON",

# Every sslam job records the code it executes; its fingerprint decides re-runs (docs/fingerprints.md).
RECORD = "SSLAM_FINGERPRINT={params.code} SSLAM_CODE_RECORD={output.code:q}"


# Paths may hold spaces, quotes and any other character but braces (Study refuses those at parse time): every
# path in a rule's command is shell-quoted, `{output.x:q}` for Snakemake's placeholders and q() for the paths
# pasted in when the rule is parsed.
def q(path):
    """A path pasted into a rule's command: shell-quoted (shlex.quote leaves plain paths as they are)."""
    return shlex.quote(str(path))


class JobFolder:
    """Where one rule's jobs write, named once: `FOLDER / "name"` is a file in its output folder under the
    results (wildcards in single braces), `.log` and `.benchmark` its log and benchmark files, which live under
    results/logs and results/benchmarks named `log` (the folder itself by default)."""

    def __init__(self, folder, log=None):
        self.folder, self.name = folder, log or folder

    def __truediv__(self, name):
        return f"{RESULTS}/{self.folder}/{name}"

    @property
    def path(self):
        return f"{RESULTS}/{self.folder}"

    @property
    def log(self):
        return f"{RESULTS}/logs/{self.name}.log"

    @property
    def benchmark(self):
        return f"{RESULTS}/benchmarks/{self.name}.tsv"


def code(job, output):
    """params.code of a rule: the fingerprint of the code its job executes (recorded beside `output`)."""
    return lambda wildcards: STUDY.fingerprint(job, record_path(output.format(**dict(wildcards.items()))))


onstart:
    STUDY.write_config(STUDY_CONFIG)


# Jobs name tracking.json as a parameter, not an input: tracking is a side channel, so the store's set-up never
# re-runs a result. A job that starts before `track_init` has written it keeps its run record in its folder, and
# `log_tables` publishes every kept record (docs/tracking.md). (An input marked ancient would do worse: Snakemake
# would skip the code checks of every job below a `track_init` that has to run.)
TRACKING = STUDY.tracking_file
