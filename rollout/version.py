"""The policy version: which learner step's weights generate tokens from now on.

One ``PolicyVersion`` per process is the only holder of the number. It is written by whoever
swaps the policy's weights, at the moment they swap (``Sampler.update_weights`` in process,
``HTTPEngine.sync_weights`` while the remote engine is paused, a rollout server when its learner
announces one); everything else reads it: the engines label generated tokens with it, the
rollout client sends it with each episode, the controller admits groups by it (and is woken by
``on_change``). So no one has to be told in the right order.
"""

from __future__ import annotations

from collections.abc import Callable


class PolicyVersion:
    def __init__(self, value: int = 0):
        self._value = value
        self._listeners: list[Callable[[int], None]] = []

    @property
    def value(self) -> int:
        return self._value

    def set(self, value: int) -> None:
        """The weights of learner step ``value`` are served from now on (a resumed learner may
        set an older value than a server last heard: the learner is the authority)."""
        self._value = value
        for listener in list(self._listeners):
            listener(value)

    def raise_to(self, value: int) -> None:
        """``set(value)`` unless the version is already at least ``value``."""
        if value > self._value:
            self.set(value)

    def on_change(self, listener: Callable[[int], None]) -> Callable[[], None]:
        """Call ``listener(value)`` after every ``set``; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def __repr__(self) -> str:
        return f"PolicyVersion({self._value})"
