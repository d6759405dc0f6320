"""``reco-worker``: run the worker (no sub-command) or ``reco-worker replay`` to evaluate offline.

The sub-commands import their modules when run: the worker's start does not pay for the event
log readers (pyarrow's parquet and CSV modules) it never uses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from threadpoolctl import threadpool_limits

from reco_common.contracts import dumps
from reco_common.kafka import KafkaUnavailableError
from reco_common.lifecycle import serve
from reco_common.service import load_service_settings
from reco_worker.settings import WorkerSettings
from reco_worker.worker import Worker

app = typer.Typer(
    add_completion=False,
    help="Keep each user's recommendations in Redis fresh on every action.",
)


def _settings() -> WorkerSettings:
    return load_service_settings(WorkerSettings, service="worker", shared=lambda s: s.common)


@app.callback(invoke_without_command=True)
def run(ctx: typer.Context) -> None:
    """Consume user-actions and write lists to Redis (settings: docs/worker.md)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings()
    try:
        asyncio.run(serve(Worker(settings=settings), grace_s=settings.grace_s))
    except KafkaUnavailableError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None


@app.command("replay")
def replay_command(
    model: Annotated[str, typer.Option(help="Model artifact URI (s3://, file:// or a path).")],
    events: Annotated[str, typer.Option(help="Time-ordered event log (the trainer's formats).")],
    output: Annotated[Path, typer.Option(help="Where to write the JSON report.")],
    k: Annotated[int, typer.Option(min=1, max=1000, help="List length evaluated.")] = 10,
    blend: Annotated[float | None, typer.Option(min=0, max=1)] = None,
    half_life_s: Annotated[float | None, typer.Option(min=0.001)] = None,
    neighbour_weight: Annotated[float | None, typer.Option(min=0)] = None,
    history_len: Annotated[int | None, typer.Option(min=1, max=1000)] = None,
    exclude_seen: Annotated[
        bool | None, typer.Option("--exclude-seen/--keep-seen", help="Default: settings.")
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="The log's column names as for reco-trainer, e.g. user=userId,item=movieId,"
            "weight=rating,timestamp=timestamp (default: user_id, item_id, weight|rating, "
            "ts|timestamp, …)."
        ),
    ] = None,
    min_weight: Annotated[
        float | None,
        typer.Option(min=0, help="Replay only events weighing at least this, e.g. 4."),
    ] = None,
) -> None:
    """Replay EVENTS through the worker's scoring: static vs real-time vs popular lists."""
    from reco_common.interactions import InteractionsError, column_map, read_interactions
    from reco_worker.model_store import load_serving_model
    from reco_worker.replay import replay, summary

    try:
        mapping = column_map(columns or {})
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--columns") from None
    settings = _settings()
    threadpool_limits(limits=settings.blas_threads)
    policy = settings.policy
    policy = dataclasses.replace(
        policy,
        blend=policy.blend if blend is None else blend,
        half_life_s=policy.half_life_s if half_life_s is None else half_life_s,
        neighbour_weight=policy.neighbour_weight if neighbour_weight is None else neighbour_weight,
        exclude_seen=policy.exclude_seen if exclude_seen is None else exclude_seen,
    )
    with tempfile.TemporaryDirectory(prefix="reco-replay-") as cache:
        serving = load_serving_model(
            model, s3=settings.common.s3, cache_dir=Path(cache), index_use=settings.index_use
        )
    try:
        log = read_interactions(
            events,
            action_weights={str(a): w for a, w in policy.action_weights.items()},
            columns=mapping,
            min_weight=min_weight,
            s3=settings.common.s3,
        )
    except InteractionsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    report = replay(
        serving,
        log,
        policy=policy,
        history_len=history_len or settings.history_len,
        k=k,
    )
    output.write_bytes(dumps(report))
    typer.echo(summary(report))


@app.command("rebuild")
def rebuild_command(
    user: Annotated[
        list[str] | None, typer.Option(help="Rebuild only this user (repeat); default: all.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model artifact URI; default: MODEL_URI.")
    ] = None,
) -> None:
    """Rebuild histories and lists in Redis from the retained user-actions log."""
    from reco_worker.rebuild import rebuild_from_log

    settings = _settings()
    uri = model or settings.model_uri
    if not uri:
        typer.echo("rebuild needs a model: --model or MODEL_URI", err=True)
        raise typer.Exit(2)
    threadpool_limits(limits=settings.blas_threads)
    report = asyncio.run(rebuild_from_log(settings, model_uri=uri, users=user or ()))
    typer.echo(dumps(dataclasses.asdict(report) | {"events_per_s": report.events_per_s}))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
