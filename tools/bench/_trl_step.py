"""TRL peer for tools/bench/train_step.py; runs in TRL's own virtual environment.

    /tmp/trlenv/bin/python tools/bench/_trl_step.py SPEC.json

SPEC names the HF checkpoint, a batch file (.npz: prompt_ids, prompt_mask, completion_ids,
completion_mask, advantages, old_logp) and the repeat count. One step = TRL's own
``compute_loss`` (GRPOTrainer with loss_type "bnpo", i.e. token-mean over the batch, eps 0.4/0.4,
beta 0; SFTTrainer on the completion tokens) + backward + AdamW step, in fp32 on the CPU.
Prints ``RESULT {"grpo": seconds, "sft": seconds}`` (medians).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer


def median_step(step, repeats: int) -> float:
    step()  # warm-up
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def tokenizer() -> PreTrainedTokenizerFast:
    # The trainers want a processing class; the batch is already token ids, so any will do.
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<pad>")


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    torch.manual_seed(0)
    torch.set_num_threads(spec.get("threads", 2))
    b = {k: torch.from_numpy(v) for k, v in np.load(spec["batch"]).items()}
    out = tempfile.mkdtemp()
    data = Dataset.from_dict({"prompt": ["x"] * 8, "completion": ["y"] * 8})
    result = {}

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    args = GRPOConfig(
        output_dir=out,
        per_device_train_batch_size=len(b["advantages"]),
        num_generations=len(b["advantages"]),
        loss_type="bnpo",
        epsilon=0.4,
        epsilon_high=0.4,
        beta=0.0,
        report_to=[],
        use_cpu=True,
        max_completion_length=b["completion_ids"].shape[1],
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=data,
        processing_class=tokenizer(),
    )
    trainer.current_gradient_accumulation_steps = 1
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    inputs = {
        "prompt_ids": b["prompt_ids"].long(),
        "prompt_mask": b["prompt_mask"].long(),
        "completion_ids": b["completion_ids"].long(),
        "completion_mask": b["completion_mask"].long(),
        "advantages": b["advantages"].float(),
        "old_per_token_logps": b["old_logp"].float(),
    }

    def grpo_step():
        opt.zero_grad()
        trainer.compute_loss(model, dict(inputs)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    result["grpo"] = median_step(grpo_step, spec["repeats"])
    print("grpo", result["grpo"], flush=True)

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    sft = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=out, report_to=[], use_cpu=True, per_device_train_batch_size=8),
        train_dataset=data,
        processing_class=tokenizer(),
    )
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    labels = ids.masked_fill(attn == 0, -100)
    labels[:, : inputs["prompt_ids"].shape[1]] = -100  # completion-only loss

    def sft_step():
        opt.zero_grad()
        batch = {"input_ids": ids, "attention_mask": attn, "labels": labels}
        sft.compute_loss(model, batch).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    result["sft"] = median_step(sft_step, spec["repeats"])
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
