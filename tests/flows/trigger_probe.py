"""A stand-in for `retrain` in the end-to-end trigger test: same triggers, a body that costs nothing.

Its own module with light imports: the served run imports it again in a fresh process.
"""

from __future__ import annotations

from prefect import flow


@flow(name="retrain-probe")
def probe(pipeline: str) -> str:
    """Return the pipeline it was started for."""
    return pipeline
