"""The two ways ingesting a message can fail, which the listener treats differently."""


class Rejected(Exception):
    """This message can never be ingested as it stands: dead-letter it with the reason."""


class TiledUnavailable(Exception):
    """Tiled cannot be reached or failed on its side: keep the message and retry."""


class Interrupted(Exception):
    """Shutdown began mid-message: neither acknowledge nor reject; the broker redelivers."""


class Unreadable(Rejected):
    """The file cannot be read yet: it may still be being written, so retry for a while."""
