"""User actions for a run: the synthetic shop split into history and live traffic, one shopper
who changes taste in front of the audience, and a producer that rides out a broker restart.

The shop (``reco_common.synth``) is cut in time: the older part is the first model's training
file, the newer part is replayed as live traffic, each action re-stamped with a fresh event id
and the current time (freshness is measured from that time to the Redis write).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import pyarrow as pa
import pyarrow.compute as pc
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from reco_common.contracts import ActionType, UserAction, encode
from reco_common.interactions import ACTION, ITEM_ID, USER_ID, write_log
from reco_common.kafka import KafkaUnavailableError, ensure_topics, start_producer
from reco_common.settings import KafkaSettings
from reco_common.synth import CATEGORY, ShopConfig, generate

logger = logging.getLogger(__name__)

SEND_RETRY_MAX_S: Final = 2.0
# The shopper's funnel on each new item: intent grows, so the list moves visibly.
SHOPPER_FUNNEL: Final = (ActionType.VIEW, ActionType.CLICK, ActionType.CART, ActionType.PURCHASE)


# --------------------------------------------------------------------------- the shop


@dataclass(frozen=True)
class ShopFiles:
    """A generated shop on disk: the history file (training data), items, the live part."""

    interactions_uri: str
    items_uri: str
    history: pa.Table
    live: pa.Table
    category: dict[str, str]

    @property
    def users(self) -> list[str]:
        return sorted(set(self.history.column(USER_ID).to_pylist()))

    @property
    def items(self) -> list[str]:
        return list(self.category)


def prepare_shop(
    directory: Path, *, interactions: int, seed: int, live_fraction: float = 0.2
) -> ShopFiles:
    """Generate the shop and write its older ``1 - live_fraction`` and its items as Parquet."""
    shop = generate(ShopConfig(n_interactions=interactions, n_categories=12, seed=seed))
    cut = round(shop.log.num_rows * (1.0 - live_fraction))
    history, live = shop.log.slice(0, cut), shop.log.slice(cut)
    directory.mkdir(parents=True, exist_ok=True)
    interactions_uri = write_log(history, str(directory / "interactions.parquet"))
    items_uri = write_log(shop.items, str(directory / "items.parquet"))
    columns = shop.items.to_pydict()
    category = dict(zip(columns[ITEM_ID], columns[CATEGORY], strict=True))
    logger.info(
        "shop: %d history actions, %d live, %d users, %d items",
        history.num_rows,
        live.num_rows,
        shop.config.users,
        shop.config.items,
    )
    return ShopFiles(interactions_uri, items_uri, history, live, category)


def live_traffic(
    log: pa.Table, *, id_prefix: str, skip_user: str | None = None
) -> Iterator[UserAction]:
    """The rows of ``log`` as new actions, endlessly, each with a fresh id and the current time."""
    if skip_user is not None:
        log = log.filter(pc.not_equal(log.column(USER_ID), skip_user))
    columns = log.select([USER_ID, ITEM_ID, ACTION]).to_pydict()
    rows = list(zip(columns[USER_ID], columns[ITEM_ID], columns[ACTION], strict=True))
    for n, (user, item, action) in zip(itertools.count(), itertools.cycle(rows)):
        yield UserAction(
            event_id=f"{id_prefix}-{n}",
            user_id=user,
            item_id=item,
            action=ActionType(action),
            ts=datetime.now(UTC),
        )


# --------------------------------------------------------------------------- the shopper


@dataclass(frozen=True)
class Shopper:
    """A regular customer: a look at their ``usual`` category, then more and more ``new``."""

    user_id: str
    usual: str
    new: str
    usual_items: tuple[str, ...]
    new_items: tuple[str, ...]

    def actions(self, *, id_prefix: str) -> Iterator[UserAction]:
        """Views of two usual items (a list to start from), then through the funnel on each of
        the new category's best sellers in turn, endlessly."""
        usual = ((item, ActionType.VIEW) for item in self.usual_items[:2])
        new = itertools.cycle(itertools.product(self.new_items, SHOPPER_FUNNEL))
        for n, (item, action) in enumerate(itertools.chain(usual, new)):
            yield UserAction(
                event_id=f"{id_prefix}-{n}",
                user_id=self.user_id,
                item_id=item,
                action=action,
                ts=datetime.now(UTC),
            )


def pick_shopper(shop: ShopFiles, *, items: int = 5) -> Shopper:
    """A regular (as active as the top quarter of the history's users) and the best-selling
    category they buy least from."""
    users = collections.Counter(shop.history.column(USER_ID).to_pylist()).most_common()
    user_id = users[len(users) // 4][0]
    mine = shop.history.filter(pc.equal(shop.history.column(USER_ID), user_id))
    theirs = collections.Counter(shop.category[i] for i in mine.column(ITEM_ID).to_pylist())
    sold = collections.Counter(shop.history.column(ITEM_ID).to_pylist())
    sales: collections.Counter[str] = collections.Counter()
    for item, count in sold.items():
        sales[shop.category[item]] += count
    ranked = [c for c, _ in sales.most_common()]
    new = min(ranked, key=lambda c: (theirs[c], ranked.index(c)))
    usual = theirs.most_common(1)[0][0]

    def best(category: str) -> tuple[str, ...]:
        return tuple([i for i, _ in sold.most_common() if shop.category[i] == category][:items])

    return Shopper(user_id, usual, new, best(usual), best(new))


# --------------------------------------------------------------------------- producing


class ActionSender:
    """Sends user actions keyed by user (acks=all, idempotent) and waits for the acks.

    A batch that fails (e.g. while the broker restarts) is sent again, with backoff, until
    ``retry_for_s`` has passed: a re-sent action may land twice, which the worker absorbs.
    """

    def __init__(self, kafka: KafkaSettings, *, retry_for_s: float = 120.0) -> None:
        self._kafka = kafka
        self._retry_for_s = retry_for_s
        self._producer: AIOKafkaProducer | None = None
        self.sent = 0

    @property
    def topic(self) -> str:
        topic: str = self._kafka.topics.user_actions
        return topic

    async def __aenter__(self) -> Self:
        await ensure_topics(self._kafka, self.topic)
        self._producer = await start_producer(self._kafka)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def send(self, actions: Sequence[UserAction]) -> None:
        """Send ``actions`` and return once every one was acknowledged."""
        pending = list(actions)
        deadline = time.monotonic() + self._retry_for_s
        delay = 0.1
        while pending:
            pending = await self._attempt(pending)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(pending)} actions not acknowledged in {self._retry_for_s:g} s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, SEND_RETRY_MAX_S)
            await self._reconnect()
        self.sent += len(actions)

    async def _attempt(self, actions: list[UserAction]) -> list[UserAction]:
        """Send each action; return those that failed."""
        if self._producer is None:
            return actions
        futures: list[asyncio.Future[object] | None] = []
        for action in actions:
            try:
                futures.append(
                    await self._producer.send(
                        self.topic, encode(action), key=action.user_id.encode()
                    )
                )
            except KafkaError as exc:
                logger.warning("send of %s failed: %r", action.event_id, exc)
                futures.append(None)
        results = await asyncio.gather(
            *(f for f in futures if f is not None), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            logger.warning(
                "%d actions not acknowledged (%r): sending them again", len(errors), errors[0]
            )
        failures = iter(isinstance(r, BaseException) for r in results)
        return [a for a, f in zip(actions, futures, strict=True) if f is None or next(failures)]

    async def _reconnect(self) -> None:
        """A new producer: after a failed batch the idempotent one may refuse to go on."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        try:
            self._producer = await start_producer(self._kafka)
        except KafkaUnavailableError as exc:
            logger.warning("Kafka still unavailable: %s", exc)


async def stream(
    sender: ActionSender,
    actions: Iterable[UserAction],
    *,
    rate: float,
    stop: asyncio.Event | None = None,
    tick_s: float = 0.05,
    on_sent: Callable[[Sequence[UserAction]], None] | None = None,
) -> None:
    """Send ``actions`` at ``rate`` per second in ticks until they run out or ``stop`` is set."""
    source = iter(actions)
    started = time.monotonic()
    due = 0.0
    sent = 0
    while stop is None or not stop.is_set():
        due = (time.monotonic() - started) * rate
        batch = list(itertools.islice(source, max(0, int(due) - sent)))
        if batch:
            await sender.send(batch)
            sent += len(batch)
            if on_sent is not None:
                on_sent(batch)
        elif int(due) > sent:
            return  # the source ran out
        await asyncio.sleep(tick_s)
