"""``reco-controller``: ``run`` the controller, or ``rollout`` one model artifact by hand."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

import typer

from reco_common.lifecycle import serve
from reco_common.service import load_service_settings
from reco_controller import manifests
from reco_controller.leader import AlwaysLeader
from reco_controller.metrics import SERVICE
from reco_controller.rollout import Decision
from reco_controller.service import Controller, open_runtime
from reco_controller.settings import Settings

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Roll the workers to each published model (run), or to one artifact now (rollout).",
)

# Exit codes of `rollout`: 0 the workers run the model, 1 they do not (and why was logged).
DONE = {Decision.ROLLED_OUT, Decision.DUPLICATE}


@app.command()
def run() -> None:
    """Consume model-published and roll the workers to each model (leader-elected)."""
    settings = load_service_settings(Settings, service=SERVICE)
    asyncio.run(serve(Controller(settings=settings), grace_s=settings.controller.grace_s))


@app.command()
def rollout(
    artifact_uri: Annotated[str, typer.Argument(help="the model artifact (s3://… or file://…)")],
    force: Annotated[
        bool, typer.Option("--force", help="roll out even if the quality gate refuses it")
    ] = False,
) -> None:
    """Roll the model's workers to ARTIFACT_URI now, as if its model-published event arrived.

    The model name, version and metrics come from the artifact's manifest. Rollout events are
    published as usual. This does not take the leader lease: do not race a running controller
    on the same model.
    """
    settings = load_service_settings(Settings, service=SERVICE)
    decision = asyncio.run(_rollout_once(settings, artifact_uri, force=force))
    typer.echo(decision.value)
    raise typer.Exit(0 if decision in DONE else 1)


async def _rollout_once(settings: Settings, artifact_uri: str, *, force: bool) -> Decision:
    event = await manifests.published(artifact_uri, s3=settings.s3)
    async with contextlib.AsyncExitStack() as stack:
        runtime = await open_runtime(settings, stack, leading=AlwaysLeader().still_leading)
        return await runtime.rollouts.handle(event, force=force)
