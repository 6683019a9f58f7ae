"""Files in the released AReaL-SEA data's format (REFERENCE.md), written from tau²'s own airline
tasks and DB: the dataset cannot be downloaded here.

``write_rl_fixture(dir)`` writes ``tau2_rl_train.jsonl`` and ``tau2_rl_database/`` with:

- a row on tau²'s own DB (``tau2_airline_db.json``, a byte copy);
- a row on a *snapshot* DB (``tau2_airline_new_db_1.json``) in which reservation NQNU5R is
  renamed ZZ9Q9Z, and the task (tau² airline 9) cancels ZZ9Q9Z: its gold actions succeed only
  on the snapshot;
- the same task on tau²'s own DB: same id, other content (a non-unique id), and there its gold
  cancel raises (no such reservation);
- an exact repeat of the first row (a duplicate);
- optionally (``bad=True``) a line that is not JSON and a row without ``db_path``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

OLD, NEW = "NQNU5R", "ZZ9Q9Z"


def _rl_row(task: Any, db_file: str) -> dict[str, Any]:
    raw = task.model_dump(mode="json")
    row = {k: raw[k] for k in ("id", "description", "user_scenario")}
    row["evaluation_criteria"] = json.dumps(raw["evaluation_criteria"])  # a JSON string, as released
    row["db_path"] = f"tau2_rl_database/{db_file}"
    return row


def _renamed(obj: Any) -> Any:
    return json.loads(json.dumps(obj).replace(OLD, NEW))


def write_rl_fixture(root: Path, *, bad: bool = False) -> Path:
    """Write the fixture under ``root``; returns the JSONL file."""
    from tau2.domains.airline.utils import AIRLINE_DB_PATH

    from eigen_core.domains.tau2._import import tau2_module

    registry = tau2_module("registry").registry
    tasks = {t.id: t for t in registry.get_tasks_loader("airline")("train")}
    db_dir = root / "tau2_rl_database"
    db_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(AIRLINE_DB_PATH, db_dir / "tau2_airline_db.json")
    db = json.loads(Path(AIRLINE_DB_PATH).read_text())
    res = db["reservations"].pop(OLD)
    db["reservations"][NEW] = {**res, "reservation_id": NEW}
    user = db["users"][res["user_id"]]
    user["reservations"] = [NEW if r == OLD else r for r in user["reservations"]]
    (db_dir / "tau2_airline_new_db_1.json").write_text(json.dumps(db))

    plain = _rl_row(tasks["1"], "tau2_airline_db.json")
    on_snapshot = _renamed(_rl_row(tasks["9"], "tau2_airline_db.json"))
    on_snapshot["db_path"] = "tau2_rl_database/tau2_airline_new_db_1.json"
    errs = _renamed(_rl_row(tasks["9"], "tau2_airline_db.json"))  # id "9" again, other content
    lines = [json.dumps(r) for r in (plain, on_snapshot, errs, plain)]
    if bad:
        lines += ["{not json", json.dumps({k: v for k, v in plain.items() if k != "db_path"})]
    out = root / "tau2_rl_train.jsonl"
    out.write_text("\n".join(lines) + "\n")
    return out


def write_sft_fixture(root: Path) -> Path:
    """``tau2_sft_train.jsonl`` as released: one row per assistant turn of a gold-replayed tau²
    airline dialogue (system prompt with the policy, the dialogue so far in OpenAI roles, tool
    messages included), the turn as ``answer``; the second turn carries ``thinking``, the third
    is marked failed (``correct: 0``), and a last line lacks its answer."""
    import asyncio

    from eigen_core.domains import get_domain
    from eigen_core.domains.tau2 import load_tasks
    from rollout.episode import run_episode
    from rollout.gold_replay import GoldScript, gold_parties
    from rollout.openai_format import to_openai

    task = next(t for t in load_tasks("airline", "train") if t.id == "airline:9")
    agent, user = gold_parties(GoldScript(task))
    traj = asyncio.run(run_episode(task, get_domain("airline"), agent, user, max_steps=200))
    system = {"role": "system", "content": get_domain("airline").policy}
    msgs = [to_openai(m) for m in traj.messages if m.role != "system"]
    rows = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        turn = len(rows)
        answer = {k: m[k] for k in ("role", "content", "tool_calls") if k in m}
        if turn == 1:
            answer["thinking"] = "The user wants a cancellation; look the reservation up first."
        meta = {"source_dialog_id": "dlg-9", "turn_index": turn, "reason_for_call": "cancel",
                "scenario_id": "s9", "correct": 0 if turn == 2 else 1, "reward": 1.0}  # fmt: skip
        rows.append({"messages": [system, *msgs[:i]], "answer": answer, "metadata": meta})
    lines = [json.dumps(r) for r in rows] + [json.dumps({"messages": [system], "metadata": {}})]
    out = root / "tau2_sft_train.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out
