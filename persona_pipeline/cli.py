"""``persona-pipeline`` command line: small helpers around the Dagster project.

Later stages add ``chat``, ``simulate`` and ``serve`` here.
"""

from __future__ import annotations

import argparse
import json
import sys

from .settings import data_root, home, profile


def _partition_range(args) -> int:
    """Print ``first...last`` of a partition set, for ``dagster asset materialize --partition-range``."""
    from .assets._common import persona_partitions

    keys = {"persona": persona_partitions}[args.kind].get_partition_keys()
    if not keys:
        print(f"no {args.kind} partitions under {data_root()}", file=sys.stderr)
        return 2
    print(f"{keys[0]}...{keys[-1]}")
    return 0


def _info(_args) -> int:
    print(json.dumps({"home": str(home()), "data": str(data_root()), "profile": profile().model_dump()}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="persona-pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("partition-range", help="print first...last partition key")
    pr.add_argument("kind", choices=["persona"])
    pr.set_defaults(fn=_partition_range)
    sub.add_parser("info", help="show where artifacts go and the active profile").set_defaults(fn=_info)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
