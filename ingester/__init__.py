"""STOMP listener that registers new reconstructions in Tiled (issue 3)."""
