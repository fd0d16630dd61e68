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
    with pytest.raises(ValueError, match=r"unknown config field 'beta_max' \(closest: beta, beta_end"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="shipped config name"):
        load_config(tmp_path / "nothing.yaml")


def test_overrides_apply():
    assert load_config("grpo", max_steps=3, seed=7).max_steps == 3


def test_shipped_yaml_holds_only_what_differs_from_the_defaults():
    import yaml

    from kdrl_mini.config import CONFIG_DIR

    for path in CONFIG_DIR.glob("*.yaml"):
        assert set(yaml.safe_load(path.read_text())) <= {"algorithm", "output_dir"}, path


def test_set_overrides_parse_yaml_values():
    from kdrl_mini.config import parse_set

    assert parse_set(["beta=0.1", "kl_kind=k3", "micro_batch_size=null", "chat_template=true"]) == \
        {"beta": 0.1, "kl_kind": "k3", "micro_batch_size": None, "chat_template": True}
    cfg = load_config("kdrl", **parse_set(["beta=0.2"]))
    assert cfg.beta == 0.2
    with pytest.raises(ValueError, match="key=value"):
        parse_set(["beta"])
    with pytest.raises(ValueError, match="unknown config field"):
        load_config("kdrl", **parse_set(["betta=0.1"]))


def test_kl_in_the_reward_needs_the_sampled_log_ratio():
    with pytest.raises(ValueError, match="kl_kind: k1"):
        TrainConfig(kl_mode="reward", kl_kind="k2")
    TrainConfig(kl_mode="reward-seq", kl_kind="k1")


def test_anneal_reaches_the_floor_within_anneal_steps_and_holds(tmp_path):
    """The paper's shape: linear from start to the floor within anneal_steps, then held; without
    anneal_steps the floor is reached at the run's last step (it used to stop short of it)."""
    from kdrl_mini.trainer import Trainer

    cfg = load_config("kdrl", beta=5e-3, beta_end=1e-3, beta_schedule="linear", anneal_steps=5, max_steps=12,
                      student_quant="none", teacher_quant="none", output_dir=str(tmp_path / "a"))
    beta = Trainer(cfg).beta_at
    assert [round(beta(s), 6) for s in range(7)] == [0.005, 0.004, 0.003, 0.002, 0.001, 0.001, 0.001]
    whole = Trainer(cfg.replace(anneal_steps=None, beta=0.05, beta_end=0.01)).beta_at
    assert whole(cfg.max_steps - 1) == pytest.approx(0.01) and whole(cfg.max_steps - 2) > 0.01


@pytest.mark.parametrize("field, value, message", [
    ("lr", "fast", r"lr='fast' is str; expected float"),
    ("group_size", "8", r"group_size='8' is str; expected int \(a count: write a whole number"),
    ("max_steps", "1e3", r"max_steps='1e3' is str; expected int"),
    ("group_size", 4.0, r"group_size=4.0 is float; expected int"),
    ("max_steps", 2.5, r"max_steps=2.5 is float"),
    ("beta", None, r"beta is empty \(null\); expected float, e.g. 0.05"),
    ("output_dir", 123, r"output_dir=123 is int; expected str"),
    ("beta", float("nan"), r"beta=nan must be a finite number"),
    ("lr", float("inf"), r"lr=inf must be a finite number"),
    ("chat_template", "yes", r"chat_template='yes' is str; expected bool"),
    ("eval_every", -1, r"eval_every=-1 must be >= 0"),
    ("threads", -1, r"threads=-1 must be >= 1"),
    ("micro_batch_size", 0, r"micro_batch_size=0 must be >= 1"),
])
def test_wrong_types_and_values_get_one_clear_line(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_numpy_integers_are_accepted_and_become_ints():
    import numpy as np

    cfg = TrainConfig(group_size=np.int64(4), beta=1)
    assert type(cfg.group_size) is int and cfg.group_size == 4


@pytest.mark.parametrize("text, message", [
    ("", "is empty"), ("- a\n- b\n", "is a list"), ("3\n", "is a int"),
    ("algorithm: kdrl\n\tbeta: 0.1\n", "line 2: not a readable YAML config"),
    ("algorithm: !!python/object:os.system echo\n", "not a readable YAML config"),
])
def test_yaml_that_is_not_a_config_is_refused(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(path)


def test_a_mistyped_path_never_falls_back_to_a_shipped_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config("my/typo/grpo.yaml")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        load_config(tmp_path)
