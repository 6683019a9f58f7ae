import typing

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from eigen_apps.selfcheck import SelfcheckConfig
from eigen_core.configio import KNOWN_SECTIONS, ConfigError, Section, dump_config, load_config, parse_override
from eigen_jax.config import RunConfig
from synth.procedural.__main__ import ProceduralCommandConfig

GOOD = """\
run:
  name: t
procedural:
  num_tasks: 10
  max_actions: 2
pool:
  dir: somewhere
"""


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_load_and_override(tmp_path):
    cfg = load_config(RunConfig, _write(tmp_path, GOOD), ["procedural.seed=5", "verifier.components=[db]"])
    assert cfg.procedural.num_tasks == 10 and cfg.procedural.seed == 5
    assert cfg.verifier.components == ["db"]
    assert cfg.pool.dir == "somewhere" and cfg.episode.max_steps == 50


def test_typo_key_names_file_line_and_choices(tmp_path):
    p = _write(tmp_path, GOOD.replace("max_actions", "max_actoins"))
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, p)
    msg = str(e.value)
    assert f"{p}:5: procedural.max_actoins: unknown key" in msg
    assert "max_actions" in msg  # the valid choices are listed


def test_wrong_type_names_expected_type(tmp_path):
    p = _write(tmp_path, GOOD.replace("num_tasks: 10", "num_tasks: ten"))
    with pytest.raises(ConfigError, match=rf"{p}:4: procedural.num_tasks: expected int, got 'ten'"):
        load_config(RunConfig, p)
    p = _write(tmp_path, GOOD + "verifier:\n  components: [db, vibes]\n")
    with pytest.raises(ConfigError, match=r"verifier.components.1: expected 'db' \| 'outputs' \| 'checker'"):
        load_config(RunConfig, p)


def test_unknown_section_and_bad_override(tmp_path):
    p = _write(tmp_path, GOOD + "trainr:\n  lr: 1\n")
    with pytest.raises(ConfigError, match=rf"{p}:8: trainr: unknown key"):
        load_config(RunConfig, p)
    with pytest.raises(ConfigError, match=r"override 'pool.shard_size=abc': pool.shard_size: expected int"):
        load_config(RunConfig, _write(tmp_path, GOOD), ["pool.shard_size=abc"])
    with pytest.raises(ConfigError, match=r"expected key\.path=value"):
        parse_override("pool.dir")
    with pytest.raises(ConfigError, match=r"procedural\.max_actions is not a mapping"):
        load_config(RunConfig, _write(tmp_path, GOOD), ["procedural.max_actions.x=1"])


def test_cross_field_and_range_checks(tmp_path):
    with pytest.raises(ConfigError, match=r"min_actions .3. > max_actions .2."):
        load_config(RunConfig, _write(tmp_path, GOOD), ["procedural.min_actions=3"])
    with pytest.raises(ConfigError, match=r"procedural\.forbidden_prob: expected float"):
        load_config(RunConfig, _write(tmp_path, GOOD), ["procedural.forbidden_prob=1.5"])


def test_unknown_domain(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"override 'domain.name=nope': domain.name: 'nope': unknown domain; available: airline, "
        r"retail, shop, telecom",
    ):
        load_config(RunConfig, _write(tmp_path, GOOD), ["domain.name=nope"])


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml:2: invalid YAML"):
        load_config(RunConfig, _write(tmp_path, "run:\n\tname: t\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(RunConfig, tmp_path / "missing.yaml")


def test_commands_tolerate_each_others_sections_but_not_typos(tmp_path):
    p = _write(tmp_path, GOOD)
    assert load_config(SelfcheckConfig, p).episode.max_steps == 50
    assert load_config(ProceduralCommandConfig, p).procedural.num_tasks == 10
    with pytest.raises(ConfigError, match="procedual: unknown key"):
        load_config(ProceduralCommandConfig, _write(tmp_path, GOOD + "procedual: {}\n"))


def test_dump_round_trips(tmp_path):
    cfg = load_config(RunConfig, _write(tmp_path, GOOD), ["episode.max_steps=7"])
    again = load_config(RunConfig, _write(tmp_path, dump_config(cfg)))
    assert again == cfg


def test_known_sections_match_the_full_run_config():
    assert set(RunConfig.model_fields) == set(KNOWN_SECTIONS)


def _sections(model: type[BaseModel], seen: set) -> None:
    if model in seen:
        return
    seen.add(model)
    for field in model.model_fields.values():
        for tp in [field.annotation, *typing.get_args(field.annotation)]:
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                _sections(tp, seen)


def test_every_config_field_is_documented():
    seen: set = set()
    for root in _command_configs():
        _sections(root, seen)
    for model in seen:
        assert issubclass(model, Section), model
        if model is RunConfig:
            continue
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"


def test_shipped_configs_load():
    from pathlib import Path

    from eigen_apps.eval.config import EvalRunConfig
    from eigen_apps.rollout_server import RolloutServerConfig
    from synth.run import SynthRunConfig

    root = Path(__file__).parents[1] / "configs"
    for path in root.rglob("*.yaml"):
        model = (
            RolloutServerConfig
            if path.stem.endswith("rollout_server")
            else EvalRunConfig
            if path.stem.startswith("eval_")
            else SynthRunConfig
            if path.stem.startswith("synth_")
            else RunConfig
        )
        load_config(model, path)


def test_grpo_keys_that_moved_into_sub_sections_say_where():
    """One vocabulary: an old flat ``grpo`` key is refused with its new place, not accepted."""
    from eigen_jax.config import RunConfig

    with pytest.raises(ValidationError, match=r"max_staleness is now grpo\.episodes\.max_staleness"):
        RunConfig.model_validate({"grpo": {"max_staleness": 1}})
    with pytest.raises(ValidationError, match=r"rollout_servers is now grpo\.remote\.servers"):
        RunConfig.model_validate({"grpo": {"rollout_servers": ["http://x"]}})
    cfg = RunConfig.model_validate({"grpo": {"source": "toy", "toy": {"classes": 3}}})
    assert cfg.grpo.toy.classes == 3 and cfg.grpo.episodes.max_staleness == 2
    with pytest.raises(ValidationError, match=r"agent_url is now grpo\.remote\.agent\.url"):
        RunConfig.model_validate({"grpo": {"agent_url": "http://x"}})
    with pytest.raises(ValidationError, match=r"agent_url is now grpo\.remote\.agent\.url"):
        RunConfig.model_validate({"grpo": {"remote": {"agent_url": "http://x"}}})


def _command_configs() -> list[type[BaseModel]]:
    """The root config of every command that takes --config."""
    from eigen_apps.eval.config import EvalRunConfig
    from eigen_apps.rollout_server import RolloutServerConfig
    from eigen_jax.serve import ServeConfig
    from rollout.fault_proxy import ProxyConfig
    from synth.export_tau2 import ExportConfig
    from synth.importer import ImportCommandConfig
    from synth.run import SynthRunConfig
    from verifiers.tau2_parity import ParityConfig

    return [RunConfig, EvalRunConfig, SynthRunConfig, SelfcheckConfig, RolloutServerConfig, ServeConfig,
            ProceduralCommandConfig, ExportConfig, ParityConfig, ProxyConfig,
            ImportCommandConfig]  # fmt: skip


def _section_class(field) -> type:
    tps = [field.annotation, *typing.get_args(field.annotation)]
    return next(tp for tp in tps if isinstance(tp, type) and issubclass(tp, BaseModel))


def test_a_section_name_means_one_section_in_every_command():
    """One vocabulary: wherever two commands have a section of the same name, it is one section
    class or extensions of one (``run`` in train and eval, ``eval``, ``episode``, ``pool`` ...)."""
    by_name: dict[str, set[type]] = {}
    commands: dict[str, int] = {}
    for root in _command_configs():
        for name, field in root.model_fields.items():
            by_name.setdefault(name, set()).add(_section_class(field))
            commands[name] = commands.get(name, 0) + 1
    assert all(commands[n] >= 2 for n in ("run", "episode", "domain", "pool", "verifier", "eval"))
    for name, classes in by_name.items():
        for a in classes:
            for b in classes:
                # the same class, one extending the other, or both extending one shared section
                shared = set(a.__mro__) & set(b.__mro__) - set(Section.__mro__)
                assert shared, f"section {name!r}: {a.__name__} and {b.__name__} are unrelated"


def test_every_model_a_command_talks_to_is_one_endpoint_section():
    """No second endpoint class: every section with a ``url`` is ``EndpointSection``."""
    from eigen_core.config import EndpointSection

    seen: set = set()
    for root in _command_configs():
        _sections(root, seen)
    with_url = {m for m in seen if "url" in m.model_fields}
    assert with_url == {EndpointSection}


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ("synth", {"endpoints": {"planner": {"kind": "checkpoint", "checkpoint": "/x"}}}, None),
        ("server", {"agent": {"kind": "rules", "tokenizer": "/t"}}, "agent.kind: 'rules' is not possible"),
        ("train", {"grpo": {"remote": {"agent": {"kind": "checkpoint", "checkpoint": "/x"}}}},
         "grpo.remote.agent.kind: 'checkpoint' is not possible"),
    ],
)  # fmt: skip
def test_an_endpoint_kind_a_command_cannot_use_is_refused_by_name(model, data, message, tmp_path):
    import asyncio

    from eigen_apps.rollout_server import RolloutServer, RolloutServerConfig
    from synth.roles import open_roles
    from synth.run import SynthRunConfig

    if model == "train":
        with pytest.raises(ValidationError, match=message):
            RunConfig.model_validate(data)
    elif model == "server":
        with pytest.raises(ValueError, match=message):
            RolloutServer(RolloutServerConfig.model_validate(data), sandbox=None)  # type: ignore[arg-type]
    else:
        cfg = SynthRunConfig.model_validate(data)

        async def go():
            async with open_roles(cfg.endpoints, budget=None, needed=("planner",)):  # type: ignore[arg-type]
                pass

        with pytest.raises(ValueError, match=r"endpoints\.planner\.kind: 'checkpoint' is not possible"):
            asyncio.run(go())


def test_serve_flags_are_aliases_of_config_keys(tmp_path):
    """eigen_jax.serve takes --config like every command; its old flags set the same keys and win
    over the file (they apply after it)."""
    import subprocess
    import sys

    (tmp_path / "serve.yaml").write_text("server: {port: 8123}\nserved: {dir: /x, name: from-file}\n")
    out = subprocess.run(
        [sys.executable, "-m", "eigen_jax.serve", "--config", str(tmp_path / "serve.yaml"), "--print-config",
         "--served-model-name", "policy", "--empty-think", "--max-len", "512"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    cfg = yaml.safe_load(out.stdout)
    assert cfg["server"]["port"] == 8123 and cfg["served"]["dir"] == "/x"
    assert cfg["served"]["name"] == "policy" and cfg["served"]["empty_think"] is True
    assert cfg["served"]["max_len"] == 512
