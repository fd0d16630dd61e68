"""Task splits through `datasets` (kdrl_mini.data_source): hub ids offline, local files, patterns,
saved folders, the column map, missing splits and bad rows; and load_world on a local parquet."""

from __future__ import annotations

import json

import pytest

from kdrl_mini.tasks import source as data_source
from kdrl_mini.tasks import files as tasks
from kdrl_mini.config import TrainConfig
from kdrl_mini.tasks.files import DataRowError

# GSM8K-shaped toy rows written for these tests: a question and a worked solution ending "#### n".
GSM_ROWS = [
    {"question": "Ana packs 3 boxes with 6 pens each. How many pens does she pack?", "answer": "3*6=18\n#### 18"},
    {"question": "A shelf holds 9 cups and 4 are taken. How many cups are left?", "answer": "9-4=5\n#### 5"},
    {"question": "Tom reads 7 pages a day for 2 days. How many pages?", "answer": "7*2=14\n#### 14"},
    {"question": "Mia has 20 stamps and gives away 8. How many remain?", "answer": "20-8=12\n#### 12"},
]
KIT_ROWS = [{"prompt": f"Compute {a}+{b}.\n", "answer": str(a + b), "n_operands": 2} for a, b in
            ((11, 2), (23, 5), (40, 7), (56, 3), (61, 8))]


def cfg_for(dataset, **fields) -> TrainConfig:
    return TrainConfig(dataset=str(dataset), **fields)


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def write(path, rows, kind=None):
    """Write ``rows`` as json (an array), jsonl, parquet, csv or a streaming arrow file."""
    import datasets

    kind = kind or path.suffix.lstrip(".")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "jsonl":
        tasks.write_jsonl(path, rows)
    elif kind == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif kind == "csv":
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    elif kind == "arrow":
        import pyarrow as pa

        table = pa.Table.from_pylist(rows)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    return path


# ------------------------------------------------------------------ the hub, offline
def test_hub_id_offline_is_one_line_with_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    name = "kdrl-mini-made-up/no-such-math-data"
    with pytest.raises(ConnectionError) as err:
        data_source.load_splits(cfg_for(name, dataset_config="main"))
    text = one_line(err)
    assert f"dataset {name}" in text
    assert "save_to_disk" in text and "local .jsonl/.parquet file" in text and "HF_HUB_OFFLINE" in text


def test_missing_local_file_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data_source.load_splits(cfg_for(tmp_path / "nope" / "train.parquet"))
    assert "no such data file" in one_line(err)


# ------------------------------------------------------------------ local files
@pytest.mark.parametrize("suffix", ["json", "jsonl", "parquet", "arrow", "csv"])
def test_one_local_file_is_one_split_sliced_by_the_config(tmp_path, suffix):
    path = write(tmp_path / f"toy.{suffix}", KIT_ROWS)
    splits = data_source.load_splits(cfg_for(path, train_split="train[:3]", test_split="train[60%:]"))
    assert sorted(splits) == ["test", "train"]
    assert [r["prompt"] for r in splits["train"].rows] == [r["prompt"] for r in KIT_ROWS[:3]]
    assert [r["answer"] for r in splits["test"].rows] == ["59", "69"]
    assert splits["train"].rows[0]["n_operands"] == 2  # other columns kept
    assert splits["test"].label == f"dataset {path}, split train[60%:]"


def test_one_file_without_the_test_split_names_the_slice_fix(tmp_path):
    path = write(tmp_path / "toy.parquet", KIT_ROWS)
    with pytest.raises(ValueError) as err:
        data_source.load_splits(cfg_for(path))
    text = one_line(err)
    assert "no split 'test' (config field test_split)" in text and "['train']" in text and "train[90%:]" in text


def test_split_pattern_with_ood(tmp_path):
    for split, rows in (("train", KIT_ROWS[:3]), ("test", KIT_ROWS[3:]), ("ood", KIT_ROWS[:1])):
        write(tmp_path / "mine" / f"{split}.parquet", rows)
    pattern = str(tmp_path / "mine" / "{split}.parquet")
    splits = data_source.load_splits(cfg_for(pattern, ood_split="ood"))
    assert sorted(splits) == ["ood", "test", "train"]
    assert [len(splits[s].rows) for s in ("train", "test", "ood")] == [3, 2, 1]
    assert splits["test"].rows[0]["prompt"] == KIT_ROWS[3]["prompt"]


def test_missing_ood_is_fine_unless_named(tmp_path):
    for split, rows in (("train", KIT_ROWS[:3]), ("test", KIT_ROWS[3:])):
        write(tmp_path / f"{split}.jsonl", rows)
    pattern = str(tmp_path / "{split}.jsonl")
    assert sorted(data_source.load_splits(cfg_for(pattern))) == ["test", "train"]  # ood_split None
    with pytest.raises(ValueError) as err:
        data_source.load_splits(cfg_for(pattern, ood_split="ood"))
    text = one_line(err)
    assert "no split 'ood' (config field ood_split)" in text and "['test', 'train']" in text and "null" in text


def test_save_to_disk_folders(tmp_path):
    import datasets

    whole = datasets.DatasetDict({"train": datasets.Dataset.from_list(KIT_ROWS[:4]),
                                  "validation": datasets.Dataset.from_list(KIT_ROWS[4:])})
    whole.save_to_disk(str(tmp_path / "dict"))
    splits = data_source.load_splits(cfg_for(tmp_path / "dict", test_split="validation"))
    assert [len(splits[s].rows) for s in ("train", "test")] == [4, 1]
    with pytest.raises(ValueError) as err:  # a DatasetDict without "test": its splits are listed
        data_source.load_splits(cfg_for(tmp_path / "dict"))
    assert "['train', 'validation']" in one_line(err)
    # One Dataset.save_to_disk folder per split, through a pattern.
    for split, rows in (("train", KIT_ROWS[:2]), ("test", KIT_ROWS[2:])):
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "per" / split))
    splits = data_source.load_splits(cfg_for(tmp_path / "per" / "{split}"))
    assert [len(splits[s].rows) for s in ("train", "test")] == [2, 3]


def test_plain_folder_of_split_files(tmp_path):
    write(tmp_path / "plain" / "train.jsonl", KIT_ROWS[:3])
    write(tmp_path / "plain" / "test.jsonl", KIT_ROWS[3:])
    splits = data_source.load_splits(cfg_for(tmp_path / "plain"))
    assert [len(splits[s].rows) for s in ("train", "test")] == [3, 2]
    # A split name datasets does not infer (ood) is still a split: one file, one split, named by the file.
    write(tmp_path / "plain" / "ood.jsonl", KIT_ROWS[:1])
    splits = data_source.load_splits(cfg_for(tmp_path / "plain", ood_split="ood", train_split="train[1:]"))
    assert [len(splits[s].rows) for s in ("train", "test", "ood")] == [2, 2, 1]
    assert splits["ood"].rows[0]["prompt"] == KIT_ROWS[0]["prompt"]
    # Shards of one split are not splits of their own: datasets joins them.
    write(tmp_path / "shards" / "train-00000-of-00002.jsonl", KIT_ROWS[:2])
    write(tmp_path / "shards" / "train-00001-of-00002.jsonl", KIT_ROWS[2:4])
    write(tmp_path / "shards" / "test-00000-of-00001.jsonl", KIT_ROWS[4:])
    splits = data_source.load_splits(cfg_for(tmp_path / "shards"))
    assert [len(splits[s].rows) for s in ("train", "test")] == [4, 1]


# ------------------------------------------------------------------ the column map and bad rows
def test_gsm8k_shaped_columns_are_mapped(tmp_path):
    path = write(tmp_path / "gsm.parquet", GSM_ROWS)
    splits = data_source.load_splits(cfg_for(path, prompt_column="question", train_split="train[:2]",
                                             test_split="train[2:]"))
    row = splits["train"].rows[0]
    assert row["prompt"] == GSM_ROWS[0]["question"] and row["question"] == GSM_ROWS[0]["question"]
    assert row["answer"] == "3*6=18\n#### 18"
    from kdrl_mini.rewards import correctness_reward

    assert correctness_reward("6+6+6=18\n#### 18", row["answer"]) == 1.0  # the reward reads the "####" line


def test_unknown_column_names_the_fix(tmp_path):
    path = write(tmp_path / "gsm.jsonl", GSM_ROWS)
    with pytest.raises(DataRowError) as err:
        data_source.load_splits(cfg_for(path, train_split="train[:2]", test_split="train[2:]"))
    text = one_line(err)
    assert f"dataset {path}, split train[:2]" in text and "no column 'prompt'" in text
    assert "set prompt_column: question" in text


def test_numbers_become_strings(tmp_path):
    rows = [{"q": "How many legs do 2 cats have?", "n": 8.0}, {"q": "Half of 9?", "n": 4.5},
            {"q": "Twice 6?", "n": 12.0}]
    path = write(tmp_path / "n.parquet", rows)
    splits = data_source.load_splits(cfg_for(path, prompt_column="q", answer_column="n", test_split="train"))
    assert [r["answer"] for r in splits["test"].rows] == ["8", "4.5", "12"]


@pytest.mark.parametrize("bad, what", [(None, "missing (None)"), ("", "empty"), (["18"], "a list")])
def test_bad_row_names_dataset_split_row_and_fix(tmp_path, bad, what):
    rows = [dict(r) for r in GSM_ROWS]
    rows[2]["answer"] = bad
    path = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataRowError) as err:
        data_source.load_splits(cfg_for(path, prompt_column="question", test_split="train"))
    text = one_line(err)
    assert f"dataset {path}, split train, row 2: column 'answer' (answer) is {what}" in text
    assert "fix or drop the row" in text


def test_bad_split_spec(tmp_path):
    path = write(tmp_path / "toy.jsonl", KIT_ROWS)
    with pytest.raises(ValueError) as err:
        data_source.load_splits(cfg_for(path, test_split="train[1:"))
    assert "test_split='train[1:'" in one_line(err)


# ------------------------------------------------------------------ end to end: load_world
def _tiny_world_as_parquet(tmp_path, data_dir, edit=None):
    """The tiny world's train/test/ood rows as parquet files (a few hundred rows each, for speed)."""
    for split, n in (("train", 300), ("test", 100), ("ood", 100)):
        rows = tasks.read_jsonl(data_dir / f"{split}.jsonl")[:n]
        if edit and split in edit:
            edit[split](rows)
        write(tmp_path / "world" / f"{split}.parquet", rows)
    return str(tmp_path / "world" / "{split}.parquet")


def _world_cfg(data_dir, dataset, **fields):
    return TrainConfig(dataset=dataset, student_path=str(data_dir / "models" / "student"),
                       teacher_path=str(data_dir / "models" / "teacher"), student_quant="none",
                       teacher_quant="none", device="cpu", **fields)


def test_load_world_from_a_local_parquet(tmp_path, data_dir):
    from kdrl_mini.runs.loading import load_world

    world = load_world(_world_cfg(data_dir, _tiny_world_as_parquet(tmp_path, data_dir), ood_split="ood"))
    assert sorted(world.splits) == ["ood", "test", "train"]
    assert world.eval_splits == ["test", "ood"]
    jsonl = tasks.read_jsonl(data_dir / "test.jsonl")[:100]
    assert [r["prompt"] for r in world.test] == [r["prompt"] for r in jsonl]
    assert [r["answer"] for r in world.test] == [r["answer"] for r in jsonl]
    assert world.train[0]["solution"] == tasks.read_jsonl(data_dir / "train.jsonl")[0]["solution"]


def test_load_world_checks_dataset_rows_with_the_tokenizer(tmp_path, data_dir):
    from kdrl_mini.runs.loading import load_world

    def blank(rows):
        rows[7]["prompt"] = "   "

    dataset = _tiny_world_as_parquet(tmp_path, data_dir, edit={"test": blank})
    with pytest.raises(DataRowError) as err:
        load_world(_world_cfg(data_dir, dataset))
    assert f"dataset {dataset}, split test, row 7: prompt '   ' is only whitespace" in one_line(err)
