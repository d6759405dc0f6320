"""Fakes at the controller's own boundary: the Redis records (``ModelRecords``) in memory,
with the same fence rule as the server-side script (an older epoch of one lineage refused)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reco_common.artifact import Manifest, PopularList
from reco_common.contracts import ActiveModel, LocalRollout
from reco_common.redis_store import Epoch


@dataclass
class MemoryRecords:
    """``ModelRecords`` in memory; ``writes`` lists every applied write in order."""

    actives: dict[str, ActiveModel] = field(default_factory=dict)
    rollouts: dict[str, LocalRollout] = field(default_factory=dict)
    fences: dict[str, Epoch] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)

    def _newer_or_equal(self, model_name: str, epoch: Epoch) -> bool:
        stored = self.fences.get(model_name)
        if stored is not None and stored.lineage == epoch.lineage and epoch.number < stored.number:
            return False
        self.fences[model_name] = epoch
        return True

    async def active(self, model_name: str) -> ActiveModel | None:
        return self.actives.get(model_name)

    async def activate(self, active: ActiveModel, *, epoch: Epoch) -> bool:
        if not self._newer_or_equal(active.model_name, epoch):
            return False
        self.actives[active.model_name] = active
        self.writes.append(f"active {active.version}")
        return True

    async def rollout(self, model_name: str) -> LocalRollout | None:
        return self.rollouts.get(model_name)

    async def remember_rollout(self, model_name: str, state: LocalRollout, *, lineage: str) -> bool:
        if not self._newer_or_equal(model_name, Epoch(lineage, state.epoch)):
            return False
        self.rollouts[model_name] = state
        return True


class PopularLists:
    """The popular source over manifests by URI: each artifact's popular list is its version."""

    def __init__(self, manifests: dict[str, Manifest] | None = None) -> None:
        self.manifests = manifests or {}
        self.reads: list[tuple[str, str | None]] = []

    async def __call__(self, uri: str, *, sha256: str | None) -> tuple[Manifest, PopularList]:
        self.reads.append((uri, sha256))
        manifest = self.manifests[uri]
        return manifest, PopularList(items=[f"popular-of-{manifest.version}"], scores=[1.0])
