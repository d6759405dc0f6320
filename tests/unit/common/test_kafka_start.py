"""Starting a Kafka client: retried for ``RECO_KAFKA_START_TIMEOUT_S`` (brokers and principals
that come up with the pod), then an error naming the setting; 0 fails at the first refusal."""

from __future__ import annotations

import pytest
from aiokafka.errors import ClusterAuthorizationFailedError, KafkaConnectionError

from reco_common.kafka import KafkaUnavailableError, start_client
from reco_common.settings import KafkaSettings


class FlakyClient:
    """A client whose first ``refusals`` starts fail as aiokafka's do when no broker accepts."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.starts = 0
        self.closed = 0

    async def start(self) -> None:
        self.starts += 1
        if self.starts <= self.refusals:
            raise KafkaConnectionError("Unable to bootstrap from [('kafka', 9092)]")

    async def close(self) -> None:
        self.closed += 1


async def test_a_client_refused_at_first_starts_within_the_start_timeout() -> None:
    client = FlakyClient(refusals=2)
    settings = KafkaSettings(bootstrap="kafka:9092", start_timeout_s=30)
    await start_client(settings, start=client.start, close=client.close)
    assert (client.starts, client.closed) == (3, 0)


async def test_without_a_start_timeout_the_first_refusal_is_an_error_naming_the_setting() -> None:
    client = FlakyClient(refusals=1)
    with pytest.raises(KafkaUnavailableError, match="RECO_KAFKA_BOOTSTRAP='kafka:9092'"):
        await start_client(KafkaSettings(bootstrap="kafka:9092"), start=client.start,
                           close=client.close)  # fmt: skip
    assert (client.starts, client.closed) == (1, 1)


async def test_a_client_refused_past_the_start_timeout_is_released_and_reported() -> None:
    client = FlakyClient(refusals=1_000)
    settings = KafkaSettings(bootstrap="kafka:9092", start_timeout_s=0.3)
    with pytest.raises(KafkaUnavailableError, match="unreachable"):
        await start_client(settings, start=client.start, close=client.close)
    assert client.starts >= 2
    assert client.closed == 1


async def test_a_client_refused_for_another_reason_is_released_at_once() -> None:
    client = FlakyClient(refusals=0)

    async def refused() -> None:  # what an idempotent producer's start gets without any Write
        client.starts += 1
        raise ClusterAuthorizationFailedError()

    settings = KafkaSettings(bootstrap="kafka:9092", start_timeout_s=30)
    with pytest.raises(ClusterAuthorizationFailedError):
        await start_client(settings, start=refused, close=client.close)
    assert (client.starts, client.closed) == (1, 1)


def test_the_start_timeout_is_bounded() -> None:
    with pytest.raises(ValueError, match="start_timeout_s"):
        KafkaSettings(start_timeout_s=-1)
