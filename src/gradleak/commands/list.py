"""``gradleak list``: the attacks, label methods, defenses, server strategies, models and datasets available."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("list", help="attacks, label methods, defenses, server strategies, models and datasets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from ..attacks import ATTACKS
    from ..data import DATASETS
    from ..defenses import DEFENSES
    from ..labels import LABEL_METHODS
    from ..models import MODELS
    from ..servers import HONEST, SERVERS

    table: dict[str, Any] = {
        "attacks": {n: c.paper for n, c in ATTACKS.items()},
        "label methods": {n: c.paper for n, c in LABEL_METHODS.items()},
        "defenses": {n: (c.__doc__ or "").strip().splitlines()[0] for n, c in DEFENSES.items()},
        "server strategies": {
            HONEST: "sends the model unchanged (default)",
            **{n: c.paper for n, c in SERVERS.items()},
        },
        "models": {n: "" for n in MODELS.names()},
        "datasets": {n: "" for n in DATASETS.names()},
    }
    if a.json:
        print(json.dumps(table, indent=2))
        return 0
    for section, items in table.items():
        print(f"{section}:")
        for name, desc in items.items():
            print(f"  {name:<22} {desc}")
    return 0
