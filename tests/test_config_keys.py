"""Every config key is discoverable: a meaning next to its default, `--show_config`, the README table."""

from __future__ import annotations

import pytest

from openrs_jax.recipe import config as config_module
from openrs_jax.recipe.config import README_TABLE_END, README_TABLE_START, base_config, describe_keys, markdown_table
from openrs_jax.train import main as train_main
from tests.conftest import REPO_ROOT

TINY = str(REPO_ROOT / "configs" / "tiny.py")


def _flat(c):
    return [f"{section}.{key}" for section in c.keys() for key in c[section].keys()]


def test_every_key_has_a_meaning_and_a_section():
    rows = describe_keys()
    assert [r.key for r in rows if not r.meaning] == [], "give every key a meaning in SECTIONS"
    assert sorted(r.key for r in rows) == sorted(_flat(base_config()))
    assert sorted(base_config().keys()) == sorted(config_module.SECTIONS)
    by_key = {r.key: r for r in rows}
    # Keys a user could not find before (issue 21).
    for key in ("run.seed", "rewards.num_workers", "run.log_completions", "run.tensorboard"):
        section, name = key.split(".")
        assert by_key[key].meaning and by_key[key].default == base_config()[section][name]
    assert by_key["run.log_completions"].meaning.startswith("sample completions per step")
    assert by_key["rewards.funcs"].section.startswith("rewards: ")


def test_every_flat_key_has_a_new_home():
    """The old flat layout's keys (those a 0.x config file set) each name a declared sectioned key."""
    declared = {r.key for r in describe_keys()}
    assert set(config_module.FLAT_KEYS.values()) <= declared
    assert len(config_module.FLAT_KEYS) == len(declared) - len(base_config().mesh)  # mesh.* were nested already
    assert config_module.FLAT_KEYS["learning_rate"] == "grpo.learning_rate"
    assert config_module.FLAT_KEYS["model_path"] == "model.path"


def test_readme_key_table_is_generated_from_the_declarations():
    readme = (REPO_ROOT / "README.md").read_text()
    assert README_TABLE_START in readme and README_TABLE_END in readme
    table = readme.split(README_TABLE_START, 1)[1].split(README_TABLE_END, 1)[0].strip()
    assert table == markdown_table(), "README's key table is stale: run python -m openrs_jax.recipe.config --write_readme"
    for key in ("run.seed", "rewards.num_workers", "run.log_completions", "run.tensorboard", "mesh.fsdp"):
        assert f"| `{key}` |" in table


def test_write_readme_table_rewrites_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_TABLE_START}\n| old | table |\n{README_TABLE_END}\nafter\n")
    assert config_module.write_readme_table(readme)
    assert readme.read_text() == f"before\n{README_TABLE_START}\n{markdown_table()}\n{README_TABLE_END}\nafter\n"
    assert not config_module.write_readme_table(readme)  # up to date: unchanged


def test_show_config_lists_values_defaults_and_meanings(capsys):
    assert train_main(["--config", TINY, "--show_config", "--config.run.seed=7"]) == {}
    out = capsys.readouterr().out
    lines = {line.split(" = ")[0]: line for line in out.splitlines() if " = " in line}
    assert sorted(lines) == sorted(_flat(base_config()))
    assert lines["run.seed"].startswith("run.seed = 7 ") and "[default: 42]" in lines["run.seed"]
    assert "model.path = builtin:tiny" in lines["model.path"]
    assert "# worker processes that score completions" in lines["rewards.num_workers"]
    assert "[default" not in lines["data.split"]  # unchanged keys show no default
    assert any(line.startswith("# rewards: ") for line in out.splitlines())


def test_show_config_without_a_config_shows_the_defaults(capsys):
    train_main(["--show_config"])
    out = capsys.readouterr().out
    assert "grpo.max_steps = 500 " in out and "[default" not in out


def test_show_config_refuses_a_misspelt_override(capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--config", TINY, "--show_config", "--config.run.sead=7"])
    assert e.value.code == 2
    assert "did you mean 'run.seed'" in capsys.readouterr().err


def test_old_flat_key_is_one_line_naming_the_new_key(capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--config", TINY, "--config.learning_rate=1e-6"])  # config_rename: keep
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: config key 'learning_rate' is now 'grpo.learning_rate'")


def test_train_without_config_says_how(capsys):
    with pytest.raises(SystemExit):
        train_main([])
    assert "--config is required" in capsys.readouterr().err
