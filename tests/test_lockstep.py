"""Lockstep cohorts and the controller's deterministic schedule: what runs together, and under
which version, does not depend on timing."""

import asyncio
import random

import numpy as np
import pytest
from flax import nnx

from eigen_jax.model import Decoder, DecoderConfig
from eigen_jax.sampler import Sampler
from rollout import lockstep
from rollout.controller import RolloutController
from rollout.engine import Generation, SamplingParams
from rollout.version import PolicyVersion


class RecordingEngine:
    """Records each batch it serves (prompts, version); answers with the prompt's length."""

    def __init__(self, pv: PolicyVersion | None = None):
        self.policy_version = pv or PolicyVersion()
        self.batches: list[tuple[list[int], int | None]] = []

    def new_prefix_store(self, share=1.0):
        return None

    def generate_batch(self, prompts, sampling, *, version=None, prefix_store=None):
        self.batches.append(([p[0] for p in prompts], version))
        return [Generation(tokens=[len(p)], logprobs=[0.0], finish_reason="stop", version=0) for p in prompts]

    async def generate(self, prompt, sampling):
        cohort = lockstep.current_cohort.get()
        assert cohort is not None
        return await cohort.submit(self, prompt, sampling)


def _cohort_run(seed: int, members: int = 5, turns: int = 3):
    """``members`` episodes alternating agent and user requests after random pauses."""
    rng = random.Random(seed)
    pv = PolicyVersion(4)
    agent, user = RecordingEngine(pv), RecordingEngine()

    async def episode(m: int):
        for t in range(turns + m % 2):  # members end at different turns
            await asyncio.sleep(rng.random() * 0.01)
            await agent.generate([m, t], SamplingParams())
            await asyncio.sleep(rng.random() * 0.01)
            await user.generate([m, t, 0], SamplingParams())

    async def main():
        cohort = lockstep.Cohort(members, pv, 4)
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(lockstep.member(m, lambda m=m: episode(m)), context=lockstep.in_cohort(cohort))
            for m in reversed(range(members))
        ]
        await asyncio.gather(*tasks)
        return cohort.ticks

    ticks = asyncio.run(main())
    return agent.batches, user.batches, ticks


def test_a_cohort_batches_every_live_member_in_member_order_whatever_the_timing():
    a1, u1, ticks = _cohort_run(0)
    a2, u2, _ = _cohort_run(1)
    assert (a1, u1) == (a2, u2)
    assert a1[0] == ([0, 1, 2, 3, 4], 4)  # every member, in member order, on the pinned version
    assert u1[0] == ([0, 1, 2, 3, 4], None)  # another policy's engine: its current weights
    assert a1[-1] == ([1, 3], 4)  # the members that run a turn longer, alone
    assert ticks == 8


def test_a_failed_batch_fails_its_members_and_a_member_that_ends_unblocks_the_rest():
    class Broken(RecordingEngine):
        def generate_batch(self, prompts, sampling, *, version=None, prefix_store=None):
            raise RuntimeError("engine down")

    engine = Broken()

    async def main():
        cohort = lockstep.Cohort(2)

        async def quits():
            return "done"

        async def asks():
            return await engine.generate([1], SamplingParams())

        loop = asyncio.get_running_loop()
        t1 = loop.create_task(lockstep.member(0, quits), context=lockstep.in_cohort(cohort))
        t2 = loop.create_task(lockstep.member(1, asks), context=lockstep.in_cohort(cohort))
        return await asyncio.gather(t1, t2, return_exceptions=True)

    done, failed = asyncio.run(main())
    assert done == "done" and isinstance(failed, RuntimeError) and "engine down" in str(failed)


def test_sampler_serves_a_pinned_version_and_refuses_one_it_no_longer_keeps():
    cfg = DecoderConfig.from_hf(
        dict(model_type="qwen3", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
             num_attention_heads=2, num_key_value_heads=2, head_dim=16, max_position_embeddings=128)
    )  # fmt: skip
    a, b = Decoder(cfg, rngs=nnx.Rngs(0)), Decoder(cfg, rngs=nnx.Rngs(1))
    s = Sampler(a, keep_versions=2, prefix_cache_mb=1)
    sp = SamplingParams(temperature=1.0, max_new_tokens=6, seed=3)
    old = s.generate_batch([[5, 6, 7]], sp)[0]
    s.update_weights(nnx.state(b), version=1)
    new = s.generate_batch([[5, 6, 7]], sp)[0]
    pinned = s.generate_batch([[5, 6, 7]], sp, version=0, prefix_store=s.new_prefix_store())[0]
    assert pinned.logprobs == old.logprobs and pinned.tokens == old.tokens and pinned.version == 0
    assert new.logprobs != old.logprobs and new.version == 1
    s.update_weights(nnx.state(a), version=2)
    with pytest.raises(ValueError, match="version 0 are gone"):
        s.generate_batch([[5, 6, 7]], sp, version=0)


def _deterministic_schedule(seed: int, eta: int, b: int = 3, steps: int = 6, held: list | None = None):
    """Fake groups (dropped by a fixed rule of their index) finishing after random pauses, and a
    learner that bumps the version after each batch: [(batch indices, their pinned versions)].
    ``held``: at each group's start, the prefix-cache budget shares the live cohorts hold."""
    rng = random.Random(seed)
    cohorts = set()

    async def main():
        pv = PolicyVersion()

        async def run_group(index):
            cohort = lockstep.current_cohort.get()
            cohorts.add(cohort)
            if held is not None:
                held.append(sum(c.cache_share * c.live / c.members for c in cohorts))

            async def episode():
                await asyncio.sleep(rng.random() * 0.01)
                return {"index": index, "version": cohort.version}

            return await lockstep.member(index, episode)  # one episode per group

        ctl = RolloutController(
            run_group, keep=lambda g: g["index"] % 3 != 1, batch_groups=b, max_staleness=eta,
            concurrency=1, version=pv, deterministic=True,
        )  # fmt: skip
        ctl.start()
        out = []
        for v in range(steps):
            batch = await ctl.next_batch()
            out.append(([g["index"] for g in batch], [g["version"] for g in batch]))
            await asyncio.sleep(rng.random() * 0.02)  # the update
            pv.set(v + 1)
        await ctl.stop()
        return out, ctl.cohorts

    return asyncio.run(main())


@pytest.mark.parametrize("eta", [0, 1, 2])
def test_the_deterministic_schedule_is_a_function_of_the_outcomes_alone(eta):
    out, cohorts = _deterministic_schedule(0, eta)
    assert (out, cohorts) == _deterministic_schedule(1, eta)
    for v, (indices, versions) in enumerate(out):
        assert all(i % 3 != 1 for i in indices) and indices == sorted(indices)
        assert all(v - eta <= w <= v for w in versions)  # the staleness bound
    if eta == 0:
        assert all(w == v for v, (_, ws) in enumerate(out) for w in ws)  # synchronous
    else:
        assert any(w < v for v, (_, ws) in enumerate(out) for w in ws)  # it does run ahead
    assert np.concatenate([i for i, _ in out]).tolist() == [i for i in range(27) if i % 3 != 1][:18]
    held = []
    _deterministic_schedule(2, eta, held=held)
    assert max(held) <= 1 + 1e-9, held  # the cohorts' prefix caches: one budget together


def test_the_deterministic_schedule_refuses_to_run_on_the_wrong_version():
    async def main():
        pv = PolicyVersion()

        async def run_group(index):
            return index

        ctl = RolloutController(run_group, keep=lambda g: True, batch_groups=2, max_staleness=0,
                                version=pv, deterministic=True)  # fmt: skip
        ctl.start()
        await ctl.next_batch()  # no weight swap after the update
        try:
            await ctl.next_batch()
        finally:
            await ctl.stop()

    with pytest.raises(RuntimeError, match="swap weights after every update"):
        asyncio.run(main())


def test_run_trials_in_lockstep_waves_batches_the_same_whatever_the_timing(tmp_path):
    """``run_trials(cohorts=...)``: waves of ``concurrency`` trials, each wave's requests batched
    together in (task, trial) order, the same at any timing; the records are complete."""
    from eigen_apps.eval.trials import run_trials
    from eigen_core.contracts import Message, Termination, Trajectory

    tasks = [type("T", (), {"id": f"t{i}"})() for i in range(3)]

    def once(seed: int, out):
        rng = random.Random(seed)
        engine = RecordingEngine()

        async def episode(task, trial_seed, group_id, k):
            for turn in range(2):
                await asyncio.sleep(rng.random() * 0.01)
                await engine.generate([int(task.id[1:]) * 10 + k, turn], SamplingParams())
            return Trajectory(
                task_id=task.id, messages=[Message(role="user", content="x")], tokens=[1], loss_mask=[1],
                behaviour_logprobs=[0.0], versions=[0], reward=1.0, termination=Termination.USER_STOP,
            )  # fmt: skip

        outcomes = asyncio.run(
            run_trials(tasks, episode, 2, 0, out, concurrency=4, progress=False, cohorts=lockstep.Cohort)
        )
        return engine.batches, outcomes

    a, out_a = once(0, tmp_path / "a.jsonl")
    b, out_b = once(1, tmp_path / "b.jsonl")
    assert a == b and out_a == out_b == {t.id: [1.0, 1.0] for t in tasks}
    assert [x for x, _ in a] == [[0, 1, 10, 11]] * 2 + [[20, 21]] * 2  # two waves, two turns each
