"""``python -m eigen_jax.eval --config configs/eval_tau2_airline.yaml [key=value ...]``

A standalone pass^k eval: the agent and the user simulator are OpenAI-compatible chat endpoints
(vLLM, ``python -m eigen_jax.serve``, a hosted API) or local HF checkpoints, which this command
serves itself with the embedded engine on a free local port. See ``eigen_apps.eval.endpoints`` for
what it writes; an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from pathlib import Path

from eigen_apps.eval.config import EvalRunConfig
from eigen_core.config import EndpointSection
from eigen_core.configio import add_config_args, config_from_args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def serve_checkpoint(party: EndpointSection, what: str):
    """Serve ``party.checkpoint`` with ``eigen_jax.serve`` in this process; yields its URL."""
    from aiohttp import web

    from eigen_core.tokenizer import Tokenizer
    from eigen_jax.model.hf import load_hf
    from eigen_jax.sampler import Sampler
    from eigen_jax.serve import Server

    model_dir = Path(party.checkpoint)
    if not (model_dir / "config.json").exists():
        raise ValueError(f"{what}.checkpoint {model_dir}: no config.json (expected an HF model directory)")
    tok = Tokenizer.from_dir(party.tokenizer or model_dir)
    server = Server(Sampler(load_hf(model_dir), pad_id=tok.pad_id, max_len=party.max_len), tok, party.model)
    runner = web.AppRunner(server.app())
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"[eval] serving {what} {model_dir} on http://127.0.0.1:{port}", file=sys.stderr)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _main(cfg: EvalRunConfig) -> dict:
    from eigen_apps.eval.endpoints import evaluate

    async with contextlib.AsyncExitStack() as stack:
        urls: dict[str, str | None] = {"agent": None, "user": None}
        for what in ("agent", "user"):
            party = getattr(cfg, what)
            if party.kind == "checkpoint":
                urls[what] = await stack.enter_async_context(serve_checkpoint(party, what))
        return await evaluate(cfg, agent_url=urls["agent"], user_url=urls["user"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m eigen_jax.eval", description=__doc__.split("\n\n")[0])
    add_config_args(ap)
    args = ap.parse_args(argv)
    cfg = config_from_args(EvalRunConfig, args)
    report = asyncio.run(_main(cfg))
    print(f"[eval] results: {Path(cfg.run.out_dir) / 'results.json'}", file=sys.stderr)
    if report.get("tau2_cross_checked") is not None:
        print(f"[eval] tau² evaluator agreed on all {report['tau2_cross_checked']} trials", file=sys.stderr)


if __name__ == "__main__":
    main()
