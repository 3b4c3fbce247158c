"""One promotion at a time per pipeline, across every process that shares a Prefect API.

Two retrainings of the same pipeline may run at once (two workers, a cron run and an
event-triggered one). Each judges its challenger against the champion it read at the start;
if both then promoted, the second would replace a champion it was never compared with. The
promote stage therefore holds a Prefect global concurrency limit of one slot, named after the
pipeline, and re-reads the champion inside it. The limit lives in Prefect's database, so the
lock holds wherever the API is shared: a Prefect server on PostgreSQL, or the local ephemeral
server of the embedded default (its sqlite file under `PREFECT_HOME`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

# A slot is held while its lease is renewed (in the background); a crashed holder's slot comes
# back when the lease lapses, so a killed run cannot block promotions for good.
LEASE_SECONDS = 300.0


def promotion_limit(pipeline: str) -> str:
    """The name of the pipeline's promotion lock (a Prefect global concurrency limit)."""
    return f"deepgate-promote-{pipeline}"


def ensure_lock(name: str) -> None:
    """Create the one-slot limit `name` unless it exists.

    Raises:
        RuntimeError: The limit exists with more than one slot, or is inactive: it would not
            serialize anything.
    """
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # Another run may create it between the read and here: the same limit, fine.
            with suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            return
    if existing.limit != 1 or not existing.active:
        raise RuntimeError(
            f"Prefect concurrency limit '{name}' must be active with limit 1 to serialize promotions "
            f"(it has limit {existing.limit}, active={existing.active}): "
            f"fix it with `prefect gcl update {name} --limit 1 --enable`, or delete it"
        )


@contextmanager
def promotion_lock(pipeline: str) -> Iterator[None]:
    """Hold the pipeline's promotion lock for the block (waits while another run holds it)."""
    name = promotion_limit(pipeline)
    ensure_lock(name)
    # strict: a limit that vanished between the check and here must fail, not pass unlocked.
    with concurrency(name, occupy=1, strict=True, lease_duration=LEASE_SECONDS):
        yield
