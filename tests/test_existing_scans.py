"""Which files `mlex-tomo up` registers from the data roots: one entry point per scan."""

from __future__ import annotations

from ingester.existing import find_scans
from mlex_tomo.phantom import PhantomSpec
from mlex_tomo.scan_simulator import FORMATS, simulate_scan


def test_each_simulated_format_is_found_once_by_the_file_its_writer_announces(tmp_path):
    recons = tmp_path / "recons"
    announced = [
        simulate_scan(recons, tmp_path / "ground_truth", f"scan-{file_format}", PhantomSpec(shape=(16, 16, 16)), file_format).announce_path
        for file_format in FORMATS
    ]
    (recons / ".partial").mkdir()
    (recons / ".partial" / "half-written.h5").write_bytes(b"")

    assert sorted(find_scans(recons)) == sorted(announced)


def test_a_missing_root_holds_no_scans(tmp_path):
    assert find_scans(tmp_path / "absent") == []
