"""The import stage: tau²'s splits and the AReaL-SEA RL rows into a task pool, DB snapshots
stored once and resolved by digest, bad rows named, tau²'s evaluator on the snapshot."""

import asyncio
import json

import pytest

from eigen_core import snapshots
from eigen_core.config import PoolConfig
from eigen_core.contracts import InitialState, Task, UserScenario
from eigen_core.domains import get_domain
from eigen_core.pool import TaskPool
from synth.config import ImportSection
from synth.importer import ImportFailure, import_to_pool, main
from tests.areal_fixtures import NEW, OLD, write_rl_fixture
from verifiers.reward import Verifier
from verifiers.tau2_parity import check_task


def _cfg(*sources, **kw):
    return ImportSection.model_validate({"sources": list(sources), **kw})


def _forget_snapshot_stores():
    """As in a fresh process: no pool opened yet (module state, reset for the test)."""
    snapshots._stores.clear()
    snapshots._read.cache_clear()


def test_tau2_splits_import_into_their_splits_and_a_rerun_adds_nothing(tmp_path):
    pool = PoolConfig(dir=str(tmp_path / "pool"))
    cfg = _cfg({"kind": "tau2", "domain": "airline", "split": "train"},
               {"kind": "tau2", "domain": "airline", "split": "test"})  # fmt: skip
    first = import_to_pool(cfg, pool, progress=False).as_dict()
    assert (first["rows"], first["imported"], first["skipped"]) == (50, 50, 0)
    assert TaskPool(pool.dir).splits() == {"train": 30, "test": 20}
    again = import_to_pool(_cfg({"kind": "tau2", "domain": "airline", "split": "base"}), pool, progress=False)
    assert (again.as_dict()["imported"], again.as_dict()["already_in_pool"]) == (0, 50)
    assert all(e["task"].startswith("airline:") for e in first["sources"][0]["gold_errors"])


def test_areal_rows_ids_duplicates_snapshots_and_gold_errors(tmp_path):
    rl = write_rl_fixture(tmp_path / "data")
    pool = PoolConfig(dir=str(tmp_path / "pool"))
    rep = import_to_pool(_cfg({"kind": "areal_rl", "path": str(rl)}), pool, progress=False).as_dict()
    assert (rep["rows"], rep["imported"], rep["duplicates"], rep["skipped"]) == (4, 3, 1, 0)
    src = rep["sources"][0]
    assert src["splits"] == {"train": 3}
    tasks = {t.provenance.params["line"]: t for t in TaskPool(pool.dir).tasks()}
    assert sorted(tasks) == [1, 2, 3]
    assert tasks[2].provenance.params["source_id"] == tasks[3].provenance.params["source_id"] == "9"
    assert len({t.id for t in tasks.values()}) == 3  # the id repeats, the tasks stay apart
    # two DB files, each stored once; the first and the third row share one
    stored = sorted((tmp_path / "pool" / "snapshots").iterdir())
    assert len(stored) == 2 == len(set(src["snapshots"].values()))
    assert (
        tasks[1].initial_state.reference
        == tasks[3].initial_state.reference
        != tasks[2].initial_state.reference
    )
    # the gold cancel of ZZ9Q9Z works on the snapshot and raises on tau²'s own DB
    assert [e["task"] for e in src["gold_errors"]] == [tasks[3].id]
    assert "cancel_reservation" == src["gold_errors"][0]["action"]
    d = get_domain("airline")
    on_snapshot = d.make_env(tasks[2]).state()["agent"]["reservations"]
    assert NEW in on_snapshot and OLD not in on_snapshot
    assert NEW not in d.make_env(tasks[3]).state()["agent"]["reservations"]
    rerun = import_to_pool(_cfg({"kind": "areal_rl", "path": str(rl)}), pool, progress=False).as_dict()
    assert (rerun["imported"], rerun["already_in_pool"], rerun["duplicates"]) == (0, 3, 1)
    assert sorted((tmp_path / "pool" / "snapshots").iterdir()) == stored


def test_a_snapshot_task_scores_as_tau2_scores_it_on_that_snapshot(tmp_path):
    """Our verifier and tau²'s evaluator agree on every variant of the snapshot task, and the
    near misses fail: were either scored on tau²'s own DB, the writes (of a reservation that DB
    lacks) would change nothing and dropping them would still pass."""
    rl = write_rl_fixture(tmp_path / "data")
    pool = PoolConfig(dir=str(tmp_path / "pool"))
    import_to_pool(_cfg({"kind": "areal_rl", "path": str(rl)}, check_gold=False), pool, progress=False)
    _forget_snapshot_stores()
    task = next(t for t in TaskPool(pool.dir).tasks() if t.provenance.params["line"] == 2)  # opens: registers
    d = get_domain("airline")
    results = asyncio.run(check_task(task, d, Verifier(d, components=("db", "outputs"))))
    assert [r.ours for r in results if r.variant == "gold"] == [1.0]
    assert all(r.agrees for r in results), [r for r in results if not r.agrees]
    assert next(r for r in results if r.variant == "drop_write").ours == 0.0
    assert d.pristine()


def test_bad_rows_stop_the_import_naming_file_and_line_or_are_listed(tmp_path):
    rl = write_rl_fixture(tmp_path / "data", bad=True)
    pool = PoolConfig(dir=str(tmp_path / "pool"))
    with pytest.raises(ImportFailure, match=rf"{rl}:5: .*Expecting property name"):
        import_to_pool(_cfg({"kind": "areal_rl", "path": str(rl)}), pool, progress=False)
    assert len(TaskPool(pool.dir)) == 3  # what came before the bad line is kept
    rep = import_to_pool(_cfg({"kind": "areal_rl", "path": str(rl)}, on_bad_row="skip"), pool, progress=False)
    skipped = rep.as_dict()["sources"][0]["skipped"]
    assert [s["where"] for s in skipped] == [f"{rl}:5", f"{rl}:6"]
    assert "no 'db_path'" in skipped[1]["reason"]


def test_a_missing_db_file_and_a_domain_filter(tmp_path):
    rl = write_rl_fixture(tmp_path / "data")
    (tmp_path / "data" / "tau2_rl_database" / "tau2_airline_new_db_1.json").unlink()
    pool = PoolConfig(dir=str(tmp_path / "pool"))
    with pytest.raises(
        ImportFailure, match=r":2: db_path 'tau2_rl_database/tau2_airline_new_db_1.json': no such file"
    ):
        import_to_pool(_cfg({"kind": "areal_rl", "path": str(rl)}), pool, progress=False)
    rep = import_to_pool(
        _cfg({"kind": "areal_rl", "path": str(rl), "domain": "retail"}), pool, progress=False
    )
    assert rep.as_dict()["rows"] == 0


def test_snapshot_references_unknown_or_corrupted_are_named(tmp_path):
    rl = write_rl_fixture(tmp_path / "data")
    pool = PoolConfig(dir=str(tmp_path / "pool"))
    import_to_pool(_cfg({"kind": "areal_rl", "path": str(rl)}, check_gold=False), pool, progress=False)
    _forget_snapshot_stores()
    ghost = Task(id="g", domain="airline", scenario=UserScenario(reason_for_call="x"),
                 initial_state=InitialState(reference="snapshot:" + "0" * 64 + ".json"))  # fmt: skip
    with pytest.raises(snapshots.SnapshotError, match="in no task pool this process opened"):
        get_domain("airline").make_env(ghost)
    with pytest.raises(snapshots.SnapshotError, match="malformed snapshot reference"):
        snapshots.read("snapshot:abc.json")
    f = sorted((tmp_path / "pool" / "snapshots").iterdir())[0]
    f.write_bytes(f.read_bytes()[:-2] + b" }")
    snapshots.register(pool.dir)
    with pytest.raises(snapshots.SnapshotError, match="sha256 does not match"):
        snapshots.read("snapshot:" + f.name)


def test_the_command_and_the_train_stage(tmp_path, capsys):
    from eigen_jax.train import main as train

    rl = write_rl_fixture(tmp_path / "data")
    cfg = tmp_path / "import.yaml"
    cfg.write_text(
        f"pool: {{dir: {tmp_path / 'pool'}}}\n"
        f"imports:\n  sources:\n    - {{kind: areal_rl, path: {rl}}}\n"
        "    - {kind: tau2, domain: airline, split: test, limit: 5}\n"
    )
    assert main(["--config", str(cfg), "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["imported"], [s["imported"] for s in out["sources"]]) == (8, [3, 5])
    run = tmp_path / "run"
    train(["--config", str(cfg), f"run.out_dir={run}", "run.stages=[import]", "run.progress=false"])
    assert (
        "import: 0 tasks imported of 9 rows (8 already in pool, 1 duplicates, 0 dropped"
        in capsys.readouterr().out
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["import"]["already_in_pool"] == 8 and "import" in summary["stage_seconds"]


def test_areal_sft_rows_become_dialogues_failed_turns_dropped_thinking_kept(tmp_path):
    from eigen_core.dialogues import DialoguePool, dialogue_root
    from tests.areal_fixtures import write_sft_fixture

    sft = write_sft_fixture(tmp_path / "data")
    pool = PoolConfig(dir=str(tmp_path / "pool"))
    src = {"kind": "areal_sft", "path": str(sft)}
    rep = import_to_pool(_cfg(src, on_bad_row="skip"), pool, progress=False).as_dict()
    assert (rep["rows"], rep["imported"], rep["dropped"], rep["skipped"]) == (4, 2, 1, 1)
    s = rep["sources"][0]
    assert s["dropped"] == {"failed turn (metadata.correct 0)": 1}
    assert s["skipped"][0]["where"] == f"{sft}:4" and "'answer'" in s["skipped"][0]["reason"]
    dialogues = sorted(DialoguePool(dialogue_root(pool.dir)).tasks(), key=lambda d: d.metadata["turn_index"])
    assert [d.metadata["turn_index"] for d in dialogues] == [0, 1]
    assert all(d.learn == "last" and d.domain == "airline" and d.split == "train" for d in dialogues)
    first, second = dialogues
    assert first.messages[-1].tool_calls[0].name == "cancel_reservation"
    assert any(m.role == "tool" for m in second.messages)  # the context keeps the tool traffic
    assert second.messages[-1].content.startswith("<think>\nThe user wants a cancellation")
    again = import_to_pool(_cfg(src, on_bad_row="skip"), pool, progress=False).as_dict()
    assert (again["imported"], again["already_in_pool"]) == (0, 2)
    with pytest.raises(ImportFailure, match=rf"{sft}:4: an SFT row has 'messages'"):
        import_to_pool(_cfg(src), pool, progress=False)


def test_areal_sft_options_keep_failed_drop_thinking_and_a_test_split(tmp_path):
    from eigen_core.dialogues import DialoguePool, dialogue_root
    from tests.areal_fixtures import write_sft_fixture

    sft = write_sft_fixture(tmp_path / "data")
    pool = PoolConfig(dir=str(tmp_path / "pool"))
    src = {
        "kind": "areal_sft",
        "path": str(sft),
        "keep_failed": True,
        "thinking": "drop",
        "test_fraction": 1.0,
    }
    rep = import_to_pool(_cfg(src, on_bad_row="skip"), pool, progress=False).as_dict()
    assert rep["imported"] == 3 and rep["sources"][0]["splits"] == {"test": 3}
    dialogues = list(DialoguePool(dialogue_root(pool.dir)).tasks())
    assert not any("<think>" in (d.messages[-1].content or "") for d in dialogues)
