"""The IVF index's recall curve per query family on synthetic 1M catalogs: recall@100 against
exact search for each count of probed lists, as the trainer measures it
(``reco_common.ivf.model_queries`` and ``recall_curve``), and the lists each family needs
for a recall target. Catalogs: ``bench/worker/ivf.py``'s (``decay``: a trained model's
spectrum; ``clustered``: items and users around category centres; ``iso``: random isotropic
factors).

    uv run python bench/worker/recall_curve.py --items 1000000 --catalog decay clustered iso
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from ivf import catalog

from reco_common.ivf import IvfIndex, model_queries, recall_curve

FAMILIES = ("users", "items", "blend")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--catalog", nargs="+", default=["decay", "clustered", "iso"])
    parser.add_argument("--lists", type=int, default=0, help="0: ~sqrt(items)")
    parser.add_argument("--probes", type=int, nargs="+", default=[96, 128, 160, 192, 256])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.98, 0.985])
    args = parser.parse_args()
    for name in args.catalog:
        shape = argparse.Namespace(
            catalog=name, decay=1.2, categories=2000, spread=0.3, queries=50_000
        )
        items, users = catalog(shape, args.items)
        items, users = items.astype(np.float32), users.astype(np.float32)
        started = time.process_time()
        index = IvfIndex.build(items, lists=args.lists)
        families = model_queries(users, items)
        curves = [recall_curve(index, items, f) for f in families]
        cpu = time.process_time() - started
        for family, curve in [*zip(FAMILIES, curves, strict=True), ("lowest", np.min(curves, 0))]:
            reached = {
                t: int(np.argmax(curve >= t)) if curve[-1] >= t else None for t in args.targets
            }
            row = {
                "catalog": name,
                "family": family,
                "lists": index.lists,
                "recall": {p: round(float(curve[min(p, index.lists)]), 4) for p in args.probes},
                "lists_for": reached,
                "build_and_curves_cpu_s": round(cpu, 1),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
