"""What a training or evaluation job loads: every workflow job pays its imports (issue 12.6)."""
import subprocess
import sys

import pytest

# Libraries a fine-tune, probe or pretraining job never needs: scikit-learn (mAP is numpy), pandas (only
# manifest building and tables read TSVs) and MLflow (loaded only when the job tracks, not when deferred).
NOT_LOADED = ("sklearn", "pandas", "mlflow", "matplotlib", "snakemake")


@pytest.mark.parametrize("modules", [
    "sslam.evaluation.run, sslam.evaluation.rounds, sslam.evaluation.protocols, sslam.data.datasets",
    "sslam.train.pretrain, sslam.data.datasets",
])
def test_job_modules_do_not_load_heavy_libraries(modules):
    program = f"import sys, {modules}; print(sorted(m for m in {NOT_LOADED!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
