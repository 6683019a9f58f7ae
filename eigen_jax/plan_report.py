"""What ``python -m eigen_jax.plan`` prints: the per-device table of a plan's report and advice
on what would make a step that does not fit fit (``eigen_jax.plan`` computes the reports)."""

from __future__ import annotations

from typing import Any


def advice(report: dict[str, Any]) -> list[str]:
    """The changes that would make a plan that does not fit fit (largest share first)."""
    b, hbm = report["bytes"], report["hbm_bytes"] or 1
    out = []
    if b["params"] + b["opt_state"] > 0.6 * hbm:
        out.append("more fsdp in model.mesh (parameters and optimiser state split over more devices)")
    if b["temp"] + b["batch"] > 0.3 * hbm or report.get("compiler_refused"):
        mesh = report.get("mesh", {})
        ways = mesh.get("data", 1) * mesh.get("fsdp", 1) * mesh.get("expert", 1)
        per_chip = report.get("rows", 0) // max(ways * report["micro_batches"], 1)
        if per_chip > 1 or "rows" not in report:
            out.append(
                f"more micro-batches (now {report['micro_batches']}: activations scale with rows per "
                "micro-batch)"
            )
        else:  # one row per chip per micro-batch already: split each row's activations instead
            out.append(
                "tensor parallelism (model.mesh [1, -1, 2] or more: each row's activations and "
                "attention heads split over several chips; a micro-batch already holds one row per chip)"
            )
        if report.get("attention", "dense") == "dense":
            out.append(
                "model.attention: splash (TPU) or blockwise (any backend): dense attention materializes "
                "[rows, heads, length, length] scores"
            )
        if not report.get("logits_chunk"):
            out.append("model.logits_chunk: 1024 (the LM head's [rows, length, vocab] logits in chunks)")
        if report.get("remat", "none") == "none":
            out.append("model.remat: full (recompute each block's activations in the backward pass)")
    return out or ["a larger slice (more devices)"]


def table(r: dict[str, Any]) -> str:
    """The report as the per-device table ``python -m eigen_jax.plan`` prints."""
    gib = 2**30
    b = r["bytes"]
    where = r["chip"] if r["chip"] == r["compiled_for"] else f"{r['chip']} (compiled for {r['compiled_for']})"
    head = f"plan: {r['stage']} on {r['devices']} x {where}, mesh {r['mesh']}, "
    if r["stage"] == "sample":
        head += f"{r['rows']} rows x ({r['prompt']} prompt + {r['new_tokens']} new) tokens"
    else:
        head += (
            f"{r['model_params'] / 1e6:.1f}M parameters, {r['rows']} rows x {r['length']} tokens per update, "
        )
        head += f"{r['micro_batches']} micro-batch(es), attention {r['attention']}, "
        head += f"LM-head chunk {r['logits_chunk'] or 'off'}, remat {r['remat']}"
        if r.get("moe"):
            head += f", experts: {r['moe']['kernel']} kernel, {r['moe']['dispatch']} dispatch"
    lines = [head, f"{'per device':<14}{'GiB':>10}"]
    for k, v in b.items():
        lines.append(f"{k:<14}{v / gib:>10.3f}")
    if r.get("compiler_refused"):
        lines.append(f"the compiler refused the step: {r['compiler_refused']}")
    if r["hbm_bytes"] is not None:
        lines.append(
            f"{'memory':<14}{r['hbm_bytes'] / gib:>10.3f}  ({'fits' if r['fits'] else 'DOES NOT FIT'})"
        )
    elif not r.get("compiler_refused"):
        lines.append("memory: not checked (this chip's memory is unknown; --chip NAME holds it against one)")
    if r["stage"] == "sample":
        lines.append(
            f"FLOPs per generated token (the last one, over the whole cache): {r['flops_per_token']:.3e}"
        )
        return "\n".join(lines)
    lines.append(f"model FLOPs per device per update: {r['flops_per_device']:.3e}")
    lines.append(f"  (XLA's cost analysis, each loop body once: {r['xla_flops_per_device']:.3e})")
    if r["step_s_at_peak"] is not None:
        lines.append(f"step time at the chip's peak (MFU 1): {r['step_s_at_peak']:.3g} s")
    return "\n".join(lines)
