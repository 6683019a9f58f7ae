"""Eval, in one place: its config, resumable trials, pass^k, reports, and the endpoint eval.
``eigen_jax.eval`` (the front door, which can serve checkpoints) and the ``eval`` stage of
``eigen_jax.train`` (the run's own checkpoints) bring engines to it."""
