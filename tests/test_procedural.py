from collections import Counter

from eigen_core.contracts import Action
from synth.config import ProceduralConfig
from synth.procedural.shop import generate_shop_task
from synth.validate import validate_task


def _writes(task, shop):
    return [a for a in task.gold_actions if a.name in shop.write_tools]


def test_seeded_and_independent_of_stream_length():
    a = ProceduralConfig(seed=3, num_tasks=5)
    b = ProceduralConfig(seed=3, num_tasks=500)
    assert [generate_shop_task(a, i) for i in range(5)] == [generate_shop_task(b, i) for i in range(5)]
    other = ProceduralConfig(seed=4)
    assert generate_shop_task(a, 0).scenario != generate_shop_task(other, 0).scenario
    assert generate_shop_task(a, 0).id != generate_shop_task(other, 0).id


def test_task_shape(shop_tasks, shop):
    for t in shop_tasks:
        cid = t.scenario.known_info["customer id"]
        assert cid not in t.scenario.reason_for_call  # only the user holds it, and gives it when asked
        assert t.gold_actions[0] == Action(name="get_customer", arguments={"customer_id": cid})
        assert len(t.required_outputs) == len(_writes(t, shop))
        assert t.checker and "def check(initial_db, final_db, messages)" in t.checker
        for a in _writes(t, shop) + t.forbidden_actions:
            assert a.arguments["order_id"] in t.scenario.reason_for_call
    assert {t.split for t in shop_tasks} == {"train", "test"}


def test_difficulty_knobs(shop):
    def stats(**kw):
        cfg = ProceduralConfig(seed=1, **kw)
        tasks = [generate_shop_task(cfg, i) for i in range(60)]
        n_req = [len(_writes(t, shop)) + len(t.forbidden_actions) for t in tasks]
        return tasks, n_req

    tasks, n_req = stats(min_actions=2, max_actions=4)
    assert min(n_req) == 2 and max(n_req) == 4
    tasks, _ = stats(forbidden_prob=0.0)
    assert all(not t.forbidden_actions for t in tasks)
    tasks, _ = stats(forbidden_prob=1.0)
    assert all(not _writes(t, shop) for t in tasks)
    tasks, _ = stats(distractor_customers=5, orders_per_customer=4)
    assert all(len(t.initial_state.data["customers"]) == 6 for t in tasks)
    assert all(len(t.initial_state.data["orders"]) >= 24 for t in tasks)
    kinds = Counter(
        k.split(":")[1] for t in stats(forbidden_prob=0.5)[0] for k in t.provenance.params["requests"]
    )
    assert kinds["owner"] > 0 and kinds["status"] > 0 and kinds["valid"] > 0
    tasks, _ = stats(distractor_customers=0, forbidden_prob=1.0)
    assert all("owner" not in "".join(t.provenance.params["requests"]) for t in tasks)


def test_generated_tasks_validate(shop_tasks, shop, sandbox):
    for t in shop_tasks:
        assert validate_task(t, shop, sandbox) == [], t.id


def test_validation_rejects_broken_tasks(shop_tasks, shop, sandbox):
    task = next(t for t in shop_tasks if _writes(t, shop) and t.forbidden_actions)
    always_true = task.model_copy(update={"checker": "def check(a, b, c):\n    return True\n"})
    (reason,) = validate_task(always_true, shop, sandbox)
    assert reason.startswith("checker passes all")
    for near_miss in ("gold minus its last write", "gold plus forbidden", "doing nothing", "never said"):
        assert near_miss in reason

    always_false = task.model_copy(update={"checker": "def check(a, b, c):\n    return False\n"})
    assert any(
        r.startswith("checker fails the gold outcome") for r in validate_task(always_false, shop, sandbox)
    )

    no_checker = task.model_copy(update={"checker": None})
    assert validate_task(no_checker, shop, sandbox) == ["task has no checker"]

    bad_gold = task.model_copy(
        update={"gold_actions": [*task.gold_actions, Action(name="get_order", arguments={})]}
    )
    assert validate_task(bad_gold, shop, sandbox)[0].startswith("gold action failed: get_order")

    # A forbidden action that changes nothing cannot be told apart from gold by the DB hash.
    read_only = task.model_copy(update={"forbidden_actions": [task.gold_actions[0]]})
    assert any(
        r.startswith("DB hash cannot tell gold plus forbidden get_customer")
        for r in validate_task(read_only, shop, sandbox)
    )


def test_id_digits_sets_id_lengths_and_the_default_is_unchanged():
    from synth.config import ProceduralConfig
    from synth.procedural.shop import generate_shop_task

    for digits, default in ((2, False), (4, True)):
        cfg = ProceduralConfig(id_digits=digits) if not default else ProceduralConfig()
        db = generate_shop_task(cfg, 3).initial_state.data
        assert {len(c) for c in db["customers"]} == {1 + digits}
        assert {len(o) for o in db["orders"]} == {2 + digits}
