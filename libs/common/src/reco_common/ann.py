"""The artifact's approximate top-N index over the item rows (an HNSW graph by usearch).

The trainer builds it into the artifact (``item_index.usearch``, checksummed and listed in the
manifest like every other file); the worker opens it as a memory-mapped view
(``Index.restore(view=True)``: nothing copied, pods on one node share the page cache) and asks
it for candidates on large catalogs (docs/worker.md, "Top-N"). usearch was chosen over hnswlib
and faiss-cpu by measurement (docs/benchmarks.md, "Approximate top-N for million-item catalogs").

LightFM ranks items by ``q . v + b``: the artifact's rows are ``[v, b]`` and a query is
``[q, 1]``, an inner product. The graph is built one of two ways, whichever finds more of the
exact top 100 on a sample of the catalog (:func:`probe`, at build time):

- ``ip``: the rows as they are, searched by inner product. Best on isotropic rows (the
  benchmark's random catalogs: recall@100 0.92 against 0.71 augmented, 20k items x 64), and
  far better when norms vary widely without structure (0.99 against 0.22, 5k lognormal rows);
- ``augmented``: the inner-product search turned into a nearest-neighbour one (Bachrach et
  al., 2014): each row ``x`` gets one more dimension ``sqrt(M^2 - |x|^2)``, ``M`` the largest
  norm, so that every row has norm ``M``; a query gets ``0`` there, and the cosine order is the
  inner-product order. Best when a few directions dominate, as in trained factors (a LightFM
  model of MovieLens: the top 16 of 96 directions carry 82 % of the variance): on a random
  catalog with such a spectrum 0.93 against 0.55 by inner product (20k items x 64).

Keys are item rows. The worker re-scores what the index returns exactly, so only the choice of
candidates is approximate.

usearch is imported here only: the services that read manifests but never search (the
controller, the API) do not need it (``reco-common[ann]``).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

# ScaNN's extension is loaded before usearch's, never after: usearch links libstdc++ statically,
# and once its symbols are in the process ScaNN's index loader crashes (segfault, scann 1.4.2
# after usearch 2.26). Every import of usearch in the services goes through this module.
from scann.scann_ops.py import scann_ops_pybind  # noqa: F401  (isort: skip)
from usearch.compiled import MetricKind, ScalarKind
from usearch.index import BatchMatches, Index

logger = logging.getLogger(__name__)

FloatMatrix = npt.NDArray[np.float32]
Rows = npt.NDArray[np.intp]
# The probe: this many items and queries, the top ``PROBE_K`` searched with ``PROBE_EXPANSION``.
PROBE_ITEMS = 20_000
PROBE_QUERIES = 200
PROBE_K = 100
PROBE_EXPANSION = 256


class Transform(enum.StrEnum):
    """How rows become the graph's vectors (module docstring); ``auto``: :func:`probe`."""

    AUTO = "auto"
    INNER_PRODUCT = "ip"
    AUGMENTED = "augmented"


class ItemIndexError(ValueError):
    """An index that does not fit the model it came with."""


@dataclass(frozen=True, slots=True)
class IndexParams:
    """How the graph is built: ``connectivity`` (HNSW's M, edges per node) and
    ``expansion_add`` (the candidate list while inserting, efConstruction)."""

    connectivity: int = 32
    expansion_add: int = 200
    transform: Transform = Transform.AUTO


def augmented(rows: FloatMatrix) -> FloatMatrix:
    """``rows`` with one more dimension that gives every row the largest norm."""
    norms = np.linalg.norm(rows.astype(np.float64), axis=1)
    largest = float(norms.max(initial=0.0))
    extra = np.sqrt(np.maximum(largest**2 - norms**2, 0.0))
    return np.ascontiguousarray(np.concatenate([rows, extra[:, None]], axis=1), dtype=np.float32)


def augmented_queries(queries: FloatMatrix) -> FloatMatrix:
    """Queries with ``0`` in the extra dimension."""
    zeros = np.zeros((len(queries), 1), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate([queries, zeros], axis=1), dtype=np.float32)


def probe(
    items: FloatMatrix, queries: FloatMatrix, params: IndexParams, *, threads: int = 0
) -> dict[str, float]:
    """Recall@100 of each transform on a sample of ``items`` (at most :data:`PROBE_ITEMS`)
    searched with sampled ``queries`` ``[q, 1]``, against exact search on that sample."""
    rng = np.random.default_rng(0)
    sample = items[np.sort(rng.choice(len(items), min(len(items), PROBE_ITEMS), replace=False))]
    q = queries[rng.choice(len(queries), min(len(queries), PROBE_QUERIES), replace=False)]
    k = min(PROBE_K, len(sample))
    truth = np.argpartition(q @ sample.T, len(sample) - k, axis=1)[:, len(sample) - k :]
    found = {}
    for transform in (Transform.INNER_PRODUCT, Transform.AUGMENTED):
        index = ItemIndex.build(
            sample,
            IndexParams(params.connectivity, params.expansion_add, transform),
            threads=threads,
        )
        rows = index.search(q, k, expansion=PROBE_EXPANSION)
        hits = sum(len(np.intersect1d(r, t)) for r, t in zip(rows, truth, strict=True))
        found[transform.value] = hits / truth.size
    return found


class ItemIndex:
    """The index of a catalog's item rows: :meth:`search` gives candidate rows per query."""

    def __init__(self, index: Index) -> None:
        self._index = index

    @staticmethod
    def build(
        items: FloatMatrix,
        params: IndexParams,
        *,
        users: FloatMatrix | None = None,
        threads: int = 0,
    ) -> ItemIndex:
        """The index of ``items`` (``[v, b]`` rows); ``threads`` 0: every core. With the
        transform ``auto``, :func:`probe` chooses it with queries ``[u, 1]`` from the ``users``
        rows ``[u, b_u]`` (default: the items' own vectors)."""
        transform = params.transform
        if transform is Transform.AUTO:
            vectors = items if users is None or not len(users) else users
            queries = np.concatenate([vectors[:, :-1], np.ones((len(vectors), 1))], axis=1)
            recalls = probe(items, queries.astype(np.float32), params, threads=threads)
            transform = max(Transform.INNER_PRODUCT, Transform.AUGMENTED, key=recalls.__getitem__)
            logger.info("index transform %s (probe recall@100 %s)", transform, recalls)
        augmenting = transform is Transform.AUGMENTED
        vectors = augmented(items) if augmenting else np.ascontiguousarray(items, "f4")
        index = Index(
            ndim=vectors.shape[1],
            metric=MetricKind.Cos if augmenting else MetricKind.IP,
            # Stored quantised: the worker re-scores the candidates with the float32 factors,
            # and the graph walk ran 2.2x (int8) / 1.6x (float16) faster than float32 at the
            # same recall@100 after that (50k items). int8 needs the cosine's unit scale;
            # inner products of unscaled rows keep float16's range.
            dtype=ScalarKind.I8 if augmenting else ScalarKind.F16,
            connectivity=params.connectivity,
            expansion_add=params.expansion_add,
        )
        if len(vectors):
            index.add(np.arange(len(vectors), dtype=np.uint64), vectors, threads=threads)
        return ItemIndex(index)

    @staticmethod
    def open(path: Path) -> ItemIndex:
        """The index saved at ``path``, memory-mapped (the file must stay in place)."""
        index = Index.restore(str(path), view=True)
        if index is None:
            raise ItemIndexError(f"{path.name}: not a usearch index")
        return ItemIndex(index)

    def to_bytes(self) -> bytes:
        data = self._index.save()
        assert data is not None  # saved to a buffer, not a path
        return bytes(data)

    def __len__(self) -> int:
        return int(self._index.size)

    @property
    def transform(self) -> Transform:
        """Augmented rows are searched by cosine, plain ones by inner product."""
        augmenting = self._index.metric_kind == MetricKind.Cos
        return Transform.AUGMENTED if augmenting else Transform.INNER_PRODUCT

    def check(self, n_items: int, width: int) -> None:
        """Refuse an index of another catalog: its size and width must be the model's."""
        index = self._index
        if index.metric_kind not in (MetricKind.IP, MetricKind.Cos) or index.multi:
            raise ItemIndexError("item index is not a single-vector inner-product index")
        extra = 1 if self.transform is Transform.AUGMENTED else 0
        if len(self) != n_items or index.ndim != width + extra:
            raise ItemIndexError(
                f"item index holds {len(self)} rows of {index.ndim} for a model of "
                f"{n_items} items of {width} ({self.transform})"
            )

    def search(self, queries: FloatMatrix, count: int, *, expansion: int) -> Rows:
        """Per query ``[q, 1]``, up to ``count`` candidate rows, best first, ``-1`` padding.
        One thread: a query's candidates do not depend on the others in the batch."""
        out = np.full((len(queries), count), -1, dtype=np.intp)
        if not len(queries) or not len(self) or count <= 0:
            return out
        beam = max(expansion, count)
        if self._index.expansion_search != beam:
            # usearch's setter has no annotation, which its stubs read as a read-only property.
            setattr(self._index, "expansion_search", beam)  # noqa: B010
        if self.transform is Transform.AUGMENTED:
            queries = augmented_queries(queries)
        found = self._index.search(np.ascontiguousarray(queries, "f4"), count, threads=1)
        if isinstance(found, BatchMatches):
            keys, counts = np.asarray(found.keys), np.asarray(found.counts)
        else:  # one query: its matches alone
            keys, counts = np.asarray(found.keys)[None, :], np.array([len(found.keys)])
        keys = keys[:, :count]
        valid = np.arange(keys.shape[1]) < counts.reshape(-1, 1)
        out[:, : keys.shape[1]] = np.where(valid, keys.astype(np.int64), -1)
        return out
