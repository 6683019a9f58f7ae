"""The stages ``python -m eigen_jax.train`` runs on top of the learner: SFT and GRPO."""
