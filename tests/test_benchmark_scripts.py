"""The benchmark scripts a lent GPU machine runs work, on the CPU at a tiny size, before anyone spends device time on them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def test_the_gpu_script_trains_segments_and_streams_a_zarr_volume_on_the_cpu():
    completed = subprocess.run(
        [str(REPOSITORY / "benchmarks" / "gpu.sh"), "--size", "32", "--inference-size", "40", "--device", "cpu", "--epochs", "1"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    output = completed.stdout
    assert re.search(r"TUNet, the defaults for cpu \(depth 4, 16 base channels; DLSIA's on cuda\), on cpu: train [\d.]+ s, 1 epochs", output), output
    assert re.search(r"segment 32\^3 in memory, whole slices: +[\d.]+ s  mean IoU [01]\.\d{3}", output), output
    assert re.search(r"inference 40\^3 from and to Zarr on disk, whole slices: +[\d.]+ s", output), output
