"""``python -m synth.procedural --config configs/quickstart.yaml --num-tasks N --out DIR``"""

from __future__ import annotations

import argparse
import json
import sys

from eigen_core.config import DomainConfig, PoolConfig
from eigen_core.configio import Section, add_config_args, add_flag_aliases, alias_overrides, config_from_args
from synth.config import ProceduralConfig
from synth.procedural import generate_to_pool
from verifiers.config import VerifierConfig


class ProceduralCommandConfig(Section):
    """The sections ``synth.procedural`` reads."""

    domain: DomainConfig = DomainConfig()
    """The domain tasks are generated for."""
    procedural: ProceduralConfig = ProceduralConfig()
    """How many tasks, their seed and difficulty knobs."""
    pool: PoolConfig = PoolConfig()
    """The pool accepted tasks go to."""
    verifier: VerifierConfig = VerifierConfig()
    """The reward each task's gold replay must earn to be accepted."""


FLAGS = {
    "--num-tasks": ("procedural.num_tasks", int),
    "--out": ("pool.dir", str),
    "--seed": ("procedural.seed", int),
}
"""Flags that are aliases of config keys."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synth.procedural", description=__doc__)
    add_config_args(parser)
    add_flag_aliases(parser, FLAGS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    cfg = config_from_args(ProceduralCommandConfig, args, alias_overrides(args, FLAGS))
    report = generate_to_pool(
        cfg.domain.name, cfg.procedural, cfg.pool, cfg.verifier, progress=not args.no_progress
    )
    print(json.dumps({"pool": cfg.pool.dir, **report.as_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
