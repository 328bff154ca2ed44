"""A flow that does nothing but prove the worker round trip.

`mlex-tomo up` deploys it next to the real flows so operators (and the test suite)
can check that a run submitted to the work pool is picked up and finished.
"""

from prefect import flow


@flow(name="ping", log_prints=True)
def ping(message: str = "pong") -> str:
    print(f"ping: {message}")
    return message
