"""Tasks from outside into the task pool: tau²-bench's own splits and the released AReaL-SEA RL
and SFT data (``run.stages: [import, ...]``, or ``python -m synth.importer --config X.yaml``).

*tau² splits* convert losslessly (``eigen_core.domains.tau2.from_tau2``) under tau²'s ids
(``airline:<id>``), so importing ``base`` after ``train`` adds only the tasks ``train`` lacked.

*AReaL RL rows* (``tau2_rl_train.jsonl``, format in REFERENCE.md) are tau² tasks whose
``evaluation_criteria`` is a JSON string and whose ``db_path`` names the DB file the task starts
from. Their ids are not unique, so a task's id is its domain, its source id and a digest of the
row's content (``airline:areal:<id>#<digest>``): two rows that differ are two tasks, a row
repeated is a duplicate (counted, stored once), and a rerun adds nothing. Each DB file is stored
once in the pool (``eigen_core.snapshots``) and each task references it by digest.

*AReaL SFT rows* (``tau2_sft_train.jsonl``) are assistant turns in their context: each becomes
a ``Dialogue`` (context + the answer, loss on the answer only) in the pool's dialogues
(``<pool.dir>/sft``, ``eigen_core.dialogues``); failed turns (``metadata.correct`` 0) are dropped
and counted unless ``keep_failed``, and an answer's ``thinking`` becomes a ``<think>`` block (or
is left out: ``thinking: drop``).

Nothing is dropped silently: a row that cannot become a task stops the import naming its file
and line (``imports.on_bad_row: error``) or is listed with its reason in the report (``skip``).
With ``imports.check_gold`` every task's gold actions are replayed on its start DB; the tasks
whose replay raises a tool error are kept (tau²'s own golds do this too) and listed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from eigen_core import snapshots
from eigen_core.config import PoolConfig
from eigen_core.configio import Section, add_config_args, config_from_args
from eigen_core.contracts import Dialogue, Provenance, Task
from eigen_core.dialogues import DialogueWriter, dialogue_root
from eigen_core.pool import PoolError, PoolWriter
from synth.config import ImportSection, ImportSource

TAU2_TASK_FIELDS = ("id", "description", "user_scenario", "ticket", "initial_state", "evaluation_criteria")
"""The fields of tau²'s ``Task``; an AReaL row's other fields (``db_path``...) ride in metadata."""
_DB_DOMAIN = re.compile(r"tau2_(airline|retail|telecom)_")
_POLICY_DOMAIN = re.compile(r"\b(airline|retail|telecom)\b", re.I)


class ImportFailure(ValueError):
    """A row that cannot be imported, with where it is (``file:line``)."""


@dataclass
class SourceReport:
    """What one source gave."""

    source: str
    rows: int = 0
    """Rows (tasks) read from the source."""
    imported: int = 0
    already_in_pool: int = 0
    duplicates: int = 0
    """Rows identical to an earlier row of the same import (stored once)."""
    skipped: list[dict[str, str]] = field(default_factory=list)
    """Rows that could not be imported (``on_bad_row: skip``): ``{"where", "reason"}`` each."""
    gold_errors: list[dict[str, str]] = field(default_factory=list)
    """Imported tasks whose gold replay raised: ``{"task", "action", "error"}`` (first per task)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows left out by the source's rules (not errors: failed SFT turns): reason -> count."""
    snapshots: dict[str, str] = field(default_factory=dict)
    """DB file -> the snapshot reference its tasks carry."""
    splits: dict[str, int] = field(default_factory=dict)


@dataclass
class ImportReport:
    sources: list[SourceReport] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        totals = {
            k: sum(getattr(s, k) for s in self.sources)
            for k in ("rows", "imported", "already_in_pool", "duplicates")
        }
        totals["skipped"] = sum(len(s.skipped) for s in self.sources)
        totals["gold_errors"] = sum(len(s.gold_errors) for s in self.sources)
        totals["dropped"] = sum(sum(s.dropped.values()) for s in self.sources)
        return {**totals, "seconds": round(self.seconds, 3), "sources": [asdict(s) for s in self.sources]}


def _tau2_rows(src: ImportSource) -> Iterator[tuple[str, Task | Exception]]:
    from eigen_core.domains.tau2 import load_tasks

    split = src.as_split or src.split
    for task in load_tasks(src.domain, src.split):
        yield (
            f"tau2 {src.domain}/{src.split} task {task.provenance.params['tau2_id']}",
            task.model_copy(update={"split": split}),
        )


@dataclass
class _Dropped:
    """A row left out by the source's rules (not an error): why."""

    reason: str


class _JsonlRows:
    """The records of a JSONL file, one per line (or why a line is not one)."""

    what = "JSONL"

    def __init__(self, src: ImportSource, report: SourceReport):
        self.src, self.report, self.path = src, report, Path(src.path)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        try:
            f = open(self.path, encoding="utf-8")
        except OSError as e:
            why = e.strerror or e
            raise ImportFailure(f"{self.path}: cannot read the {self.what} file ({why})") from None
        with f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{self.path}:{lineno}"
                try:
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError(f"a row is a JSON object, got {type(row).__name__}")
                    item = self._item(row, lineno)
                except (ValueError, TypeError, KeyError, AttributeError, OSError) as e:
                    yield where, e
                    continue
                if item is not None:
                    yield where, item

    def _item(self, row: dict[str, Any], lineno: int) -> Any:
        """The row's record, ``_Dropped``, or None for a row of another domain."""
        raise NotImplementedError


class _ArealRows(_JsonlRows):
    """The tasks of an AReaL RL file."""

    what = "AReaL RL"

    def __init__(self, src: ImportSource, writer: PoolWriter, report: SourceReport):
        super().__init__(src, report)
        self.writer = writer
        self.db_dir = Path(src.database_dir) if src.database_dir else self.path.parent / "tau2_rl_database"
        self._refs: dict[str, str] = {}  # db_path -> snapshot reference

    def _item(self, row: dict[str, Any], lineno: int) -> Task | None:
        return self._task(row, lineno)

    def _task(self, row: Any, lineno: int) -> Task | None:
        from eigen_core.domains.tau2 import from_tau2

        domain = self._domain(row)
        if self.src.domain is not None and domain != self.src.domain:
            return None  # another domain's row: not this source's
        if "db_path" not in row:
            raise ValueError("no 'db_path' (the DB file the task starts from)")
        raw = {k: row[k] for k in TAU2_TASK_FIELDS if k in row}
        if isinstance(raw.get("evaluation_criteria"), str):
            try:
                raw["evaluation_criteria"] = json.loads(raw["evaluation_criteria"])
            except json.JSONDecodeError as e:
                raise ValueError(f"evaluation_criteria is not valid JSON ({e.msg} at char {e.pos})") from None
        task = from_tau2(raw, domain, self.src.as_split or "train")
        digest = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:12]
        extra = {k: v for k, v in row.items() if k not in TAU2_TASK_FIELDS}
        return task.model_copy(
            update={
                "id": f"{domain}:areal:{row.get('id', '')}#{digest}",
                "initial_state": task.initial_state.model_copy(
                    update={"reference": self._ref(row["db_path"], domain)}
                ),
                "metadata": {**task.metadata, "areal": extra},
                "provenance": Provenance(
                    generator="areal-tau2-data",
                    params={"source_id": row.get("id"), "file": self.path.name, "line": lineno},
                ),
            }
        )

    @staticmethod
    def _domain(row: dict[str, Any]) -> str:
        from eigen_core.domains.tau2 import DOMAINS

        if (m := _DB_DOMAIN.search(str(row.get("db_path", "")))) is not None:
            return m.group(1)
        ins = (row.get("user_scenario") or {}).get("instructions")
        if isinstance(ins, dict) and ins.get("domain") in DOMAINS:
            return ins["domain"]
        raise ValueError(
            f"cannot tell the row's domain (db_path {row.get('db_path')!r}, no instructions.domain)"
        )

    def _ref(self, db_path: str, domain: str) -> str:
        """The snapshot reference of a row's DB file, storing the file in the pool once."""
        from eigen_core.domains.tau2 import tau2_domain

        if db_path not in self._refs:
            p = Path(db_path)
            found = [c for c in (p, self.path.parent / p, self.db_dir / p.name) if c.is_file()]
            if not found:
                raise ValueError(
                    f"db_path {db_path!r}: no such file (looked in {self.db_dir} and {self.path.parent})"
                )
            fmt = found[0].suffix.lstrip(".").replace("yml", "yaml")
            ref = snapshots.put(self.writer.store, found[0].read_bytes(), fmt)
            tau2_domain(domain).snapshot_db(ref)  # parses as the domain's DB, or the row fails here
            self._refs[db_path] = self.report.snapshots[db_path] = ref
        return self._refs[db_path]


class _ArealSFTRows(_JsonlRows):
    """The dialogues of an AReaL SFT file: one assistant turn (``answer``) in its context
    (``messages``) per row; the loss goes on the answer only (``learn: last``)."""

    what = "AReaL SFT"

    def _item(self, row: dict[str, Any], lineno: int) -> Dialogue | _Dropped | None:
        from rollout.openai_format import from_openai

        meta, answer = row.get("metadata") or {}, row.get("answer")
        if not isinstance(row.get("messages"), list) or not isinstance(answer, dict):
            raise ValueError("an SFT row has 'messages' (a list) and 'answer' (an object)")
        context = [from_openai(m, f"messages[{i}]") for i, m in enumerate(row["messages"])]
        domain = self._domain(meta, context)
        if self.src.domain is not None and domain != self.src.domain:
            return None
        if not self.src.keep_failed and meta.get("correct") in (0, False):
            return _Dropped("failed turn (metadata.correct 0)")
        reply = from_openai({**answer, "role": answer.get("role", "assistant")}, "answer")
        if reply.role != "assistant":
            raise ValueError(f"answer.role is {reply.role!r}: an SFT row answers as the assistant")
        thinking = answer.get("thinking")
        if thinking and self.src.thinking == "keep":
            reply = reply.model_copy(
                update={"content": f"<think>\n{thinking}\n</think>\n\n{reply.content or ''}"}
            )
        dialog = str(meta.get("source_dialog_id", f"line{lineno}"))
        digest = hashlib.sha256(json.dumps(row, sort_keys=True).encode()).hexdigest()[:12]
        held_out = int(hashlib.sha256(dialog.encode()).hexdigest()[:8], 16) / 16**8 < self.src.test_fraction
        return Dialogue(
            id=f"{domain}:areal-sft:{dialog}:{meta.get('turn_index', '')}#{digest}",
            domain=domain,
            split="test" if held_out else (self.src.as_split or "train"),
            messages=[*context, reply],
            learn="last",
            metadata=meta,
            provenance=Provenance(
                generator="areal-tau2-data", params={"file": self.path.name, "line": lineno}
            ),
        )

    @staticmethod
    def _domain(meta: dict[str, Any], context: list[Any]) -> str:
        if meta.get("domain") in ("airline", "retail", "telecom"):
            return meta["domain"]
        system = next((m.content or "" for m in context if m.role == "system"), "")
        if (m := _POLICY_DOMAIN.search(system[:4000])) is not None:
            return m.group(1).lower()
        raise ValueError(
            "cannot tell the row's domain (no metadata.domain, no domain named in its system prompt)"
        )


def gold_error(task: Task) -> dict[str, str] | None:
    """The first gold action of ``task`` whose replay on its start DB raises, if any."""
    from eigen_core.domains.tau2 import tau2_domain

    env = tau2_domain(task.domain).make_env(task)
    for a in task.gold_actions:
        if (err := env.run_action(a)) is not None:
            return {"task": task.id, "action": a.name, "error": err[:300]}
    return None


def _source_name(src: ImportSource) -> str:
    if src.kind == "tau2":
        return f"tau2 {src.domain}/{src.split}"
    return f"{src.kind} {src.path}" + (f" ({src.domain})" if src.domain else "")


def _import_source(src: ImportSource, cfg: ImportSection, writer: PoolWriter, progress: bool) -> SourceReport:
    report = SourceReport(_source_name(src))
    rows: Iterator[tuple[str, Any]]
    if src.kind == "tau2":
        rows = _tau2_rows(src)
    elif src.kind == "areal_rl":
        rows = iter(_ArealRows(src, writer, report))
    else:
        rows = iter(_ArealSFTRows(src, report))
    seen: set[str] = set()
    for where, item in tqdm(rows, desc=f"import {report.source}", unit="row", disable=not progress):
        report.rows += 1
        try:
            if isinstance(item, Exception):
                raise item
            if isinstance(item, _Dropped):
                report.dropped[item.reason] = report.dropped.get(item.reason, 0) + 1
                continue
            if cfg.check_gold and isinstance(item, Task) and (err := gold_error(item)) is not None:
                report.gold_errors.append(err)
        except (ValueError, TypeError, KeyError, OSError) as e:
            if cfg.on_bad_row == "error":
                raise ImportFailure(f"{where}: {e}") from None
            report.skipped.append({"where": where, "reason": str(e)[:500]})
            continue
        if item.id in seen:
            report.duplicates += 1
        elif item.id in writer:
            report.already_in_pool += 1
        else:
            writer.add(item)
            report.imported += 1
            report.splits[item.split] = report.splits.get(item.split, 0) + 1
        seen.add(item.id)
        if src.limit is not None and report.rows >= src.limit:
            break
    return report


def import_to_pool(cfg: ImportSection, pool: PoolConfig, *, progress: bool = True) -> ImportReport:
    """Import every source of ``cfg`` into the pool at ``pool.dir`` (SFT rows: into its
    dialogues, ``<pool.dir>/sft``), in order."""
    if not cfg.sources:
        raise ValueError(
            "imports.sources is empty: list what to import (see configs/import_tau2_airline.yaml)"
        )
    report, t0 = ImportReport(), time.perf_counter()
    with contextlib.ExitStack() as stack:
        tasks = stack.enter_context(PoolWriter(pool.dir, pool.shard_size))
        snapshots.register(tasks.store)  # the gold check resolves the snapshots just stored
        dialogues: DialogueWriter | None = None
        for src in cfg.sources:
            if src.kind == "areal_sft" and dialogues is None:
                dialogues = stack.enter_context(DialogueWriter(dialogue_root(pool.dir), pool.shard_size))
            writer = dialogues if src.kind == "areal_sft" else tasks
            report.sources.append(_import_source(src, cfg, writer, progress))
    report.seconds = time.perf_counter() - t0
    return report


class ImportCommandConfig(Section):
    """The sections ``synth.importer`` reads."""

    imports: ImportSection = ImportSection()
    """What to import and how strictly."""
    pool: PoolConfig = PoolConfig()
    """The pool the tasks go to."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m synth.importer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    cfg = config_from_args(ImportCommandConfig, args)
    try:
        report = import_to_pool(cfg.imports, cfg.pool, progress=not args.no_progress)
    except (ValueError, PoolError) as e:  # ImportFailure names the file and line
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"pool": cfg.pool.dir, **report.as_dict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
