"""Every config key is discoverable: a meaning next to its default, `--show_config`, the README table."""

from __future__ import annotations

import pytest

from openrs_jax.recipe import config as config_module
from openrs_jax.recipe.config import README_TABLE_END, README_TABLE_START, base_config, describe_keys, markdown_table
from openrs_jax.train import main as train_main
from tests.conftest import REPO_ROOT

TINY = str(REPO_ROOT / "configs" / "tiny.py")


def _flat(c, prefix=""):
    return [prefix + k for k in c.keys()]


def test_every_key_has_a_meaning_and_a_section():
    rows = describe_keys()
    assert [r.key for r in rows if not r.meaning] == [], "add a comment ending the key's line in base_config()"
    assert [r.key for r in rows if not r.section] == []
    assert sorted(r.key for r in rows) == sorted(_flat(base_config()))
    by_key = {r.key: r for r in rows}
    # Keys a user could not find before (issue 21).
    for key in ("seed", "reward_num_workers", "log_completions", "tensorboard"):
        assert by_key[key].meaning and by_key[key].default == base_config()[key]
    assert by_key["log_completions"].meaning.startswith("sample completions per step")
    assert by_key["reward_funcs"].section == "Rewards"


def test_readme_key_table_is_generated_from_the_declarations():
    readme = (REPO_ROOT / "README.md").read_text()
    assert README_TABLE_START in readme and README_TABLE_END in readme
    table = readme.split(README_TABLE_START, 1)[1].split(README_TABLE_END, 1)[0].strip()
    assert table == markdown_table(), "README's key table is stale: run python -m openrs_jax.recipe.config --write_readme"
    for key in ("seed", "reward_num_workers", "log_completions", "tensorboard", "mesh"):
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
    assert lines["seed"].startswith("seed = 7 ") and "[default: 42]" in lines["seed"]
    assert "model_path = builtin:tiny" in lines["model_path"]
    assert "# worker processes that score completions" in lines["reward_num_workers"]
    assert "[default" not in lines["dataset_split"]  # unchanged keys show no default
    assert "# Rewards" in out.splitlines()


def test_show_config_without_a_config_shows_the_defaults(capsys):
    train_main(["--show_config"])
    out = capsys.readouterr().out
    assert "max_steps = 500 " in out and "[default" not in out


def test_show_config_refuses_a_misspelt_override(capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--config", TINY, "--show_config", "--config.sead=7"])
    assert e.value.code == 2
    assert "did you mean 'seed'" in capsys.readouterr().err


def test_train_without_config_says_how(capsys):
    with pytest.raises(SystemExit):
        train_main([])
    assert "--config is required" in capsys.readouterr().err
