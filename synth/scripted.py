"""A deterministic, scripted OpenAI-compatible chat endpoint that plays every synth role.

It exercises every path of the data engine without a model: the synthesizer writes valid,
grounded tasks, or (on a deterministic share of attempts) tasks with hallucinated entities,
invalid arguments, an always-true checker, an underspecified scenario, malformed JSON, or no
answer in time. Each fault mode has a guideline sentence (``GUIDELINES``); once a plan's worker
prompt carries it, that mode stops. The scripted reflector adds the guideline of the round's most
frequent rejection reason, so accepted-task yield rises over rounds exactly when the engine feeds
failures to reflection and reflection's rewrites to the workers: the mechanism is under test, not
a model. The scripted assistant is a rule-based shop agent that now and then forgets to state the
refund (a trajectory fault); the judge blames the task when the user could not answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from synth.prompts import parse_input
from synth.seeding import unit

FAULTS = (
    "hallucinated_entity",
    "invalid_arguments",
    "always_true_checker",
    "underspecified",
    "malformed_json",
    "timeout",
)
GUIDELINES = {
    "hallucinated_entity": "Copy entity ids verbatim from the DB sample; never invent one.",
    "invalid_arguments": "Pass exactly the arguments each tool's schema names.",
    "always_true_checker": "The checker must inspect final_db and return False when the goal is not reached.",
    "underspecified": "Give the user every fact the agent must ask for, in known_info.",
    "malformed_json": "Reply with the JSON object only: no prose around it.",
    "timeout": "Keep the task small enough to write quickly.",
}
FIXES = {
    "hallucinated_entity": "hallucinated_entity",
    "invalid_arguments": "invalid_arguments",
    "checker_accepts_everything": "always_true_checker",
    "task_fault": "underspecified",
    "malformed_output": "malformed_json",
    "endpoint_error": "timeout",
}
"""Rejection code -> the fault mode whose guideline removes it."""


@dataclass
class ScriptedBehaviour:
    fault_rate: float = 0.1
    """Share of synthesizer attempts per fault mode (while its guideline is absent)."""
    slip_rate: float = 0.2
    """Share of episodes where the scripted assistant forgets to state the refund."""
    hang_s: float = 5.0
    """How long a ``timeout`` attempt takes to answer (set above the client's timeout)."""
    slow_first_s: float = 0.0
    """If > 0, the first sight of every request is delayed this long (exercises retries)."""
    faults: tuple[str, ...] = FAULTS
    seen: set[str] = field(default_factory=set)


def _fault(b: ScriptedBehaviour, payload: dict[str, Any]) -> str | None:
    u = unit(payload["plan_id"], payload["version"], payload.get("round", 0), payload["attempt"])
    active = [m for m in b.faults if GUIDELINES[m] not in payload.get("guidelines", [])]
    for i, mode in enumerate(b.faults):
        if i * b.fault_rate <= u < (i + 1) * b.fault_rate:
            return mode if mode in active else None
    return None


def _cents(c: int) -> str:
    return f"{c // 100}.{c % 100:02d}"


_SHOP_CHECKER = """\
ORDER, STATUS, REFUND = {oid!r}, {status!r}, {refund!r}


def check(initial_db, final_db, messages):
    order = final_db["orders"].get(ORDER)
    if order is None or order["status"] != STATUS:
        return False, "order " + ORDER + " is not " + STATUS
    for oid, before in initial_db["orders"].items():
        if oid != ORDER and final_db["orders"][oid] != before:
            return False, "order " + oid + " changed"
    said = " ".join(m.get("content") or "" for m in messages if m["role"] == "assistant")
    if REFUND not in said.lower().replace(",", ""):
        return False, "the refund was never stated"
    return True, "ok"
"""

_TAU2_CHECKER = """\
TABLE, KEY, STATUS = {table!r}, {key!r}, {status!r}


def check(initial_db, final_db, messages):
    before, after = initial_db["agent"][TABLE], final_db["agent"][TABLE]
    if after.get(KEY, {{}}).get("status") != STATUS:
        return False, KEY + " is not " + STATUS
    for k, v in before.items():
        if k != KEY and after.get(k) != v:
            return False, k + " changed"
    return True, "ok"
"""


def _shop_task(payload: dict[str, Any], u: float) -> dict[str, Any]:
    db = payload["domain"]["db_sample"]
    patterns = [t for p in payload["synthesis_plan"]["tool_patterns"] for t in p]
    verb = "return" if "return_order" in patterns and "cancel_order" not in patterns else "cancel"
    want = {"cancel": "pending", "return": "delivered"}[verb]
    options = sorted(
        (o["customer_id"], oid)
        for oid, o in db["orders"].items()
        if o["status"] == want and o["customer_id"] in db["customers"]
    )
    if not options:  # none in the sample: a task whose gold write the tools refuse
        options = sorted(
            (o["customer_id"], oid) for oid, o in db["orders"].items() if o["customer_id"] in db["customers"]
        )
    cid, oid = options[int(u * len(options))]
    total = sum(
        db["products"][p]["price_cents"] for p in db["orders"][oid]["product_ids"] if p in db["products"]
    )
    refund = _cents(total)
    tool = f"{verb}_order"
    style = payload["synthesis_plan"]["user_style"]
    return {
        "scenario": {
            "persona": f"{db['customers'][cid]['name']}, a ShopCo customer.",
            "reason_for_call": f"({style}) I want to {verb} my order {oid}.",
            "known_info": {"customer id": cid},
            "task_instructions": "Give your customer id when asked.",
        },
        "gold_actions": [
            {"name": "get_customer", "arguments": {"customer_id": cid}},
            {"name": "get_order", "arguments": {"order_id": oid}},
            {"name": tool, "arguments": {"order_id": oid}},
        ],
        "required_outputs": [refund],
        "checker": _SHOP_CHECKER.format(
            oid=oid, status=f"{verb}ed" if verb == "return" else "cancelled", refund=refund
        ),
    }


def _tau2_task(payload: dict[str, Any], u: float) -> dict[str, Any]:
    name, db = payload["domain"]["name"], payload["domain"]["db_sample"]
    if name == "airline":
        table, status, read, write = (
            "reservations",
            "cancelled",
            "get_reservation_details",
            "cancel_reservation",
        )
        keys = sorted(k for k, r in db[table].items() if r.get("status") != "cancelled")
        arg, extra = "reservation_id", {}
    else:
        table, status, read, write = "orders", "cancelled", "get_order_details", "cancel_pending_order"
        keys = sorted(k for k, r in db[table].items() if r.get("status") == "pending")
        arg, extra = "order_id", {"reason": "no longer needed"}
    if not keys:  # none in the sample: a task whose gold write the tools refuse
        keys = sorted(db[table])
    key = keys[int(u * len(keys))]
    return {
        "scenario": {
            "reason_for_call": f"I want to cancel {key}.",
            "known_info": {arg.replace("_", " "): key},
            "task_instructions": "Confirm the cancellation when asked.",
        },
        "gold_actions": [
            {"name": read, "arguments": {arg: key}},
            {"name": write, "arguments": {arg: key, **extra}},
        ],
        "required_outputs": [],
        "checker": _TAU2_CHECKER.format(table=table, key=key, status=status),
    }


def synthesizer_answer(b: ScriptedBehaviour, payload: dict[str, Any]) -> tuple[str, float]:
    """(reply text, seconds to wait before answering)."""
    fault = _fault(b, payload)
    if fault == "timeout":
        return "{}", b.hang_s
    u = unit("pick", payload["plan_id"], payload.get("round", 0), payload["attempt"])
    task = _shop_task(payload, u) if payload["domain"]["name"] == "shop" else _tau2_task(payload, u)
    write = task["gold_actions"][-1]
    if fault == "hallucinated_entity":
        key = next(iter(write["arguments"]))
        write["arguments"][key] = "X" + str(int(u * 1e6))
    elif fault == "invalid_arguments":
        write["arguments"] = {"id": None, **{k + "_value": v for k, v in write["arguments"].items()}}
    elif fault == "always_true_checker":
        task["checker"] = "def check(initial_db, final_db, messages):\n    return True\n"
    elif fault == "underspecified":
        task["scenario"]["known_info"] = {}
    text = json.dumps(task)
    if fault == "malformed_json":
        text = "Here is the task: " + text.replace('"', "'", 7)
    return text, 0.0


def planner_answer(payload: dict[str, Any]) -> str:
    tools = [t["function"]["name"] for t in payload["domain"]["tools"]]
    writes = [
        t for t in tools if any(w in t for w in ("cancel", "return", "update", "book", "exchange", "modify"))
    ]
    styles = ["terse", "chatty", "confused", "impatient", "polite", "formal"]
    tiers = ["easy", "medium", "hard"]
    plans = []
    for i in range(payload["n"]):
        w = writes[i % len(writes)] if writes else tools[0]
        plans.append(
            {
                "id": f"p{i}",
                "synthesis": {
                    "complexity": tiers[i % 3],
                    "tool_patterns": [[tools[0], w]] if i % 2 == 0 else [[w]],
                    "user_style": styles[i % len(styles)] + f" customer {i}",
                    "target_entities": [f"{w} targets, group {i}"],
                },
                "evaluation": {
                    "rubric": ["the gold outcome follows the policy", "the user can answer every question"]
                },
                "rationale": f"stream {i}: {w} for a {styles[i % len(styles)]} user",
            }
        )
    return json.dumps({"plans": plans})


def reflector_answer(payload: dict[str, Any]) -> str:
    plan, stats = payload["plan"], payload["round_stats"]
    guidelines = list(plan["prompts"]["synthesizer"])
    todo = sorted(
        (
            (n, code)
            for code, n in stats.get("rejections", {}).items()
            if code in FIXES and GUIDELINES[FIXES[code]] not in guidelines
        ),
        key=lambda x: (-x[0], x[1]),
    )
    rationale = "no fixable rejections"
    if todo:
        n, code = todo[0]
        guidelines.append(GUIDELINES[FIXES[code]])
        rationale = f"{n} attempts rejected for {code}: added a guideline against it"
    return json.dumps(
        {
            "synthesis": plan["synthesis"],
            "evaluation": plan["evaluation"],
            "prompts": {**plan["prompts"], "synthesizer": guidelines},
            "rationale": rationale,
        }
    )


def judge_answer(payload: dict[str, Any]) -> str:
    conv = payload["conversation"]
    stuck = any(
        m["role"] == "assistant"
        and "?" in (m["content"] or "")
        and nxt["role"] == "user"
        and "###STOP###" in (nxt["content"] or "")
        for m, nxt in itertools.pairwise(conv)
    )
    if stuck and not payload["task"]["scenario"].get("known_info"):
        return json.dumps(
            {
                "fault": "task",
                "tag": "underspecified_scenario",
                "evidence": "the user could not answer the agent's question",
            }
        )
    failed = payload["failed_checks"]
    tag = "missing_output" if set(failed) <= {"outputs", "checker"} and "db" not in failed else "wrong_action"
    return json.dumps({"fault": "trajectory", "tag": tag, "evidence": "; ".join(failed.values())})


_ID = re.compile(r"\b([CO]\d{3,})\b")


def user_answer(messages: list[dict[str, Any]]) -> str:
    """The customer (it sees itself as ``assistant``, the agent as ``user``)."""
    system = messages[0]["content"] or ""
    reason = re.search(r"Why you are calling: (.*)", system)
    known = re.search(r"You know: (.*)", system)
    mine = [m for m in messages if m["role"] == "assistant"]
    if not mine:
        return reason.group(1) if reason else "Hello."
    last = messages[-1]["content"] or ""
    if "?" in last and known:
        facts = dict(kv.split(": ", 1) for kv in known.group(1).split("; ") if ": " in kv)
        said = [f"My {k} is {v}." for k, v in facts.items() if k.lower() in last.lower()]
        if said:
            return " ".join(said)
    return "Thanks, that's all. ###STOP###"


def assistant_answer(b: ScriptedBehaviour, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A rule-based ShopCo agent: authenticate, look up, act within the policy, report."""
    users = " ".join(m["content"] or "" for m in messages if m["role"] == "user")
    ids = _ID.findall(users)
    cid = next((i for i in ids if i.startswith("C")), None)
    orders = [i for i in ids if i.startswith("O")]
    verb = "return" if re.search(r"\breturn|send back", users.lower()) else "cancel"
    calls: dict[str, dict] = {}
    results: dict[str, Any] = {}
    for m in messages:
        for c in m.get("tool_calls") or []:
            calls[c["id"]] = c["function"]
        if m["role"] == "tool":
            fn = calls.get(m["tool_call_id"], {})
            try:
                results[
                    fn.get("name", "") + ":" + json.loads(fn.get("arguments") or "{}").get("order_id", "")
                ] = json.loads(m["content"])
            except (json.JSONDecodeError, AttributeError):
                results[fn.get("name", "") + ":?"] = m["content"]
    done_final = any(m["role"] == "assistant" and (m["content"] or "").startswith("Done") for m in messages)

    def call(name: str, args: dict[str, Any]) -> dict[str, Any]:
        n = sum(1 for m in messages if m.get("tool_calls"))
        fn = {"name": name, "arguments": json.dumps(args)}
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": f"call_{n}", "type": "function", "function": fn}],
        }

    if done_final:
        return {"role": "assistant", "content": "Goodbye!"}
    if cid is None:
        return {"role": "assistant", "content": "Could you please tell me your customer id?"}
    if "get_customer:" not in results:
        return call("get_customer", {"customer_id": cid})
    refunds = []
    for oid in orders:
        info = results.get(f"get_order:{oid}")
        if info is None:
            return call("get_order", {"order_id": oid})
        ok = (
            isinstance(info, dict)
            and info.get("customer_id") == cid
            and info.get("status") == ("pending" if verb == "cancel" else "delivered")
        )
        done = results.get(f"{verb}_order:{oid}")
        if ok and done is None:
            return call(f"{verb}_order", {"order_id": oid})
        if isinstance(done, dict) and "refund" in done:
            refunds.append(done["refund"])
    slip = unit("slip", users) < b.slip_rate
    text = "Done." + ("" if slip or not refunds else " Refund: " + ", ".join(refunds) + ".")
    return {"role": "assistant", "content": text}


class ScriptedEndpoint:
    """The scripted server. ``async with ScriptedEndpoint() as ep: ep.url``."""

    def __init__(self, behaviour: ScriptedBehaviour | None = None, host: str = "127.0.0.1", port: int = 0):
        self.behaviour = behaviour or ScriptedBehaviour()
        self.host, self.port = host, port
        self.requests: dict[str, int] = {}
        """Requests served per role."""
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        msgs = body["messages"]
        system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else ""
        m = re.match(r"ROLE: (\w+)", system or "")
        role = m.group(1) if m else ("assistant" if body.get("tools") else "user")
        if role == "assistant" and "customer talking to a support agent" in (system or ""):
            role = "user"
        self.requests[role] = self.requests.get(role, 0) + 1
        b = self.behaviour
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        if b.slow_first_s > 0 and key not in b.seen:
            b.seen.add(key)
            await asyncio.sleep(b.slow_first_s)
        delay = 0.0
        first_user = next((x["content"] for x in msgs if x["role"] == "user"), "") or ""
        if role == "planner":
            message = {"role": "assistant", "content": planner_answer(parse_input(first_user))}
        elif role == "synthesizer":
            text, delay = synthesizer_answer(b, parse_input(first_user))
            message = {"role": "assistant", "content": text}
        elif role == "reflector":
            message = {"role": "assistant", "content": reflector_answer(parse_input(first_user))}
        elif role == "judge":
            message = {"role": "assistant", "content": judge_answer(parse_input(first_user))}
        elif role == "user":
            message = {"role": "assistant", "content": user_answer(msgs)}
        else:
            message = assistant_answer(b, msgs)
        if delay:
            await asyncio.sleep(delay)
        prompt = len(json.dumps(msgs)) // 4
        completion = len(json.dumps(message)) // 4
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        choice = {
            "index": 0,
            "message": message,
            "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
        }
        return web.json_response(
            {
                "id": key[:16],
                "object": "chat.completion",
                "model": body.get("model"),
                "choices": [choice],
                "usage": usage,
            }
        )

    async def __aenter__(self) -> ScriptedEndpoint:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
