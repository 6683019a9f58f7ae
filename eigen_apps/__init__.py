"""Composition roots that need no JAX: the rollout server, selfcheck and the eval (endpoints,
trials, pass^k, reports). They may import ``rollout``, ``verifiers`` and ``synth``; nothing below
imports them, so no arrow runs back up from the episode runtime to the verifiers."""
