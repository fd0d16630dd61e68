import pytest

from kdrl_mini.config import TrainConfig, load_config


@pytest.mark.parametrize("name", ["grpo", "kd-fkl", "kd-rkl", "kdrl"])
def test_shipped_configs_load(name):
    cfg = load_config(name)
    assert cfg.algorithm == name


@pytest.mark.parametrize("field, value, message", [
    ("algorithm", "ppo", r"algorithm='ppo' is not allowed; choose one of \['grpo'"),
    ("kl_kind", "k4", r"kl_kind='k4' is not allowed; choose one of \['k1', 'k2', 'k3', 'exact', 'topk'\]"),
    ("beta", -0.1, r"beta=-0.1 must be >= 0"),
    ("group_size", 1, r"group_size=1: GRPO needs at least 2"),
    ("kd_strategy", "never", r"kd_strategy='never' is not allowed"),
])
def test_bad_config_names_field_and_allowed_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_annealing_needs_an_end_value():
    with pytest.raises(ValueError, match="beta_end is needed"):
        TrainConfig(beta_schedule="linear")


def test_yaml_unknown_field_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm: kdrl\nbeta_max: 3\n")
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['beta_max'\]"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="shipped config name"):
        load_config(tmp_path / "nothing.yaml")


def test_overrides_apply():
    assert load_config("grpo", max_steps=3, seed=7).max_steps == 3
