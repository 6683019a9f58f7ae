"""The shared kernel: what every other package speaks (contracts, config loading, the task pool,
the tokenizer and chat format, the ``Domain`` protocol and the domains). It imports none of
``rollout``, ``verifiers``, ``synth`` or ``eigen_jax``, and no JAX."""
