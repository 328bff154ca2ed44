"""The ingester's status file, written from the listener and the refresher at once."""

import json
import threading

from ingester.status import IngesterStatus


def test_concurrent_writers_never_fail_and_leave_whole_json(tmp_path):
    status = IngesterStatus(tmp_path / "run" / "ingester.json", "/topic/scans")
    failures: list[BaseException] = []

    def write_many(outcome: str) -> None:
        try:
            for _ in range(300):
                status.count(outcome)
        except BaseException as error:  # noqa: BLE001 - the failure is what the test reports
            failures.append(error)

    writers = [threading.Thread(target=write_many, args=(f"kind-{index}",)) for index in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()

    assert failures == []
    document = json.loads(status.path.read_text())
    assert document["counts"] == {f"kind-{index}": 300 for index in range(4)}
