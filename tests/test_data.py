import pytest

from helpers import data


def test_split_depends_only_on_the_path():
    assert data.split_of("json/decoder.py") == data.split_of("json/decoder.py")
    buckets = [data.split_of(f"pkg{i}/mod{i}.py") for i in range(4000)]
    share = {s: buckets.count(s) / len(buckets) for s in data.SPLITS}
    assert 0.87 < share["train"] < 0.93 and 0.03 < share["val"] < 0.07 and 0.03 < share["test"] < 0.07, share


def test_splits_are_disjoint_and_cover_the_library():
    root = data.stdlib_root()
    seen = {s: {p.relative_to(root).as_posix() for p in data.files(s)} for s in data.SPLITS}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])
    assert "os.py" in seen["train"] | seen["val"] | seen["test"]
    assert all(not rel.startswith("site-packages") for rel in seen["train"])
    assert len(seen["val"]) > 20 and len(seen["test"]) > 20


def test_unknown_split_and_missing_root_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="train, val, test"):
        data.files("dev")
    with pytest.raises(FileNotFoundError, match="root="):
        data.files("train", tmp_path / "nowhere")


def test_text_joins_files_with_the_separator(tmp_path):
    for i in range(40):
        (tmp_path / f"m{i}.py").write_text(f"x = {i}\n")
    joined = data.text("train", tmp_path)
    assert joined.count(data.FILE_SEPARATOR) == len(data.files("train", tmp_path)) - 1
    assert len(data.text("train", tmp_path, max_chars=10)) == 10


def test_eval_tokens_is_fixed_and_bounded(tokenizer):
    a = data.eval_tokens(tokenizer, budget=500)
    b = data.eval_tokens(tokenizer, budget=500)
    assert a.shape == (500,) and a.equal(b)
    with pytest.raises(ValueError, match="smaller budget"):
        data.eval_tokens(tokenizer, budget=10**9)
