"""Test helpers for HTTP: ``run_with(app, fn)`` awaits ``fn(base_url)`` against a running aiohttp
application; ``SeededSampler`` is a deterministic stand-in sampler (tests and tools/bench/faults.py)."""

import asyncio

from aiohttp.test_utils import TestServer


def run_with(app, fn):
    async def main():
        server = TestServer(app)
        await server.start_server()
        try:
            return await fn(str(server.make_url("")).rstrip("/"))
        finally:
            await server.close()

    return asyncio.run(main())


class SeededSampler:
    """Stands in for the sampler behind ``eigen_jax.serve``: the completion is a function of the
    prompt and the seed, so answers through faults can be compared with clean ones exactly."""

    max_len, version, prefix_cache = 4096, 0, None

    async def generate(self, prompt, sp):
        from rollout.engine import Generation

        ids = [(sum(prompt) * 7 + (sp.seed or 0) * 13 + k) % 200 + 3 for k in range(sp.max_new_tokens)]
        return Generation(tokens=ids, logprobs=[-0.25] * len(ids), finish_reason="length", version=0)
