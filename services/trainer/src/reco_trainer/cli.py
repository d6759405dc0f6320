"""The ``reco-trainer`` command line: ``train`` (files), ``tune`` (a parameter search, then
train), ``run`` (the CronJob), ``synth`` (data).

Every command builds :class:`~reco_trainer.settings.Settings` from the environment, lets its
flags override them, and turns a failure into one clear error line and a non-zero exit code
(2: bad input or configuration, 1: anything else) with nothing published.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from reco_common.artifact import ArtifactError, read_manifest
from reco_common.contracts import describe_validation_error
from reco_common.interactions import (
    InteractionsError,
    LogFormat,
    action_weight_map,
    column_map,
    is_log_file,
)
from reco_common.kafka import KafkaUnavailableError
from reco_common.service import load_service_settings
from reco_common.settings import ConfigurationError, S3Settings
from reco_common.storage import ObjectNotFoundError, as_uri, open_store
from reco_trainer import producing
from reco_trainer.options import with_param_options
from reco_trainer.params import TrainParams
from reco_trainer.pipeline import Inputs, Job, Outcome, run_job
from reco_trainer.settings import Settings
from reco_trainer.snapshot import SnapshotError, archive_location, archive_topic
from reco_trainer.tune import Budget, tuned_values

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="reco-trainer",
    help="Train, evaluate, store and publish LightFM recommendation models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

EXIT_INPUT = 2
EXIT_FAILURE = 1
_INPUT_ERRORS = (
    InteractionsError,
    ConfigurationError,
    ObjectNotFoundError,
    FileNotFoundError,
    ValueError,
)
_FAILURES = (
    ArtifactError,
    KafkaUnavailableError,
    SnapshotError,
    OSError,
)
T = TypeVar("T")


def _guarded(action: Callable[[], T]) -> T:
    """Run ``action``; log a failure as one line and exit non-zero."""
    try:
        return action()
    except ValidationError as exc:
        logger.error("invalid parameters: %s", describe_validation_error(exc))
        raise typer.Exit(EXIT_INPUT) from None
    except _INPUT_ERRORS as exc:
        logger.error("%s", exc)
        raise typer.Exit(EXIT_INPUT) from None
    except _FAILURES as exc:
        logger.error("%s: %s", type(exc).__name__, exc)
        raise typer.Exit(EXIT_FAILURE) from None
    except Exception:
        logger.exception("unexpected failure")
        raise typer.Exit(EXIT_FAILURE) from None


def _action_weights(values: list[str]) -> dict[str, float]:
    try:
        return action_weight_map(values)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--action-weight") from None


ParamsFrom = Annotated[
    str | None,
    typer.Option(help="Reuse the tuned parameters recorded in this model artifact's manifest."),
]
TuneTrials = Annotated[
    int | None,
    typer.Option(min=1, help="Search the parameters first, with at most this many trials."),
]
TuneMinutes = Annotated[
    float,
    typer.Option(min=0.01, help="Time budget of the search and the final training (--tune)."),
]


Interactions = Annotated[
    list[str],
    typer.Option("--interactions", "-i", help="Interaction file, directory or URI (repeatable)."),
]
TestFile = Annotated[
    str | None, typer.Option(help="Explicit held-out interactions instead of a split.")
]
Output = Annotated[str | None, typer.Option(help="Store root (file://… or s3://…) for models/.")]
ModelName = Annotated[str | None, typer.Option(help="Model name (default: settings).")]
Publish = Annotated[bool | None, typer.Option("--publish/--no-publish", help="Announce on Kafka.")]
MetricsOut = Annotated[
    Path | None, typer.Option(help="Write the evaluation JSON here (and a .png beside it).")
]
Columns = Annotated[
    str | None,
    typer.Option(
        help="The logs' column names, e.g. user=userId,item=movieId,weight=rating,"
        "timestamp=timestamp (default: user_id, item_id, weight|rating, ts|timestamp, …)."
    ),
]
MinWeight = Annotated[
    float | None,
    typer.Option(help="Keep only interactions weighing at least this, e.g. 4 (ratings ≥ 4)."),
]


def _reading(settings: Settings, columns: str | None, min_weight: float | None) -> dict[str, Any]:
    """How the logs are read: the flags, else the settings (see :class:`Inputs`)."""
    return {
        "columns": column_map(columns) if columns else settings.trainer.columns,
        "min_weight": settings.trainer.min_weight if min_weight is None else min_weight,
    }


@app.command()
@with_param_options
def train(
    interactions: Interactions,
    overrides: dict[str, Any],
    test: TestFile = None,
    output: Output = None,
    model_name: ModelName = None,
    item_features: Annotated[str | None, typer.Option(help="item_id + feature columns.")] = None,
    user_features: Annotated[str | None, typer.Option(help="user_id + feature columns.")] = None,
    publish: Publish = None,
    metrics_out: MetricsOut = None,
    columns: Columns = None,
    min_weight: MinWeight = None,
    action_weight: Annotated[
        list[str] | None,
        typer.Option(
            help="ACTION=WEIGHT for the logs' action column, any action name, e.g. "
            "--action-weight view=1 --action-weight purchase=5 (repeatable; merged into the "
            "defaults view=1, click=2, cart=4, purchase=8)."
        ),
    ] = None,
    params_from: ParamsFrom = None,
    tune: TuneTrials = None,
    tune_minutes: TuneMinutes = 10.0,
) -> None:
    """Train on interaction files, evaluate against popularity, store and publish the model.

    Every training parameter has its option (``--components``, ``--epochs``, …)."""
    settings = load_service_settings(Settings, service="trainer")
    weights = _action_weights(action_weight or [])

    def job() -> Outcome:
        base = _reused(
            settings.trainer.params, params_from or settings.trainer.params_from, settings.s3
        )
        params = _params(base, overrides, weights)
        do_publish = settings.trainer.publish if publish is None else publish
        return run_job(
            Job(
                model_name=model_name or settings.trainer.model_name,
                store_uri=output or settings.trainer.store_uri,
                params=params,
                s3=settings.s3,
                kafka=settings.kafka if do_publish else None,
                metrics_out=metrics_out or settings.trainer.metrics_out,
                tune=_budget(tune, tune_minutes, overrides.get("members")),
            ),
            Inputs(
                interactions=interactions,
                test=test,
                item_features=item_features or settings.trainer.item_features,
                user_features=user_features or settings.trainer.user_features,
                **_reading(settings, columns, min_weight),
            ),
        )

    _summarise(_guarded(job))


def _budget(trials: int | None, minutes: float, members: int | None = None) -> Budget | None:
    """The search's budget; the tuned model has ``--members`` models, else :class:`Budget`'s."""
    if trials is None:
        return None
    return Budget(trials=trials, budget_s=minutes * 60, **({"members": members} if members else {}))


def _reused(base: TrainParams, artifact: str | None, s3: S3Settings) -> TrainParams:
    """``base`` with the tuned values of ``artifact``'s manifest (a search of an earlier run)."""
    if artifact is None:
        return base
    manifest = read_manifest(open_store(as_uri(artifact), s3=s3))
    values = tuned_values(manifest.params)
    logger.info("parameters from %s %s: %s", manifest.model_name, manifest.version, values)
    return base.updated(values)


def _params(base: TrainParams, overrides: dict[str, Any], weights: dict[str, float]) -> TrainParams:
    values = base.model_dump()
    values.update({key: value for key, value in overrides.items() if value is not None})
    values["action_weights"] = {**values["action_weights"], **weights}
    return TrainParams.model_validate(values)


@app.command()
@with_param_options
def tune(
    interactions: Interactions,
    overrides: dict[str, Any],
    trials: Annotated[int, typer.Option(min=1, help="At most this many trials.")] = 50,
    minutes: Annotated[
        float,
        typer.Option(min=0.01, help="Time budget of the search and the final training."),
    ] = 10.0,
    test: TestFile = None,
    output: Output = None,
    model_name: ModelName = None,
    publish: Publish = None,
    metrics_out: MetricsOut = None,
    columns: Columns = None,
    min_weight: MinWeight = None,
) -> None:
    """Search the parameters with Optuna (validation metric, pruning), then train an ensemble
    of ``--members`` models (default 3) with the best ones; the manifest keeps them for
    ``--params-from``. The options of the parameters set the search's fixed values and its
    starting point."""
    settings = load_service_settings(Settings, service="trainer")

    def job() -> Outcome:
        do_publish = settings.trainer.publish if publish is None else publish
        return run_job(
            Job(
                model_name=model_name or settings.trainer.model_name,
                store_uri=output or settings.trainer.store_uri,
                params=_params(settings.trainer.params, overrides, {}),
                s3=settings.s3,
                kafka=settings.kafka if do_publish else None,
                metrics_out=metrics_out or settings.trainer.metrics_out,
                tune=_budget(trials, minutes, overrides.get("members")),
            ),
            Inputs(interactions=interactions, test=test, **_reading(settings, columns, min_weight)),
        )

    _summarise(_guarded(job))


@app.command()
def run(
    params_from: ParamsFrom = None,
    tune: TuneTrials = None,
    tune_minutes: TuneMinutes = 10.0,
) -> None:
    """The CronJob: archive the topic snapshot, train on all snapshots + base files, publish."""
    settings = load_service_settings(Settings, service="trainer")
    trainer = settings.trainer

    def job() -> Outcome:
        store = open_store(trainer.store_uri, s3=settings.s3)
        snapshot = asyncio.run(
            archive_topic(
                kafka=settings.kafka,
                store=store,
                group=trainer.snapshot_group,
                timeout_s=trainer.snapshot_timeout_s,
            )
        )
        archive = archive_location(store, snapshot.topic)
        archived = [k for k in open_store(archive, s3=settings.s3).list() if is_log_file(k)]
        locations = ([archive] if archived else []) + trainer.base_interactions
        if not locations:
            raise InteractionsError(
                f"nothing to train on: {snapshot.topic} has no archived events and "
                "RECO_TRAINER_BASE_INTERACTIONS is empty"
            )
        return run_job(
            Job(
                model_name=trainer.model_name,
                store_uri=trainer.store_uri,
                params=_reused(trainer.params, params_from or trainer.params_from, settings.s3),
                s3=settings.s3,
                kafka=settings.kafka if trainer.publish else None,
                metrics_out=trainer.metrics_out,
                tune=_budget(tune, tune_minutes),
            ),
            Inputs(
                interactions=locations,
                item_features=trainer.item_features,
                user_features=trainer.user_features,
                data_offsets=snapshot.data_offsets(),
                columns=trainer.columns,
                min_weight=trainer.min_weight,
            ),
        )

    _summarise(_guarded(job))


@app.command()
def synth(
    output: Annotated[
        str | None, typer.Option(help="Directory or URI for interactions.<fmt> and items.<fmt>.")
    ] = None,
    to_kafka: Annotated[
        bool, typer.Option("--to-kafka", help="Produce the events onto user-actions.")
    ] = False,
    interactions: Annotated[int, typer.Option(help="Number of interactions.")] = 100_000,
    users: Annotated[int | None, typer.Option(help="Users (default: scales).")] = None,
    items: Annotated[int | None, typer.Option(help="Items (default: scales).")] = None,
    categories: Annotated[int, typer.Option(help="Item categories = taste clusters.")] = 20,
    days: Annotated[float, typer.Option(help="Time span of the log.")] = 30.0,
    drift: Annotated[float, typer.Option(help="Share of users whose taste moves.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    fmt: Annotated[LogFormat, typer.Option("--format", help="File format.")] = LogFormat.PARQUET,
) -> None:
    """Generate a synthetic shop (files and/or the user-actions topic), deterministic by seed."""
    settings = load_service_settings(Settings, service="trainer")
    if output is None and not to_kafka:
        logger.error("give --output DIR and/or --to-kafka")
        raise typer.Exit(EXIT_INPUT)

    def job() -> dict[str, str]:
        return producing.synthesize(
            settings=settings,
            output=output,
            to_kafka=to_kafka,
            fmt=fmt,
            interactions=interactions,
            users=users,
            items=items,
            categories=categories,
            days=days,
            drift=drift,
            seed=seed,
        )

    for name, where in _guarded(job).items():
        typer.echo(f"{name}: {where}")


def _summarise(outcome: Outcome) -> None:
    console = Console()
    table = Table(title=f"{outcome.model_name} {outcome.version}")
    table.add_column("metric")
    table.add_column("LightFM", justify="right")
    table.add_column("popularity", justify="right")
    for name, value in outcome.metrics.model.items():
        table.add_row(name, f"{value:.4f}", f"{outcome.metrics.baseline.get(name, 0.0):.4f}")
    console.print(table)
    state = "trained" if outcome.trained else "already existed"
    announced = "published" if outcome.published else "not published"
    console.print(f"{outcome.artifact_uri} ({state}, {announced})")
