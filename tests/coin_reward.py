"""``python tests/coin_reward.py [eigen_jax.train arguments]``: the training front door with the
verifier's reward replaced by a coin read off each episode's first sampled token.

Deterministic (the same tokens get the same reward) and about half of a group passes, so GRPO on
episodes has a learning signal even from a random from-scratch agent: tests of the loop's
mechanics (resume, which groups rerun) get non-zero losses without training a real agent first.
"""

import sys

import verifiers.reward as reward
from eigen_core.contracts import RewardInfo, Task, Trajectory


async def coin(self: reward.Verifier, task: Task, traj: Trajectory) -> RewardInfo:
    first = next((t for t, m in zip(traj.tokens, traj.loss_mask, strict=True) if m), 0)
    return RewardInfo(reward=float(first % 2), components={"coin": float(first % 2)})


if __name__ == "__main__":
    reward.Verifier.score = coin  # bound when the stage builds its episodes: patch before main
    from eigen_jax.train import main

    sys.exit(main(sys.argv[1:]))
