"""``python -m synth.procedural --config configs/quickstart.yaml --num-tasks N --out DIR``"""

from __future__ import annotations

import argparse
import json
import sys

from eigen_core.config import DomainConfig
from eigen_core.configio import Section, add_config_args, config_from_args
from synth.config import PoolConfig, ProceduralConfig
from synth.procedural import generate_to_pool
from verifiers.config import VerifierConfig


class ProceduralCommandConfig(Section):
    """The sections ``synth.procedural`` reads."""

    domain: DomainConfig = DomainConfig()
    procedural: ProceduralConfig = ProceduralConfig()
    pool: PoolConfig = PoolConfig()
    verifier: VerifierConfig = VerifierConfig()


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    overrides = []
    if args.num_tasks is not None:
        overrides.append(f"procedural.num_tasks={args.num_tasks}")
    if args.out is not None:
        overrides.append(f"pool.dir={args.out}")
    if args.seed is not None:
        overrides.append(f"procedural.seed={args.seed}")
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synth.procedural", description=__doc__)
    add_config_args(parser)
    parser.add_argument("--num-tasks", type=int, help="same as procedural.num_tasks=N")
    parser.add_argument("--out", help="pool directory; same as pool.dir=DIR")
    parser.add_argument("--seed", type=int, help="same as procedural.seed=S")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    cfg = config_from_args(ProceduralCommandConfig, args, _flag_overrides(args))
    report = generate_to_pool(
        cfg.domain.name, cfg.procedural, cfg.pool, cfg.verifier, progress=not args.no_progress
    )
    print(json.dumps({"pool": cfg.pool.dir, **report.as_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
