"""Regenerate the committed sample phantoms and their ground truth.

Run from anywhere: `python data/make_samples.py`. Seeds and dates are fixed, so the
files come out the same on every run and regenerating them shows no diff.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
# Samples must come from this checkout's generator, not from whatever is installed.
sys.path.insert(0, str(DATA_DIR.parent))

from mlex_tomo.phantom import PhantomSpec  # noqa: E402
from mlex_tomo.volume_writers import write_labels, write_nxtomoproc, write_tiff_stack  # noqa: E402

RECONS_DIR = DATA_DIR / "tiled_storage" / "recons"
# Kept outside tiled_storage so that ground truth is never served next to the data.
GROUND_TRUTH_DIR = DATA_DIR / "ground_truth"
RECONSTRUCTION_DATE = datetime(2025, 1, 1, tzinfo=UTC)

NXTOMO_SAMPLE = "phantom_nxtomo_64"
TIFF_SAMPLE = "phantom_tiff_64"
SAMPLES = {
    NXTOMO_SAMPLE: PhantomSpec(shape=(64, 64, 64), seed=1),
    TIFF_SAMPLE: PhantomSpec(shape=(64, 64, 64), seed=2),
}


def main() -> None:
    nxtomo_spec = SAMPLES[NXTOMO_SAMPLE]
    write_nxtomoproc(
        RECONS_DIR / NXTOMO_SAMPLE / f"{NXTOMO_SAMPLE}.nxs",
        nxtomo_spec,
        sample_name=NXTOMO_SAMPLE,
        date=RECONSTRUCTION_DATE,
    )
    write_tiff_stack(RECONS_DIR / TIFF_SAMPLE, SAMPLES[TIFF_SAMPLE])
    for name, spec in SAMPLES.items():
        path = write_labels(GROUND_TRUTH_DIR / f"{name}_labels.h5", spec)
        print(f"{name}: ground truth at {path.relative_to(DATA_DIR.parent)}")


if __name__ == "__main__":
    main()
