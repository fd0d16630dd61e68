"""Where models come from (kdrl_mini.model_source): local folders as they are, hub ids through the
cache (offline: a clear error), remote code refused; and which configs keep the CLI offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kdrl_mini import model_source
from kdrl_mini.config import TrainConfig
from kdrl_mini.utils import hub_names, is_hub_id

MADE_UP = "kdrl-mini-made-up/no-such-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty, private hub cache; ``put(repo, folder)`` caches ``folder`` as the repo's main snapshot."""
    import huggingface_hub

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def put(repo_id: str, folder: Path) -> Path:
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(COMMIT)
        shutil.copytree(folder, repo / "snapshots" / COMMIT)
        return repo / "snapshots" / COMMIT

    return put


def test_local_folder_resolves_as_is(data_dir):
    folder = data_dir / "models" / "student"
    assert model_source.resolve_model(str(folder), "student") == folder
    expected = json.loads((folder / "config.json").read_text())
    assert model_source.read_model_config(folder)["vocab_size"] == expected["vocab_size"]


def test_missing_local_folder_keeps_the_old_message(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        model_source.resolve_model(str(tmp_path / "a" / "student"), "student")
    assert "student checkpoint folder" in one_line(err) and "does not exist" in one_line(err)


def test_made_up_hub_id_offline_is_one_line_with_the_fix(offline, hub_cache):
    with pytest.raises(ConnectionError) as err:
        model_source.resolve_model(MADE_UP, "teacher")
    text = one_line(err)
    assert f"teacher model {MADE_UP}" in text and "not in the local cache" in text and "HF_HUB_OFFLINE" in text
    assert f"huggingface-cli download {MADE_UP} --local-dir DIR" in text and "teacher_path: DIR" in text
    with pytest.raises(ConnectionError) as err:
        model_source.read_model_config(MADE_UP)
    assert MADE_UP in one_line(err)


def test_auto_map_folder_is_refused(tmp_path, data_dir):
    folder = shutil.copytree(data_dir / "models" / "student", tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "x.Y"}}))
    with pytest.raises(ValueError) as err:
        model_source.resolve_model(str(folder), "student")
    assert "auto_map" in one_line(err)


def test_cached_hub_model_resolves_offline(offline, hub_cache, data_dir):
    snapshot = hub_cache("someone/tiny-student", data_dir / "models" / "student")
    folder = model_source.resolve_model("someone/tiny-student", "student")
    assert folder.resolve() == snapshot.resolve()
    assert model_source.read_model_config("someone/tiny-student")["model_type"] == \
        json.loads((snapshot / "config.json").read_text())["model_type"]


def test_cached_hub_model_with_auto_map_is_refused(offline, hub_cache, data_dir, tmp_path):
    folder = shutil.copytree(data_dir / "models" / "student", tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "x.Y"}}))
    hub_cache("someone/remote-code", folder)
    with pytest.raises(ValueError) as err:
        model_source.resolve_model("someone/remote-code", "teacher")
    assert "teacher model someone/remote-code asks to run its own Python code (auto_map" in one_line(err)


def test_cached_hub_model_with_pickled_weights_only_is_refused(offline, hub_cache, data_dir, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(data_dir / "models" / "student" / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    hub_cache("someone/pickled", folder)
    with pytest.raises(FileNotFoundError) as err:
        model_source.resolve_model("someone/pickled", "student")
    assert "no *.safetensors weights" in one_line(err)


# ------------------------------------------------------------------ hub ids and the CLI's offline policy
@pytest.mark.parametrize("name, hub", [
    ("Qwen/Qwen2.5-0.5B-Instruct", True), ("openai/gsm8k", True), ("data/models/student", False),
    ("mydata/{split}.parquet", False), ("mine/train.parquet", False), ("/abs/owner/name", False),
    ("./owner/name", False), ("gpt2", False), (None, False), ("a/../b", False)])
def test_is_hub_id(name, hub):
    assert is_hub_id(name) is hub


def test_only_hub_configs_leave_offline_mode(monkeypatch):
    from kdrl_mini import cli

    assert hub_names(TrainConfig()) == []  # the kit's own world stays offline
    assert hub_names(TrainConfig(dataset="openai/gsm8k", student_path="Qwen/Qwen2.5-0.5B-Instruct")) == [
        "openai/gsm8k", "Qwen/Qwen2.5-0.5B-Instruct"]
    parse = cli.build_parser().parse_args
    assert cli._names_hub(parse(["train", "--config", "kdrl"])) is False
    assert cli._names_hub(parse(["train", "--config", "kdrl", "--set", "dataset=someone/math"])) is True
    assert cli._names_hub(parse(["eval", "--student", "someone/model"])) is True
    assert cli._names_hub(parse(["train", "--config", "no-such-config.yaml"])) is False

    calls = []
    monkeypatch.setattr("kdrl_mini.cli.setup", lambda **kw: calls.append(kw["offline_hub"]))
    monkeypatch.setattr(cli, "_train", lambda args: 0)  # the parser binds _train when main builds it
    assert cli.main(["train", "--config", "kdrl"]) == 0
    assert cli.main(["train", "--config", "kdrl", "--set", "teacher_path=someone/teacher"]) == 0
    assert calls == [True, False]
