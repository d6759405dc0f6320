"""``python -m reco_devkit.demo`` (``make demo``): the whole loop on local processes, watched live.

1. A synthetic shop: its older 80 % is the history (the first model's training file), the rest
   is replayed as live traffic; one regular shopper starts buying from a category they never
   bought from.
2. The services as local processes on the dev stack, in a namespace of their own (topic prefix,
   Redis key prefix, a ``file://`` model store under ``var/demo/<run>``): workers without a
   model, the controller with the ``local`` target, the API.
3. ``reco-trainer train`` on the history publishes the first model; the controller rolls the
   workers to it.
4. Live traffic and the shopper; the view shows events/s, freshness p50/p99 (the workers'
   histogram over the last 10 s), the active model, and the shopper's list as served by the API.
5. ``reco-trainer run`` (the CronJob) archives the new events from the topic and retrains on
   them plus the history; the controller rolls the workers to the second model, traffic going on.
6. A summary; the API stays up for ``curl`` until Ctrl-C, which stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, TypeVar

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from reco_common.contracts import ModelPublished, RolloutEvent
from reco_devkit import services
from reco_devkit.observe import (
    ModelTopics,
    WorkerScrape,
    quantile,
    recommendations,
    scrape_workers,
    worker_versions,
)
from reco_devkit.procs import ServiceProcess, stop_all
from reco_devkit.services import RunSpace
from reco_devkit.traffic import (
    ActionSender,
    ShopFiles,
    live_traffic,
    pick_shopper,
    prepare_shop,
    stream,
)
from reco_devkit.view import Board, PlainReporter, render

logger = logging.getLogger(__name__)
T = TypeVar("T")

WINDOW_S = 10.0
REFRESH_S = 0.5
START_TIMEOUT_S = 120.0
JOB_TIMEOUT_S = 600.0
ROLLOUT_TIMEOUT_S = 180.0
SHOPPER_EVERY_S = 2.0
MAX_REGRESSION = 0.25


@dataclass(frozen=True)
class Options:
    directory: Path
    duration_s: float
    after_s: float
    rate: float
    workers: int
    interactions: int
    seed: int
    api_port: int
    plain: bool
    wait: bool


def _port_or_free(port: int) -> int | None:
    with socket.socket() as sock:
        try:
            sock.bind((services.LOCALHOST, port))
        except OSError:
            return None
    return port


class Demo:
    """One run of the demo; :meth:`run` does it all, :meth:`stop` stops every process."""

    def __init__(self, options: Options, console: Console) -> None:
        self.options = options
        self.console = console
        self.space = RunSpace.create(options.directory, label="demo")
        self.board = Board(run_id=self.space.run_id)
        self.workers = [services.worker(self.space, index=i) for i in range(options.workers)]
        # The two models are evaluated on different held-out sets (the second one's is the
        # newest events: the replayed live traffic), so the gate allows more drift than the
        # production default of 5 %; a worse model than that is still refused.
        self.controller = services.local_controller(
            self.space, self.workers, max_regression=str(MAX_REGRESSION)
        )
        # No load balancer in front of it: stop at once on Ctrl-C instead of draining.
        self.api = services.api(
            self.space, port=_port_or_free(options.api_port), drain_s="0", shutdown_timeout_s="5"
        )
        self.topics = ModelTopics(self.space.kafka)
        self._window: deque[tuple[WorkerScrape, int]] = deque()
        self._sender: ActionSender | None = None
        self._first: WorkerScrape | None = None
        self._last: WorkerScrape | None = None

    @property
    def processes(self) -> list[ServiceProcess]:
        return [self.api, self.controller, *self.workers]

    @property
    def api_url(self) -> str:
        assert self.api.base_url is not None
        return self.api.base_url

    # ----------------------------------------------------------------- the story

    async def run(self) -> None:
        board, options = self.board, self.options
        shop = await asyncio.to_thread(
            prepare_shop,
            self.space.root / "shop",
            interactions=options.interactions,
            seed=options.seed,
        )
        board.category = shop.category
        board.shopper = pick_shopper(shop)
        board.note(
            f"synthetic shop: {shop.history.num_rows:,} past actions of {len(shop.users):,} users "
            f"on {len(shop.items):,} items; {shop.live.num_rows:,} newer ones replayed live"
        )
        await self._start_services()
        async with self._observing():
            board.phase = "training the first model"
            await self._job(
                services.train(
                    self.space, interactions=shop.interactions_uri, item_features=shop.items_uri
                )
            )
            first = await self._rolled_out(count=1)
            await self._stream(shop, first)

    async def _start_services(self) -> None:
        self.board.phase = "starting services"
        for process in self.processes:
            process.start()
        await asyncio.gather(
            *(asyncio.to_thread(w.wait_ready, url=f"{w.base_url}/healthz") for w in self.workers),
            asyncio.to_thread(self.controller.wait_ready, timeout_s=START_TIMEOUT_S),
            asyncio.to_thread(self.api.wait_ready, timeout_s=START_TIMEOUT_S),
        )
        self.board.note(
            f"started {len(self.workers)} workers (no model yet), the controller (local target) "
            f"and the API on {self.api_url}"
        )
        await self.topics.start()

    async def _job(self, job: ServiceProcess) -> None:
        """Run a trainer command to its end; fail with its log when it fails."""
        self.board.note(
            f"{' '.join(Path(a).name for a in job.argv[:2])} started (log {job.log_path})"
        )
        job.start()
        code = await asyncio.to_thread(job.wait, timeout_s=JOB_TIMEOUT_S)
        if code != 0:
            raise RuntimeError(f"{job.name} exited {code}; see {job.log_path}:\n{job.tail()}")

    async def _rolled_out(self, *, count: int) -> ModelPublished:
        """The ``count``-th published model, once the controller reports its rollout done."""
        model = await self._until(
            lambda: self.board.published[count - 1] if len(self.board.published) >= count else None,
            what=f"model #{count} on model-published",
        )
        self.board.phase = f"rolling out {model.version}"
        await self._until(
            lambda: self._rollout_outcome(model.version), what=f"the rollout of {model.version}"
        )
        return model

    def _rollout_outcome(self, version: str) -> RolloutEvent | None:
        for event in self.board.rollouts:
            if event.version == version and event.status.value == "succeeded":
                return event
            if event.version == version and event.status.value in ("rejected", "failed"):
                raise RuntimeError(f"the controller did not roll out {version}: {event.reason}")
        return None

    async def _stream(self, shop: ShopFiles, first: ModelPublished) -> None:
        board, options = self.board, self.options
        shopper = board.shopper
        assert shopper is not None
        stop = asyncio.Event()
        async with ActionSender(self.space.kafka) as sender:
            self._sender = sender
            prefix = self.space.run_id
            traffic = live_traffic(shop.live, id_prefix=f"{prefix}-live", skip_user=shopper.user_id)
            tasks = [
                asyncio.create_task(stream(sender, traffic, rate=options.rate, stop=stop)),
                asyncio.create_task(
                    stream(
                        sender,
                        shopper.actions(id_prefix=f"{prefix}-shopper"),
                        rate=1 / SHOPPER_EVERY_S,
                        stop=stop,
                        on_sent=board.shopper_actions.extend,
                    )
                ),
            ]
            board.phase = f"live traffic on {first.version}"
            board.note(
                f"streaming {options.rate:.0f} actions/s; {shopper.user_id} starts buying "
                f"{shopper.new} every {SHOPPER_EVERY_S:.0f} s"
            )
            try:
                await self._sleep_or_fail(tasks, options.duration_s)
                board.phase = "retraining on the new events"
                await self._job(
                    services.retrain(
                        self.space,
                        base_interactions=[shop.interactions_uri],
                        item_features=shop.items_uri,
                    )
                )
                second = await self._rolled_out(count=2)
                board.phase = f"live traffic on {second.version}"
                await self._sleep_or_fail(tasks, options.after_s)
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise RuntimeError("sending user actions failed") from task.exception()
        board.phase = "done"

    @staticmethod
    async def _sleep_or_fail(tasks: Sequence[asyncio.Task[None]], seconds: float) -> None:
        done, _ = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()

    async def _until(self, found: Callable[[], T | None], *, what: str) -> T:
        deadline = time.monotonic() + ROLLOUT_TIMEOUT_S
        while (value := found()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no sign of {what} within {ROLLOUT_TIMEOUT_S:.0f} s")
            for process in self.processes:
                if not process.running():
                    raise RuntimeError(f"{process.name} exited; see {process.log_path}")
            await asyncio.sleep(0.2)
        return value

    # ----------------------------------------------------------------- watching

    @contextlib.asynccontextmanager
    async def _observing(self) -> AsyncIterator[None]:
        """Refresh the board (and the view) in the background while the story goes on."""
        live = (
            None
            if self.options.plain
            else Live(render(self.board), console=self.console, refresh_per_second=4)
        )
        plain = PlainReporter(self.console) if live is None else None
        async with httpx.AsyncClient() as http:
            task = asyncio.create_task(self._refresh_forever(http, live, plain))
            try:
                with live or contextlib.nullcontext():
                    yield
                    await self._refresh(http)
                    if live is not None:
                        live.update(render(self.board))
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                if plain is not None:
                    plain.update(self.board)
                await self.topics.stop()

    async def _refresh_forever(
        self, http: httpx.AsyncClient, live: Live | None, plain: PlainReporter | None
    ) -> None:
        while True:
            try:
                await self._refresh(http)
            except (httpx.HTTPError, OSError) as exc:
                logger.warning("refresh failed: %s", exc)
            if live is not None:
                live.update(render(self.board))
            if plain is not None:
                plain.update(self.board)
            await asyncio.sleep(REFRESH_S)

    async def _refresh(self, http: httpx.AsyncClient) -> None:
        board = self.board
        for event in await self.topics.poll():
            board.note(_describe(event))
            if isinstance(event, ModelPublished):
                board.published.append(event)
            else:
                board.rollouts.append(event)
        urls = [w.base_url for w in self.workers if w.base_url]
        scrape = await scrape_workers(http, urls)
        board.worker_versions = await worker_versions(http, urls, headers=services.CONTROL_HEADERS)
        self._measure(scrape)
        if board.shopper is not None and board.sent:
            self._follow_shopper(await recommendations(http, self.api_url, board.shopper.user_id))

    def _measure(self, scrape: WorkerScrape) -> None:
        board = self.board
        sent = self._sender.sent if self._sender else 0
        board.sent, board.applied = sent, scrape.applied
        if not board.sent:
            return
        self._first = self._first or scrape
        self._last = scrape
        self._window.append((scrape, sent))
        while scrape.at - self._window[0][0].at > WINDOW_S:
            self._window.popleft()
        oldest, sent_then = self._window[0]
        span = scrape.at - oldest.at
        if span > 0:
            window = scrape.since(oldest)
            board.applied_per_s = window.applied / span
            board.sent_per_s = (sent - sent_then) / span
            board.fresh_p50_s = quantile(0.5, window.freshness)
            board.fresh_p99_s = quantile(0.99, window.freshness)

    def _follow_shopper(self, listed: dict[str, object] | None) -> None:
        board = self.board
        before = board.shopper_share()
        board.shopper_list = listed or board.shopper_list
        after = board.shopper_share()
        if listed and after != before and board.shopper is not None:
            board.note(
                f"{board.shopper.user_id}'s list: {after[0]} of {after[1]} items from "
                f"{board.shopper.new} (model {listed['model_version']})"
            )

    # ----------------------------------------------------------------- the end

    def summary(self) -> Table:
        board = self.board
        table = Table(title=f"reco demo {board.run_id}: summary", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("user actions sent", f"{board.sent:,}")
        table.add_row("applied by the workers", f"{board.applied:,.0f}")
        if self._first is not None and self._last is not None:
            whole = self._last.since(self._first)
            p50, p99 = quantile(0.5, whole.freshness), quantile(0.99, whole.freshness)
            table.add_row(
                "freshness (event → Redis)",
                f"p50 {_ms(p50)}, p99 {_ms(p99)} over the whole stream",
            )
        for model in board.published:
            statuses = " → ".join(
                r.status.value for r in board.rollouts if r.version == model.version
            )
            p10 = model.metrics.model.get("precision@10", 0.0)
            base = model.metrics.baseline.get("precision@10", 0.0)
            table.add_row(
                f"model {model.version}",
                f"precision@10 {p10:.3f} vs popularity {base:.3f}; rollout: {statuses}",
            )
        share, shown = board.shopper_share()
        if board.shopper is not None:
            table.add_row(
                f"shopper {board.shopper.user_id}",
                f"{share} of {shown} listed items now from {board.shopper.new} "
                f"(they used to buy {board.shopper.usual})",
            )
        table.add_row("logs", str(self.space.logs))
        return table

    def curl_hints(self) -> Iterator[str]:
        """Requests worth trying once the run is over (the shopper, a newcomer, the probes)."""
        user = self.board.shopper.user_id if self.board.shopper else "u1"
        listed = self.board.shopper_list or {"items": [{"item_id": "i1"}]}
        top = listed["items"][0]["item_id"]
        base = f"{self.api_url}/v1/users"
        yield f"curl -s '{base}/{user}/recommendations?n=5'"
        yield f"curl -s '{base}/{user}/recommendations?n=3&offset=2&exclude={top}'"
        yield f"curl -s '{base}/newcomer/recommendations?n=3'    # no history: popular items"
        yield f"curl -s {self.api_url}/readyz"
        yield f"curl -s {self.api.ops_url}/metrics | grep reco_api_http_requests_total"

    def stop(self) -> None:
        codes = stop_all(self.processes)
        logger.info("stopped: %s", codes)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _shorten(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(event: ModelPublished | RolloutEvent) -> str:
    if isinstance(event, ModelPublished):
        p10 = event.metrics.model.get("precision@10", 0.0)
        base = event.metrics.baseline.get("precision@10", 0.0)
        return f"trainer published {event.version}: precision@10 {p10:.3f} vs popularity {base:.3f}"
    succeeded = event.status.value in ("started", "succeeded")
    reason = f": {_shorten(event.reason)}" if event.reason and not succeeded else ""
    return f"controller: rollout of {event.version} {event.status.value} ({event.target}){reason}"


async def _main(options: Options, console: Console) -> int:
    demo = Demo(options, console)
    logging.basicConfig(
        filename=demo.space.logs / "demo.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # Ctrl-C or SIGTERM cancels the run; the processes are stopped in ``finally`` either way
    # (set explicitly: a shell may have started the demo with SIGINT ignored).
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await demo.run()
        console.print(demo.summary())
        if options.wait:
            console.print("\nThe API keeps serving; try:\n")
            for hint in demo.curl_hints():
                console.print(f"  {hint}", highlight=False, soft_wrap=True)
            console.print("\nCtrl-C stops everything.")
            await asyncio.Event().wait()
        return 0
    except asyncio.CancelledError:
        console.print("\ninterrupted: stopping every process…")
        return 130
    except (RuntimeError, TimeoutError, OSError) as exc:
        console.print(f"[bold red]demo failed:[/] {exc}\nlogs: {demo.space.logs}", soft_wrap=True)
        return 1
    finally:
        demo.stop()


app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command(
    help="Train, roll out, stream and serve on local processes (needs scripts/stack.sh up)."
)
def main(
    directory: Annotated[Path, typer.Option("--dir", help="run directories")] = Path("var/demo"),
    duration: Annotated[
        float, typer.Option(help="seconds of live traffic before retraining", min=0)
    ] = 30.0,
    after: Annotated[
        float, typer.Option(help="seconds of traffic after the second rollout", min=0)
    ] = 10.0,
    rate: Annotated[float, typer.Option(help="user actions per second", min=0.1)] = 200.0,
    workers: Annotated[int, typer.Option(help="worker processes", min=1)] = 2,
    interactions: Annotated[int, typer.Option(help="size of the shop", min=1000)] = 50_000,
    seed: Annotated[int, typer.Option(help="the shop's seed")] = 7,
    api_port: Annotated[int, typer.Option(help="(a free one if taken)")] = 8080,
    plain: Annotated[bool, typer.Option("--plain", help="plain lines, no live view")] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="exit after the summary (leave nothing running)")
    ] = False,
) -> None:
    options = Options(
        directory=directory,
        duration_s=duration,
        after_s=after,
        rate=rate,
        workers=workers,
        interactions=interactions,
        seed=seed,
        api_port=api_port,
        plain=plain,
        wait=not no_wait,
    )
    console = Console()
    if not console.is_terminal:  # a log or a pipe: lines, wide enough for the summary
        console = Console(width=120)
        options = replace(options, plain=True)
    try:
        code = asyncio.run(_main(options, console))
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


if __name__ == "__main__":
    app(prog_name="python -m reco_devkit.demo")
