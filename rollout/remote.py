"""The learner's client for rollout servers (``python -m eigen_apps.rollout_server``): scored episodes by URL.

Each episode goes to the live server with the fewest episodes in flight. A server that fails
(connection refused or reset, timeout, 5xx) is set aside for ``cooldown_s`` and the episode is
rerun on another one: a server dying mid-episode costs that episode's work, not the run. The run
fails only when no server answers for ``max_attempts`` tries. Before a server gets its first
episode, and again before it gets one after any failure, its ``/health`` must answer (and name
the learner's episode settings): a server that was restarted rejoins the rotation only healthy
and configured as the learner is.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from eigen_core.contracts import Task, Trajectory
from eigen_core.routes import RouteLayout
from rollout.http_engine import EngineError
from rollout.version import PolicyVersion


class RemoteEpisodes:
    """``run(task, seed, group_id, sample_index) -> Trajectory`` over several rollout servers.

    Args:
        urls: rollout server base URLs.
        temperature: the policy's sampling temperature (sent with every episode).
        timeout_s: longest episode before the server counts as failed.
        cooldown_s: how long a failed server is skipped.
        max_attempts: tries per episode (each on the best live server).
        api_key: bearer token the servers require (``server.api_key_env`` on their side).
        settings: what decides the learner's episodes (``RolloutServer.settings``); a server
            whose own differ is refused at first contact with ``SettingsMismatch``.
        policy_version: the learner's ``PolicyVersion`` (the policy engine's weight sync writes it).
        routes: an MoE policy's layout under routing replay: episodes return with its routes.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        temperature: float = 1.0,
        timeout_s: float = 1800.0,
        cooldown_s: float = 10.0,
        max_attempts: int = 4,
        api_key: str | None = None,
        settings: dict[str, Any] | None = None,
        policy_version: PolicyVersion | None = None,
        routes: RouteLayout | None = None,
    ):
        if not urls:
            raise ValueError("RemoteEpisodes needs at least one rollout server URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.temperature, self.timeout_s = temperature, timeout_s
        self.cooldown_s, self.max_attempts = cooldown_s, max_attempts
        self.in_flight = dict.fromkeys(self.urls, 0)
        self.down_until = dict.fromkeys(self.urls, 0.0)
        self.failures = dict.fromkeys(self.urls, 0)
        """Failed requests per server (episodes rerun elsewhere)."""
        self.policy_version = policy_version or PolicyVersion()
        """Read, never written here: sent with every episode (so a server that restarted or
        missed an announcement labels tokens no older than it) and by ``announce``."""
        self.settings = settings
        self.routes = routes
        """MoE policies under routing replay: the servers return every token's experts (read
        from the policy engine's answers in this layout) with the trajectory."""
        self._checked: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _pick(self) -> str | None:
        now = time.monotonic()
        live = [u for u in self.urls if self.down_until[u] <= now]
        return min(live, key=lambda u: self.in_flight[u]) if live else None

    async def run(self, task: Task, seed: int, group_id: str = "", sample_index: int = 0) -> Trajectory:
        body = {
            "task": task.model_dump(mode="json"),
            "seed": seed,
            "group_id": group_id,
            "sample_index": sample_index,
            "temperature": self.temperature,
            "version": self.policy_version.value,
        }
        if self.routes is not None:
            body["routes"] = self.routes.model_dump(mode="json")
        errors: list[str] = []
        for _ in range(self.max_attempts):
            url = self._pick()
            if url is None:  # every server is cooling down: wait for the first to come back
                await asyncio.sleep(max(0.1, min(self.down_until.values()) - time.monotonic()))
                url = self._pick() or self.urls[0]
            self.in_flight[url] += 1
            try:
                if url not in self._checked:
                    await self._check(url)
                timeout = aiohttp.ClientTimeout(total=self.timeout_s)
                async with self._client().post(url + "/episode", json=body, timeout=timeout) as resp:
                    text = await resp.text()
                    if resp.status == 200:
                        return Trajectory.model_validate_json(text)
                    if resp.status < 500 and resp.status != 429:
                        # our request is wrong: every other server will say the same
                        raise EngineError(f"{url}/episode: HTTP {resp.status}: {text[:500]}")
                    errors.append(f"{url}: HTTP {resp.status}: {text[:200]}")
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as e:
                errors.append(f"{url}: {type(e).__name__}: {e}")
            except SettingsMismatch:
                raise  # the server works; it runs the wrong episodes: no other try helps
            except ValueError as e:  # a truncated or garbled answer (pydantic's error is one too)
                errors.append(f"{url}: malformed answer: {str(e)[:200]}")
            finally:
                self.in_flight[url] -= 1
            self.failures[url] += 1
            self.down_until[url] = time.monotonic() + self.cooldown_s
            self._checked.discard(url)  # it may come back restarted: health and settings again
        raise EngineError(
            f"episode of task {task.id} failed on every attempt: {'; '.join(errors)}", transient=True
        )

    async def _check(self, url: str) -> None:
        """The server's ``/health`` answers; with ``settings``, refuse a server whose episodes
        would not be the learner's (a different domain or episode setting would train on
        episodes nobody configured)."""
        timeout = aiohttp.ClientTimeout(total=30)
        async with self._client().get(url + "/health", timeout=timeout) as resp:
            text = await resp.text()
        if resp.status != 200:
            raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message=text[:200])
        if self.settings is None:
            self._checked.add(url)
            return
        body = json.loads(text)  # a garbled answer: ValueError, a failure of this try
        theirs = body.get("settings") if isinstance(body, dict) else None
        if not isinstance(theirs, dict):
            raise ValueError(f"/health names no episode settings: {text[:200]}")
        diff = settings_diff(self.settings or {}, theirs)
        if diff:
            raise SettingsMismatch(
                f"rollout server {url} runs other episodes than this learner: {'; '.join(diff)}. "
                "Start it with the learner's domain and episode settings."
            )
        self._checked.add(url)

    async def announce(self) -> None:
        """Tell every server which policy version the agent engine serves from now on."""
        version = self.policy_version.value

        async def one(url: str) -> None:
            try:
                timeout = aiohttp.ClientTimeout(total=10)
                async with self._client().post(url + "/version", json={"version": version}, timeout=timeout):
                    pass
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                self.down_until[url] = time.monotonic() + self.cooldown_s
                self._checked.discard(url)

        await asyncio.gather(*(one(u) for u in self.urls))


class SettingsMismatch(ValueError):
    """A rollout server's episode settings differ from the learner's (never retried)."""


def settings_diff(ours: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list[str]:
    """``key (learner X, server Y)`` for every leaf where two settings trees differ."""
    out = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key, "<unset>"), theirs.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} (learner {a!r}, server {b!r})")
    return out
