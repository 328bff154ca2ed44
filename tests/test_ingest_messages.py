"""Message parsing and path checks: the ingester's first line of defence, no services."""

import json

import pytest

from ingester.errors import Rejected
from ingester.messages import IngestMessage
from ingester.paths import resolve_within_roots
from ingester.sources import scan_id_for


def test_a_savu_message_keeps_every_producer_field():
    body = json.dumps({"filePath": "/dls/k11/k11-37086_processed.nxs", "status": "COMPLETE", "visit": "mg37376-1"})
    message = IngestMessage.from_body(body.encode())
    assert message.file_path == "/dls/k11/k11-37086_processed.nxs"
    assert message.producer_fields() == json.loads(body)


def test_producer_fields_are_kept_within_bounds_and_the_ones_left_out_are_named():
    fields = {"beamline": "k11", "huge": "x" * 10 * 2**20, "many": ["v" * 900] * 3, "n" * 500: 1}
    fields.update({f"field{index}": "y" * 900 for index in range(12)})
    message = IngestMessage.from_body(json.dumps({"filePath": "/data/scan.nxs", **fields}))
    kept = message.producer_fields()
    assert kept["beamline"] == "k11" and kept["filePath"] == "/data/scan.nxs"
    assert {"huge", "many", "n" * 128} <= set(kept["fields_left_out"]) and "huge" not in kept
    assert len(json.dumps(kept)) < 16 * 1024
    assert "field0" in kept and "field11" in kept["fields_left_out"]  # the total is bounded too


def test_a_path_longer_than_any_file_system_allows_is_refused():
    with pytest.raises(Rejected, match="filePath: String should have at most 4096 characters"):
        IngestMessage.from_body(json.dumps({"filePath": "/" + "a" * 20_000}))


@pytest.mark.parametrize(
    ("status", "final"),
    [(None, True), ("COMPLETE", True), ("complete", True), (" FINISHED ", True), ("RUNNING", False), ("FAILED", False)],
)
def test_only_final_statuses_count(status, final):
    message = IngestMessage(filePath="/data/scan.nxs", status=status)
    assert message.is_final(["COMPLETE", "FINISHED"]) is final


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        ("{", "not JSON"),
        ("42", "JSON object"),
        ("{}", "filePath: Field required"),
        ('{"filePath": ""}', "filePath"),
        ('{"filePath": 7}', "filePath"),
    ],
)
def test_malformed_messages_are_rejected_with_a_reason(body, reason):
    with pytest.raises(Rejected, match=reason):
        IngestMessage.from_body(body)


def test_paths_must_stay_inside_the_roots(tmp_path):
    root = tmp_path / "recons"
    root.mkdir()
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    (root / "scan").mkdir()

    assert resolve_within_roots(str(root / "scan" / "a.nxs"), [root]) == root / "scan" / "a.nxs"
    for hostile in (f"{root}/../secret/a.nxs", f"{root}/escape/a.nxs", "/etc/passwd", f"{root}/scan/../../secret"):
        with pytest.raises(Rejected, match="outside the data roots"):
            resolve_within_roots(hostile, [root])
    with pytest.raises(Rejected, match="absolute"):
        resolve_within_roots("scan/a.nxs", [root])
    with pytest.raises(Rejected, match="NUL"):
        resolve_within_roots(f"{root}/a\x00.nxs", [root])


@pytest.mark.parametrize(
    ("name", "scan_id"),
    [("k11-37086_processed.nxs", "k11-37086"), ("volume.zarr", "volume"), ("weird name;$(x).h5", "weird_name_x")],
)
def test_scan_ids_are_safe_tiled_keys(tmp_path, name, scan_id):
    assert scan_id_for(tmp_path / name) == scan_id
