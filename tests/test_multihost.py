"""Multi-controller JAX on one CPU host: 2 processes x 4 CPU devices run the learner stages as
one program over one 8-device mesh, and must equal 1 process x 8 devices with the same global
batch; a process that dies ends the others with an error naming it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from eigen_jax.distributed import DistributedSection
from rollout.vllm_server import free_port

ROOT = Path(__file__).parents[1]
SFT = (
    "run.stages=[generate,sft_agent]",
    "procedural.num_tasks=40",
    "sft_agent.steps=4",
    "sft_agent.batch_size=8",
    "sft_agent.max_len=512",
    "sft_agent.eval_every=2",
    "sft_agent.eval_batches=1",
    "checkpoint.every=2",
    "model.mesh=[1,-1,1]",
)
TOY = (
    "run.stages=[generate,grpo]",
    "procedural.num_tasks=20",
    "model.arch.head_dim=16",
    "grpo.source=toy",
    "grpo.steps=3",
    "grpo.tasks_per_step=4",
    "grpo.group_size=4",
    "grpo.filter_groups=false",
    "checkpoint.every=2",
    "model.mesh=[1,-1,1]",
)


def _env(devices: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "TPU_"))}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _cmd(out: Path, overrides: tuple[str, ...], *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "eigen_jax.train", "--config", str(ROOT / "configs/quickstart.yaml"),
        f"run.out_dir={out}", f"pool.dir={out}/pool", "run.progress=false", *overrides, *extra,
    ]  # fmt: skip


def _launch(out: Path, overrides: tuple[str, ...], processes: int, *extra: str) -> list[subprocess.Popen]:
    """``processes`` train processes of one run (8 CPU devices in all), logs in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if processes == 1:
        log = open(out / "p0.log", "w")
        return [subprocess.Popen(_cmd(out, overrides, *extra), cwd=ROOT, env=_env(8), stdout=log, stderr=log)]
    port = free_port()
    procs = []
    for i in range(processes):
        dist = (f"distributed.coordinator_address=127.0.0.1:{port}", f"distributed.num_processes={processes}",
                f"distributed.process_id={i}")  # fmt: skip
        log = open(out / f"p{i}.log", "w")
        cmd = _cmd(out, overrides, *dist, *extra)
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(8 // processes), stdout=log, stderr=log))
    return procs


def _run(out: Path, overrides: tuple[str, ...], processes: int, *extra: str) -> None:
    procs = _launch(out, overrides, processes, *extra)
    codes = [p.wait(timeout=900) for p in procs]
    logs = "\n".join((out / f"p{i}.log").read_text()[-3000:] for i in range(processes))
    assert codes == [0] * processes, logs


def _metrics(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def _assert_same_run(a: Path, b: Path, stage: str) -> None:
    """Same losses and gradient norms at every step, same final weights. Tolerance: the two
    reduce the same numbers over 8 devices in a different order (across processes via gloo);
    Adam divides each gradient entry by its own scale, so an entry near zero carries that
    rounding into its update at up to the learning rate's size: 1e-5 absolute on the weights,
    30x below one step at the quickstart's GRPO learning rate (3e-4)."""
    ma, mb = _metrics(a / stage / "metrics.jsonl"), _metrics(b / stage / "metrics.jsonl")
    assert [m["step"] for m in ma] == [m["step"] for m in mb]
    for x, y in zip(ma, mb, strict=True):
        for key in ("loss", "grad_norm"):
            # abs 1e-6: an on-policy GRPO loss is -mean(ratio x advantage) with ratio 1, a sum of
            # O(1) terms cancelling to ~0, so reduction order alone moves it by ~1e-7
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6), (x["step"], key)
    wa, wb = load_file(a / stage / "hf/model.safetensors"), load_file(b / stage / "hf/model.safetensors")
    assert set(wa) == set(wb)
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=1e-5, atol=1e-5, err_msg=k)


@pytest.mark.slow
def test_sft_on_two_processes_equals_one_process_with_the_same_global_batch(tmp_path):
    _run(tmp_path / "one", SFT, 1)
    _run(tmp_path / "two", SFT, 2)
    _assert_same_run(tmp_path / "one", tmp_path / "two", "sft_agent")
    # process 0 alone wrote the run's files
    assert json.loads((tmp_path / "two/summary.json").read_text())["sft_agent"]["steps"] == 4
    assert "stage sft_agent" not in (tmp_path / "two/p1.log").read_text()


@pytest.mark.slow
def test_grpo_toy_on_two_processes_equals_one_and_resumes_exactly(tmp_path):
    _run(tmp_path / "one", TOY, 1)
    _run(tmp_path / "two", TOY, 2)
    _assert_same_run(tmp_path / "one", tmp_path / "two", "grpo")
    # a two-process run killed after its first checkpoint and resumed ends as the uninterrupted one
    out = tmp_path / "killed"
    procs = _launch(out, TOY, 2)
    ckpt = out / "grpo/checkpoints/2"
    deadline = time.monotonic() + 600
    while not ckpt.exists() and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.2)
    assert ckpt.exists(), (out / "p0.log").read_text()[-2000:]
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    _run(out, TOY, 2, "--resume")
    _assert_same_run(tmp_path / "one", out, "grpo")


@pytest.mark.slow
def test_a_dead_process_ends_the_others_with_an_error_naming_it(tmp_path):
    procs = _launch(tmp_path, SFT, 2, "sft_agent.steps=400", "distributed.heartbeat_timeout_s=5")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and "[sft_agent] step" not in (tmp_path / "p0.log").read_text():
        assert procs[0].poll() is None, (tmp_path / "p0.log").read_text()[-2000:]
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.monotonic()
    code = procs[0].wait(timeout=120)
    waited = time.monotonic() - t0
    log = (tmp_path / "p0.log").read_text()
    assert code != 0 and waited < 120  # heartbeat 5 s: bounded, not a hang
    assert "Task 1 heartbeat timeout" in log, log[-2000:]  # JAX's coordination service names it


def test_distributed_section_joins_only_when_asked_or_launched():
    d = DistributedSection()
    assert not d.wanted({}) and not d.wanted({"SLURM_NTASKS": "1", "TPU_WORKER_HOSTNAMES": "localhost"})
    assert d.wanted({"SLURM_NTASKS": "4"}) and d.wanted({"OMPI_COMM_WORLD_SIZE": "2"})
    assert d.wanted({"TPU_WORKER_HOSTNAMES": "w0,w1"})
    assert DistributedSection(coordinator_address="h:1", num_processes=2, process_id=1).wanted({})
    assert not DistributedSection(mode="off", coordinator_address="h:1").wanted({"SLURM_NTASKS": "4"})
    assert DistributedSection(mode="on").wanted({})
    with pytest.raises(ValueError, match="need coordinator_address"):
        DistributedSection(num_processes=2)
    with pytest.raises(ValueError, match="not below num_processes"):
        DistributedSection(coordinator_address="h:1", num_processes=2, process_id=2)


def test_stages_not_built_for_several_processes_are_refused_by_name():
    from eigen_jax.config import RunConfig
    from eigen_jax.train import multi_process_gaps

    cfg = RunConfig.model_validate({"run": {"stages": ["generate", "sft_agent", "grpo", "eval"]}})
    gaps = multi_process_gaps(cfg)
    assert len(gaps) == 2 and "grpo on episodes" in gaps[0] and "rollout servers" in gaps[0]
    assert "eval stage" in gaps[1]
    remote = cfg.model_copy(update={"grpo": cfg.grpo.model_copy(update={"remote": cfg.grpo.remote.model_copy(
        update={"servers": ["http://127.0.0.1:1"]})})})  # fmt: skip
    assert len(multi_process_gaps(remote)) == 1
    toy = RunConfig.model_validate({"run": {"stages": ["sft_agent", "grpo"]}, "grpo": {"source": "toy"}})
    assert multi_process_gaps(toy) == []


@pytest.mark.slow
def test_grpo_on_episodes_across_two_processes_through_rollout_servers(tmp_path):
    """Process 0 runs the controller and every episode (on two rollout servers, policy on
    ``eigen_jax.serve``) and shares each batch; both processes update one 8-device model and
    export it together once per update, which the engine reloads."""
    import urllib.request

    from rollout_topology import pool_and_agent, topology

    pool_and_agent(tmp_path)
    with topology(tmp_path, rate=0.0) as (_, ports):
        remote = (
            "run.stages=[grpo]", f"model.hf_dir={tmp_path / 'agent'}", f"model.tokenizer={tmp_path / 'tok'}",
            "model.mesh=[1,-1,1]", "episode.user=scripted", "episode.turn_tokens=16", "episode.max_steps=3",
            "episode.max_len=1024", "episode.prompt=full", "grpo.steps=3", "grpo.tasks_per_step=2",
            "grpo.group_size=4", "grpo.filter_groups=false", "checkpoint.every=2",
            "grpo.episodes.deterministic=false", "grpo.heldout.every=null",  # remote engines: no lockstep
            f"grpo.remote.servers=[http://127.0.0.1:{ports['f1']},http://127.0.0.1:{ports['f2']}]",
            f"grpo.remote.agent.url=http://127.0.0.1:{ports['fe']}", "grpo.remote.agent.model=agent",
        )  # fmt: skip
        out = tmp_path / "two"
        _run(out, remote, 2, f"pool.dir={tmp_path}/run/pool")
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ports['r1']}/health").read())
        assert health["episodes"] > 0 and health["version"] == 3  # one sync per update, announced
    rows = _metrics(out / "grpo/metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    assert all(len(r["groups"]) == 2 for r in rows)
    sessions = [x for x in (out / "grpo/groups.jsonl").read_text().splitlines() if '"session"' in x]
    assert len(sessions) == 1  # process 0 alone ran (and recorded) the rollouts
    assert sorted(p.name for p in (out / "grpo/served_weights").iterdir()) == ["v2", "v3"]
    assert (out / "grpo/hf/model.safetensors").exists()
    assert "Traceback" not in (out / "p1.log").read_text()


LOAD_AND_EXPORT = """
import sys
import numpy as np
from safetensors.numpy import load_file
from eigen_jax.distributed import DistributedSection, initialize, is_primary, barrier
initialize(DistributedSection(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2])))
import jax
from eigen_jax.model.hf import load_hf, save_hf
from eigen_jax.model.sharding import make_mesh
model = load_hf(sys.argv[3], mesh=make_mesh([1, -1, 1]))
kernel = model.layers[0].mlp.gate_proj.kernel[...]
assert not kernel.is_fully_addressable and len(kernel.addressable_shards) == 4
save_hf(model, sys.argv[4])
barrier("exported")
if is_primary():
    a, b = load_file(sys.argv[3] + "/model.safetensors"), load_file(sys.argv[4] + "/model.safetensors")
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
open(sys.argv[4] + f".ok{jax.process_index()}", "w").close()  # reached the end (gloo also writes stdout)
"""


@pytest.mark.slow
def test_two_processes_load_their_shards_of_an_hf_checkpoint_and_export_it_whole(tmp_path):
    """Each process reads its devices' blocks of each tensor (the kernel is split over all 8
    devices, 4 of them this process's); the export gathers them and process 0 writes it: the
    same tensors, bit for bit."""
    from flax import nnx

    from eigen_jax.model import Decoder, DecoderConfig
    from eigen_jax.model.hf import save_hf
    from eigen_jax.train_config import TINY_ARCH

    save_hf(
        Decoder(DecoderConfig.from_hf({**TINY_ARCH, "vocab_size": 256}), rngs=nnx.Rngs(3)), tmp_path / "in"
    )
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                LOAD_AND_EXPORT,
                f"127.0.0.1:{port}",
                str(i),
                str(tmp_path / "in"),
                str(tmp_path / "out"),
            ],
            cwd=ROOT,
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert (tmp_path / "out.ok0").exists() and (tmp_path / "out.ok1").exists()
