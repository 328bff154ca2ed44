"""`mlex-tomo ingester`: run the listener in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import signal
import threading

from ingester.listener import Listener
from ingester.processor import Processor
from ingester.status import IngesterStatus
from mlex_tomo.settings import StackSettings


def run_ingester(settings: StackSettings) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the log
    log = logging.getLogger("mlex_tomo.ingester")
    stop = threading.Event()

    def request_stop(signum: int, frame) -> None:
        log.info("%s received: finishing the message in hand, then stopping", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    status = IngesterStatus(settings.ingester_status_path, settings.ingester.destination)
    status.write()
    threading.Thread(target=status.keep_fresh, args=(stop,), daemon=True).start()
    if settings.ingester.register_existing:
        _register_scans_on_disk(settings, log)
    with Processor(settings) as processor:
        Listener(settings, processor, status).run(stop)
    status.update(connected=False, stopped=True)
    log.info("stopped")
    return 0


def _register_scans_on_disk(settings: StackSettings, log: logging.Logger) -> None:
    """The compose install's samples and scans written while the ingester was down; announced ones wait on the broker meanwhile."""
    from ingester.existing import register_existing

    try:
        summary = register_existing(settings, log.info).summary()
    except Exception as error:  # Tiled down, no API key, an unreadable root: announcements still work
        log.warning("could not register the scans already in the data roots: %s", error)
    else:
        log.info("scans already in the data roots: %s", summary)
