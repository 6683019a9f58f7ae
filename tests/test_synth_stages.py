"""synth's pieces one by one: plans and overlap, JSON answers, grounding, task verification
(each rejection code), dedupe, budget, and each worker stage against the scripted endpoint."""

import asyncio

import pytest

from eigen_core.contracts import Action, Provenance, RewardInfo, Task, Termination, Trajectory
from eigen_core.domain import Tool
from eigen_core.domains.shop import ShopDomain
from eigen_core.domains.shop.tools import TOOLS, OrderArgs
from synth.config import EndpointsConfig
from synth.context import domain_context, entity_ids, sample_db
from synth.dedupe import Deduper
from synth.llm import Budget, BudgetExhausted, MalformedOutput, MeteredEngine, RoleClient, extract_json
from synth.plans import (
    EvaluationPlan,
    FailureType,
    PlanPair,
    SynthesisPlan,
    overlap,
    seed_plans,
    select_distinct,
)
from synth.prompts import Verdict
from synth.reflection import LLMStrategy, PlanningError
from synth.roles import open_roles
from synth.scripted import ScriptedBehaviour
from synth.synthesis import TaskDraft, draft_to_task, ground, schema_errors
from synth.validate import check_task
from synth.worker import WorkerEnv, llm_synthesizer, rule_verdict, run_attempt
from verifiers.reward import Verifier


def _plan(style="terse", patterns=(("get_customer", "cancel_order"),), tier="easy", pid="p0"):
    return PlanPair(
        id=pid,
        synthesis=SynthesisPlan(complexity=tier, tool_patterns=[list(p) for p in patterns], user_style=style),
        evaluation=EvaluationPlan(rubric=["valid"]),
    )


@pytest.fixture(scope="module")
def ctx():
    return domain_context("shop", world_customers=24)


def test_overlap_is_one_for_equal_plans_and_low_for_distinct_ones():
    a = _plan().synthesis
    b = _plan(style="chatty confused", patterns=(("return_order",),), tier="hard").synthesis
    assert overlap(a, a) == 1.0
    assert overlap(a, b) < 0.2
    chosen, rejected = select_distinct([a, b, a], threshold=0.6)
    assert chosen == [0, 1] and rejected == [(2, 0, 1.0)]
    chosen, rejected = select_distinct([a], threshold=0.6, keep=[a])
    assert chosen == [] and rejected[0][1] == "kept:0"


def test_plan_documents_are_validated():
    with pytest.raises(ValueError, match="tool pattern"):
        SynthesisPlan(complexity="easy", tool_patterns=[[]], user_style="x")
    with pytest.raises(ValueError, match="unique"):
        EvaluationPlan(rubric=["r"], failure_taxonomy=[FailureType(tag="a", fault="task")] * 2)
    with pytest.raises(ValueError):
        SynthesisPlan(complexity="extreme", tool_patterns=[["a"]], user_style="x")


class _FailingPlanner:
    role = "planner"

    def __init__(self):
        self.calls = 0

    async def ask(self, *a, **k):
        self.calls += 1
        raise MalformedOutput("planner: answer no JSON object in the answer (after 2 tries)")


@pytest.mark.parametrize("domain", ["shop", "retail", "airline"])
def test_seed_plans_are_distinct_and_use_the_domains_tools(domain):
    c = domain_context(domain)
    plans = seed_plans(list(c.schemas()), 4, 0.6)
    assert len(plans) == 4 and len({p.id for p in plans}) == 4
    assert all(t in c.schemas() for p in plans for pat in p.synthesis.tool_patterns for t in pat)
    syn = [p.synthesis for p in plans]
    assert all(overlap(a, b) < 0.6 for i, a in enumerate(syn) for b in syn[i + 1 :])
    assert {p.synthesis.complexity for p in plans} == {"easy", "medium", "hard"}


def test_a_planner_that_writes_nothing_usable_gets_seed_plans_or_a_clear_error(ctx):
    planner = _FailingPlanner()
    strategy = LLMStrategy(ctx, planner, None, None, n_plans=3, overlap_threshold=0.6, db_sample=3)
    plans = asyncio.run(strategy.initial_plans())
    assert planner.calls == 3 and len(plans) == 3 and strategy.seeded == 3
    assert all("the planner wrote 0 of 3 usable plans" in p.rationale for p in plans)
    assert (
        strategy.notes()["errors"]
        == [str(MalformedOutput("planner: answer no JSON object in the answer (after 2 tries)"))] * 3
    )
    strict = LLMStrategy(
        ctx, _FailingPlanner(), None, None, n_plans=3, overlap_threshold=0.6, db_sample=3, fallback=False
    )
    with pytest.raises(PlanningError, match="no usable plan: planner: answer no JSON"):
        asyncio.run(strict.initial_plans())


class _CapturingEngine:
    role, model = "synthesizer", "m"

    def __init__(self, answers):
        self.answers, self.bodies = list(answers), []

    async def request(self, method, path, body):
        self.bodies.append(body)
        return {"choices": [{"message": {"role": "assistant", "content": self.answers.pop(0)}}]}


def test_role_client_re_asks_with_the_error_and_can_constrain_decoding_to_the_schema():
    eng = _CapturingEngine(['{"fault": "task"}', '```json\n{"fault": "task", "tag": "x"}\n```'])
    client = RoleClient(eng, json_retries=1, structured_output=True)
    verdict = asyncio.run(client.ask("sys", "user", Verdict, seed=3))
    assert verdict.tag == "x" and [b["seed"] for b in eng.bodies] == [30, 31]
    fmt = eng.bodies[0]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == Verdict.model_json_schema()
    assert "tag: Field required" in eng.bodies[1]["messages"][-1]["content"]
    plain = _CapturingEngine(["no json here"])
    with pytest.raises(MalformedOutput, match="no JSON object"):
        asyncio.run(RoleClient(plain, json_retries=0).ask("sys", "user", Verdict))
    assert "response_format" not in plain.bodies[0]


def test_extract_json_takes_fenced_or_bare_objects_and_names_what_is_wrong():
    assert extract_json('Sure:\n```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Here it is: {"a": {"b": 2}} hope that helps') == {"a": {"b": 2}}
    with pytest.raises(MalformedOutput, match="invalid JSON"):
        extract_json("{'a': 1}")
    with pytest.raises(MalformedOutput, match="no JSON object"):
        extract_json("no json here")


def test_schema_errors_name_each_problem(ctx):
    params = ctx.schemas()["cancel_order"]
    assert schema_errors({"order_id": "O1"}, params) == []
    errs = schema_errors({"order": "O1", "order_id": 5}, params)
    assert "unexpected argument 'order'" in errs
    assert any(e.startswith("argument 'order_id'") for e in errs)
    assert schema_errors({}, params) == ["missing argument 'order_id'"]
    assert schema_errors({"x": "b"}, {"properties": {"x": {"type": "string", "enum": ["a"]}}})[0].endswith(
        "['a']"
    )


def test_db_sample_keeps_referenced_records(ctx):
    sample = sample_db(ctx.db, per_table=2, seed=3)
    for o in sample["orders"].values():
        assert all(p in sample["products"] for p in o["product_ids"])
    for c in sample["customers"].values():
        assert all(o in sample["orders"] for o in c["order_ids"])
    assert entity_ids(sample) <= ctx.ids


def _draft(ctx, **over) -> TaskDraft:
    order = next(o for o in ctx.db["orders"].values() if o["status"] == "pending")
    cid, oid = order["customer_id"], order["order_id"]
    total = sum(ctx.db["products"][p]["price_cents"] for p in order["product_ids"])
    refund = f"{total // 100}.{total % 100:02d}"
    checker = (
        f"def check(i, f, m):\n"
        f"    if f['orders'][{oid!r}]['status'] != 'cancelled':\n        return False, 'not cancelled'\n"
        f"    said = ' '.join(x.get('content') or '' for x in m if x['role'] == 'assistant')\n"
        f"    return ({refund!r} in said.replace(',', ''), 'refund')\n"
    )
    data = {
        "scenario": {"reason_for_call": f"Cancel {oid}", "known_info": {"customer id": cid}},
        "gold_actions": [
            {"name": "get_order", "arguments": {"order_id": oid}},
            {"name": "cancel_order", "arguments": {"order_id": oid}},
        ],
        "required_outputs": [refund],
        "checker": checker,
        **over,
    }
    return TaskDraft.model_validate(data)


def _task(ctx, draft, tid="t0") -> Task:
    return draft_to_task(draft, ctx, tid, Provenance(generator="test"))


def test_grounding_rejects_unknown_tools_bad_arguments_and_invented_ids(ctx):
    assert ground(_draft(ctx), ctx) == []
    bad = _draft(
        ctx,
        gold_actions=[
            {"name": "refund_everything", "arguments": {}},
            {"name": "cancel_order", "arguments": {"order": "O1"}},
            {"name": "get_order", "arguments": {"order_id": "O00000"}},
        ],
    )
    codes = [r.code for r in ground(bad, ctx)]
    assert codes.count("unknown_tool") == 1
    assert "invalid_arguments" in codes
    assert codes[-1] == "hallucinated_entity"


def test_task_verification_codes(ctx, sandbox):
    shop = ctx.domain
    good = _task(ctx, _draft(ctx))
    assert check_task(good, shop, sandbox) == []

    def codes(task, domain=shop):
        return {r.code for r in check_task(task, domain, sandbox)}

    always = good.model_copy(update={"checker": "def check(a, b, c):\n    return True\n"})
    assert codes(always) == {"checker_accepts_everything"}
    never = good.model_copy(update={"checker": "def check(a, b, c):\n    return False\n"})
    assert "checker_rejects_gold" in codes(never)
    broken = good.model_copy(update={"checker": "def check(a, b, c):\n    return 1 / 0\n"})
    assert "checker_rejects_gold" in codes(broken)
    status_only = good.model_copy(update={"checker": good.checker.replace("return (", "return (True or ")})
    assert codes(status_only) == {"checker_too_lenient"}
    assert codes(good.model_copy(update={"checker": None})) == {"checker_missing"}
    missing = good.model_copy(
        update={"gold_actions": [Action(name="get_order", arguments={"order_id": "nope"})]}
    )
    assert codes(missing) == {"gold_action_error"}
    read = good.model_copy(update={"forbidden_actions": [good.gold_actions[0]]})
    assert "ambiguous_outcome" in codes(read)
    noop = Tool("touch_order", "Does nothing.", OrderArgs, lambda db, a: "ok", writes=True)
    lazy = ShopDomain({**TOOLS, "touch_order": noop})
    touched = good.model_copy(
        update={
            "gold_actions": [
                *good.gold_actions[:1],
                Action(name="touch_order", arguments=good.gold_actions[0].arguments),
            ]
        }
    )
    assert "no_state_change" in codes(touched, lazy)


def test_deduper_finds_near_duplicates_only(ctx):
    a = _task(ctx, _draft(ctx), "a")
    same_but_a_word = a.model_copy(
        update={
            "id": "b",
            "scenario": a.scenario.model_copy(
                update={"reason_for_call": a.scenario.reason_for_call + " please"}
            ),
        }
    )
    other = next(
        o
        for o in ctx.db["orders"].values()
        if o["status"] == "pending" and o["order_id"] not in a.scenario.reason_for_call
    )
    different = _task(
        ctx,
        _draft(
            ctx,
            scenario={"reason_for_call": f"I want {other['order_id']} gone, thanks"},
            gold_actions=[{"name": "cancel_order", "arguments": {"order_id": other["order_id"]}}],
            required_outputs=[],
        ),
        "c",
    )
    d = Deduper(0.7)
    d.add(a)
    m = d.match(same_but_a_word)
    assert m is not None and m[0] == "a" and m[1] >= 0.7
    assert d.match(different) is None


def test_budget_refuses_calls_once_spent():
    b = Budget(max_calls=2)
    b.charge("synthesizer", 2, 10)
    eng = MeteredEngine("http://127.0.0.1:9", "m", role="planner", budget=b)
    with pytest.raises(BudgetExhausted, match="call budget spent"):
        asyncio.run(eng.request("POST", "/v1/chat/completions", {}))
    assert Budget(max_tokens=5, tokens={"x": 5}).exhausted().startswith("token budget")


def test_rule_verdict_tags_by_failed_component():
    traj = Trajectory(task_id="t", messages=[], termination=Termination.MAX_STEPS)
    assert rule_verdict(RewardInfo(reward=0), traj).tag == "episode_error"
    ok = traj.model_copy(update={"termination": Termination.USER_STOP})
    info = RewardInfo(reward=0, components={"db": 1.0, "outputs": 0.0}, reasons={"outputs": "never said"})
    v = rule_verdict(info, ok)
    assert (v.fault, v.tag) == ("trajectory", "missing_output")


def _scripted(**roles):
    cfg = {
        r: {"kind": "scripted", "timeout_s": 0.4, "max_retries": 1, "backoff_s": 0.01}
        for r in ("planner", "synthesizer", "judge", "user", "assistant", "reflector")
    }
    cfg.update(roles)
    return EndpointsConfig.model_validate(cfg)


async def _attempt(ctx, sandbox, behaviour, endpoints=None, dup=None, rollouts=1):
    budget = Budget()
    async with open_roles(endpoints or _scripted(), budget, behaviour=behaviour) as roles:
        env = WorkerEnv(
            ctx=ctx,
            synthesize=llm_synthesizer(roles.synthesizer, ctx, 6, 0),
            make_agent=roles.make_agent,
            make_user=roles.make_user,
            sandbox=sandbox,
            verifier=Verifier(ctx.domain, sandbox),
            judge=roles.judge,
            rollouts=rollouts,
            max_steps=20,
        )
        rec = await run_attempt(env, _plan(), 0, 3, "shop-t", lambda t: dup)
        return rec, budget, roles


@pytest.mark.parametrize(
    "fault, stage, code",
    [
        ("hallucinated_entity", "synthesis", "hallucinated_entity"),
        ("invalid_arguments", "synthesis", "invalid_arguments"),
        ("always_true_checker", "verification", "checker_accepts_everything"),
        ("malformed_json", "synthesis", "malformed_output"),
        ("timeout", "synthesis", "endpoint_error"),
        ("underspecified", "trajectory", "task_fault"),
    ],
)
def test_each_scripted_fault_is_rejected_with_its_code(ctx, sandbox, fault, stage, code):
    b = ScriptedBehaviour(faults=(fault,), fault_rate=1.0, hang_s=1.5, slip_rate=0.0)
    rec, budget, _ = asyncio.run(_attempt(ctx, sandbox, b))
    assert not rec.accepted
    assert (rec.stage, rec.reasons[0].code) == (stage, code), rec.reasons
    if fault == "malformed_json":  # asked once more with the error, then given up
        assert budget.calls["synthesizer"] == 2
    if fault == "underspecified":
        assert rec.rollout.verdicts[0].tag == "underspecified_scenario"


def test_an_agent_endpoint_down_in_the_rollout_rejects_the_attempt_not_the_task(ctx, sandbox):
    """The task synthesised and verified, then the rollout's assistant endpoint fails for good:
    the attempt is rejected as an endpoint error (run again on another attempt), not scored as a
    failed rollout (which would pass a verdict on the task)."""
    down = {"kind": "endpoint", "url": "http://127.0.0.1:9", "model": "m", "timeout_s": 0.5,
            "max_retries": 1, "backoff_s": 0.01}  # fmt: skip
    b = ScriptedBehaviour(faults=(), slip_rate=0.0)
    rec, _, _ = asyncio.run(_attempt(ctx, sandbox, b, endpoints=_scripted(assistant=down)))
    assert not rec.accepted and (rec.stage, rec.reasons[0].code) == ("trajectory", "endpoint_error")
    assert "127.0.0.1:9" in rec.reasons[0].detail and rec.rollout.rewards == []


def test_a_valid_task_is_accepted_with_its_rollout_and_a_slip_is_the_trajectorys_fault(ctx, sandbox):
    rec, budget, _ = asyncio.run(_attempt(ctx, sandbox, ScriptedBehaviour(faults=(), slip_rate=0.0)))
    assert rec.accepted and rec.task.id == "shop-t" and rec.rollout.rewards == [1.0]
    assert rec.task.provenance.plan_id == "p0" and rec.task.provenance.params["pass_rate"] == 1.0
    assert budget.calls["assistant"] > 0 and budget.calls["user"] > 0 and budget.total_tokens > 0
    rec, _, _ = asyncio.run(_attempt(ctx, sandbox, ScriptedBehaviour(faults=(), slip_rate=1.0), rollouts=2))
    assert rec.accepted and rec.rollout.rewards == [0.0, 0.0]
    assert [(v.fault, v.tag) for v in rec.rollout.verdicts] == [("trajectory", "missing_output")] * 2


def test_a_duplicate_is_dropped_before_its_rollout(ctx, sandbox):
    rec, budget, _ = asyncio.run(_attempt(ctx, sandbox, ScriptedBehaviour(faults=()), dup="similar to x"))
    assert (rec.stage, rec.reasons[0].code) == ("dedupe", "near_duplicate")
    assert budget.calls.get("assistant", 0) == 0


def test_slow_answers_are_retried_not_rejected(ctx, sandbox):
    b = ScriptedBehaviour(faults=(), slow_first_s=0.6, slip_rate=0.0)
    ep = _scripted(
        synthesizer={"kind": "scripted", "timeout_s": 0.4, "max_retries": 2, "backoff_s": 0.01},
        user={"kind": "rules"},
        assistant={"kind": "rules"},
    )
    rec, _, roles = asyncio.run(_attempt(ctx, sandbox, b, endpoints=ep))
    assert rec.accepted and roles.retries() >= 1


def test_schema_errors_check_nested_schemas():
    """tau²'s tools take nested arguments (lists of objects through ``$ref``): a passenger
    without a name, or an amount given as text, is refused by path. The hand-written check this
    replaced looked only at the top-level type and accepted both."""
    params = {
        "$defs": {
            "Passenger": {
                "type": "object",
                "properties": {"first_name": {"type": "string"}, "dob": {"type": "string"}},
                "required": ["first_name", "dob"],
            },
            "Payment": {
                "type": "object",
                "properties": {"payment_id": {"type": "string"}, "amount": {"type": "integer"}},
                "required": ["payment_id", "amount"],
            },
        },
        "type": "object",
        "properties": {
            "passengers": {"type": "array", "items": {"$ref": "#/$defs/Passenger"}},
            "payments": {"type": "array", "items": {"$ref": "#/$defs/Payment"}},
        },
        "required": ["passengers"],
    }
    good = {"passengers": [{"first_name": "Ada", "dob": "1990-01-01"}], "payments": []}
    assert schema_errors(good, params) == []
    bad = {"passengers": [{"dob": "1990-01-01"}], "payments": [{"payment_id": "p1", "amount": "ten"}]}
    errs = schema_errors(bad, params)
    assert any(e.startswith("argument 'passengers.0'") and "first_name" in e for e in errs), errs
    assert any(e.startswith("argument 'payments.0.amount'") for e in errs), errs


def test_schema_errors_on_a_real_tau2_schema():
    from eigen_core.domains import get_domain

    schemas = {
        s["function"]["name"]: s["function"]["parameters"] for s in get_domain("airline").tool_schemas()
    }
    params = schemas["book_reservation"]
    args = {k: "x" for k in params["required"]}
    args["passengers"] = ["Ada Lovelace"]  # a list, as the top level wants, but of strings
    errs = schema_errors(args, params)
    assert any(e.startswith("argument 'passengers.0'") for e in errs), errs
