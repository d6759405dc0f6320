"""``reco-trainer synth``: the synthetic shop as files and/or events on ``user-actions``."""

from __future__ import annotations

import asyncio
import logging

from reco_common.contracts import encode
from reco_common.interactions import LogFormat
from reco_common.kafka import ensure_topics, start_producer
from reco_common.settings import CommonSettings, KafkaSettings
from reco_common.synth import Shop, ShopConfig, generate, iter_actions, write_shop

logger = logging.getLogger(__name__)

_IN_FLIGHT = 5_000


def synthesize(
    *,
    settings: CommonSettings,
    output: str | None,
    to_kafka: bool,
    fmt: LogFormat,
    interactions: int,
    users: int | None,
    items: int | None,
    categories: int,
    days: float,
    drift: float,
    seed: int,
) -> dict[str, str]:
    """Generate the shop, write it and/or produce it; return what went where."""
    shop = generate(
        ShopConfig(
            n_interactions=interactions,
            n_users=users,
            n_items=items,
            n_categories=categories,
            days=days,
            drift=drift,
            seed=seed,
        )
    )
    logger.info(
        "synthetic shop: %d interactions, %d users, %d items",
        shop.log.num_rows,
        shop.config.users,
        shop.config.items,
    )
    written: dict[str, str] = {}
    if output is not None:
        written.update(write_shop(shop, output, fmt=fmt, s3=settings.s3))
    if to_kafka:
        sent = asyncio.run(produce(shop, kafka=settings.kafka))
        written["events"] = f"{sent} on {settings.kafka.topics.user_actions}"
    return written


async def produce(shop: Shop, *, kafka: KafkaSettings) -> int:
    """Send every action, keyed by user, waiting for acknowledgements in bounded windows."""
    topic = kafka.topics.user_actions
    await ensure_topics(kafka, topic)
    producer = await start_producer(kafka, linger_ms=20)
    sent = 0
    try:
        pending = []
        for action in iter_actions(shop):
            pending.append(await producer.send(topic, encode(action), key=action.user_id.encode()))
            if len(pending) >= _IN_FLIGHT:
                await asyncio.gather(*pending)
                sent += len(pending)
                pending.clear()
        await asyncio.gather(*pending)
        sent += len(pending)
    finally:
        await producer.stop()
    logger.info("produced %d events on %s", sent, topic)
    return sent
