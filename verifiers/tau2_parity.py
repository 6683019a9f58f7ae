"""Reward parity with tau²-bench: gold replays and their near misses, scored by our verifier and
by tau²'s own evaluator on the same trajectories. They must agree on every one.

    python -m verifiers.tau2_parity --domain airline [--split base] [--limit N]
    python -m verifiers.tau2_parity --config X.yaml  (domain.name, parity.split, parity.max_tasks)

For each task: the gold replay (``rollout.gold_replay``) through our episode runner, then the
variants below. Prints a progress line per task and a summary; exits 1 on any disagreement or on
a gold replay that does not score 1.0.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator
from tqdm import tqdm

from eigen_core.config import DomainConfig
from eigen_core.configio import Section, add_config_args, add_flag_aliases, alias_overrides, config_from_args
from eigen_core.contracts import Action, Task
from eigen_core.domain import Domain
from eigen_core.domains import get_domain
from eigen_core.domains.tau2 import load_tasks
from rollout.gold_replay import GoldScript, gold_parties
from rollout.workflow import ScoredEpisodes
from verifiers.reward import Verifier
from verifiers.tau2_eval import with_tau2_cross_check


@dataclass(frozen=True)
class Variant:
    """A scripted episode: the gold one or a near miss."""

    name: str
    actions: list[Action] | None = None
    outputs: list[str] | None = None
    stop_after: int | None = None
    max_steps: int = 200


@dataclass(frozen=True)
class ParityResult:
    task_id: str
    variant: str
    ours: float
    theirs: float
    termination: str
    reasons: dict[str, str]

    @property
    def agrees(self) -> bool:
        return self.ours == self.theirs


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "_x"
    if isinstance(value, list) and value:
        return value[:-1]
    return "changed"


def variants(task: Task, domain: Domain) -> Iterator[Variant]:
    """The gold replay, then: the last state-changing action dropped; that action with one
    argument changed; the required outputs left unsaid; the user hanging up halfway; the step
    budget running out. Variants that would equal the gold are skipped."""
    gold = task.gold_actions
    yield Variant("gold")
    changing = [i for i, a in enumerate(gold) if a.name in domain.write_tools or a.requestor == "user"]
    if changing:
        i = changing[-1]
        yield Variant("drop_write", actions=gold[:i] + gold[i + 1 :])
        if gold[i].arguments:
            key = sorted(gold[i].arguments)[0]
            bad = gold[i].model_copy(
                update={"arguments": {**gold[i].arguments, key: _changed(gold[i].arguments[key])}}
            )
            yield Variant("wrong_args", actions=[*gold[:i], bad, *gold[i + 1 :]])
    if task.required_outputs:
        yield Variant("unsaid_outputs", outputs=[])
    if gold:
        yield Variant("early_stop", stop_after=len(gold) // 2)
        yield Variant("out_of_steps", max_steps=max(1, len(gold) // 2))


async def check_task(task: Task, domain: Domain, verifier: Verifier) -> list[ParityResult]:
    """Every variant of ``task``, scored both ways."""
    out = []
    for v in variants(task, domain):
        script = GoldScript(task, actions=v.actions, outputs=v.outputs, stop_after=v.stop_after)
        agent, user = gold_parties(script)
        workflow = ScoredEpisodes(
            domain,
            agent=lambda t, s, a=agent: a,  # one episode per variant: its own parties
            user=lambda t, s, u=user: u,
            score=with_tau2_cross_check(verifier.score),
            max_steps=v.max_steps,
        )
        traj = await workflow.run(task, 0)
        ours = traj.reward_info
        assert ours is not None
        out.append(
            ParityResult(
                task.id, v.name, ours.reward, ours.components["tau2"], traj.termination.value, ours.reasons
            )
        )
    return out


async def check_domain(
    domain_name: str,
    split: str | None = "base",
    start: int = 0,
    stop: int | None = None,
    progress: bool = True,
) -> list[ParityResult]:
    """Parity over tasks ``start:stop`` of a tau² split."""
    domain = get_domain(domain_name)
    tasks = load_tasks(domain_name, split)[start:stop]
    verifier = Verifier(domain, components=("db", "outputs"))
    results: list[ParityResult] = []
    for task in tqdm(tasks, desc=f"parity {domain_name}", disable=not progress, file=sys.stderr):
        results += await check_task(task, domain, verifier)
    return results


class ParitySection(Section):
    split: str = "base"
    """tau² split: ``base``, ``train``, ``test`` (telecom also ``small``, ``full``)."""
    max_tasks: int | None = Field(None, ge=1)
    """Only the first N tasks (None: all)."""


class ParityConfig(Section):
    """The sections ``verifiers.tau2_parity`` reads."""

    domain: DomainConfig = DomainConfig(name="airline")
    """The tau² domain (airline, retail, telecom)."""
    parity: ParitySection = ParitySection()
    """Which tasks."""

    @field_validator("domain")
    @classmethod
    def _tau2(cls, d: DomainConfig) -> DomainConfig:
        if d.name not in ("airline", "retail", "telecom"):
            raise ValueError(f"name: {d.name!r} is not a tau² domain (airline, retail, telecom)")
        return d


FLAGS = {
    "--domain": ("domain.name", str),
    "--split": ("parity.split", str),
    "--limit": ("parity.max_tasks", int),
}
"""Flags that are aliases of config keys."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m verifiers.tau2_parity", description=__doc__.splitlines()[0])
    add_config_args(p)
    add_flag_aliases(p, FLAGS)
    args = p.parse_args(argv)
    cfg = config_from_args(ParityConfig, args, alias_overrides(args, FLAGS))
    results = asyncio.run(check_domain(cfg.domain.name, cfg.parity.split, stop=cfg.parity.max_tasks))
    bad = [r for r in results if not r.agrees or (r.variant == "gold" and r.ours != 1.0)]
    by_variant: dict[str, list[ParityResult]] = {}
    for r in results:
        by_variant.setdefault(r.variant, []).append(r)
    print(f"{'variant':<16}{'episodes':>9}{'agree':>7}{'reward 1 (ours)':>17}")
    for name, rs in by_variant.items():
        print(f"{name:<16}{len(rs):>9}{sum(r.agrees for r in rs):>7}{sum(r.ours == 1.0 for r in rs):>17}")
    for r in bad[:20]:
        print(
            f"DISAGREE {r.task_id} {r.variant}: ours {r.ours} tau2 {r.theirs} ({r.termination}) {r.reasons}"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
