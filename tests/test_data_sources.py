"""Sources and the sharded format: round trips, determinism, corruption and bad input naming what is wrong."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from torchrt.data.errors import (
    DataError,
    DataNotFoundError,
    IndexOutOfRangeError,
    ShapeMismatchError,
    ShardCorruptError,
)
from torchrt.data.pipeline import ShardedPipeline
from torchrt.data.shards import ShardReader, ShardWriter, write_shards
from torchrt.data.sources import DigitsSource, MapSource, SyntheticSource


@pytest.fixture
def synthetic():
    return SyntheticSource(250, shape=(3, 4, 4), num_classes=10, seed=3, name="synth")


@pytest.fixture
def shards(tmp_path, synthetic):
    write_shards(tmp_path / "ds", synthetic, name="synth", shard_size=64, chunk=100)
    return tmp_path / "ds"


def test_synthetic_is_a_pure_function_of_seed_and_index(synthetic):
    a = synthetic.read([5, 9, 200])
    b = synthetic.read([200, 5])
    assert torch.equal(a["input"][0], b["input"][1]) and torch.equal(a["input"][2], b["input"][0])
    assert a["input"].dtype == torch.uint8 and a["input"].shape == (3, 3, 4, 4)
    assert 0 <= int(a["target"].min()) and int(a["target"].max()) < 10
    other = SyntheticSource(250, shape=(3, 4, 4), num_classes=10, seed=4).read([5, 9, 200])
    assert not torch.equal(a["input"], other["input"])
    big = SyntheticSource(10**9)  # any size: nothing is materialised
    assert len(big) == 10**9 and big.read([10**9 - 1])["input"].shape == (1, 3, 224, 224)


def test_digits_ship_offline():
    digits = DigitsSource()
    batch = digits.read([0, 1796])
    assert len(digits) == 1797 and batch["input"].shape == (2, 1, 8, 8)
    assert batch["target"].tolist() == [0, 8] and float(batch["input"].max()) <= 1.0
    assert digits.file and digits.file.endswith("digits.csv.gz")


def test_shards_round_trip_across_shard_boundaries(shards, synthetic):
    reader = ShardReader(shards, name="synth")
    assert len(reader) == 250 and reader.num_shards == 4
    index = json.loads((shards / "index.json").read_text())
    assert [s["size"] for s in index["shards"]] == [64, 64, 64, 58]
    assert index["fields"] == {"input": {"dtype": "uint8", "shape": [3, 4, 4]},
                               "target": {"dtype": "int64", "shape": []}}
    idx = np.random.default_rng(0).permutation(250)[:100]
    got, want = reader.read(idx), synthetic.read(idx)
    assert torch.equal(got["input"], want["input"]) and torch.equal(got["target"], want["target"])
    assert reader.describe()["shards"] == 4


def test_flipped_byte_is_detected_naming_dataset_file_and_index(shards):
    victim = shards / "shard-00002.input.npy"
    data = bytearray(victim.read_bytes())
    data[-7] ^= 0xFF
    victim.write_bytes(bytes(data))
    reader = ShardReader(shards, name="synth")  # lazy: opening is cheap and still works
    assert reader.read([0, 63, 64])["input"].shape[0] == 3  # other shards are fine
    with pytest.raises(ShardCorruptError, match="sha256") as info:
        reader.read([10, 150])
    assert (info.value.dataset, info.value.file, info.value.index) == ("synth", str(victim), 150)
    assert "shard 2 (samples 128..191)" in str(info.value)
    with pytest.raises(ShardCorruptError):
        ShardReader(shards, name="synth", verify="eager")
    with pytest.raises(ShardCorruptError):
        ShardReader(shards, verify="off").verify_all()
    assert ShardReader(shards, verify="off").read([150])["input"].shape == (1, 3, 4, 4)


def test_corruption_surfaces_through_the_pipeline(shards):
    victim = shards / "shard-00000.target.npy"
    data = bytearray(victim.read_bytes())
    data[200] ^= 0x01
    victim.write_bytes(bytes(data))
    pipe = ShardedPipeline(ShardReader(shards, name="synth"), batch_size=32, workers=2, preview_interval=None)
    with pytest.raises(ShardCorruptError) as info:
        list(pipe)
    assert info.value.file == str(victim) and 0 <= info.value.index < 64


def test_truncated_or_missing_files(shards, tmp_path):
    victim = shards / "shard-00001.target.npy"
    victim.write_bytes(victim.read_bytes()[:-8])
    with pytest.raises(ShardCorruptError, match="truncated") as info:
        ShardReader(shards, name="synth")
    assert info.value.file == str(victim) and info.value.index == 64
    victim.unlink()
    with pytest.raises(DataNotFoundError, match="shard 1 file is missing") as info:
        ShardReader(shards, name="synth")
    assert info.value.file == str(victim) and isinstance(info.value, FileNotFoundError)
    with pytest.raises(DataNotFoundError, match="no such dataset directory") as info:
        ShardReader(tmp_path / "nope", name="imagenet")
    assert info.value.dataset == "imagenet" and info.value.file == str(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="no index.json"):
        ShardReader(tmp_path / "empty")


def test_unreadable_index_and_mismatched_header(shards):
    index_path = shards / "index.json"
    good = index_path.read_text()
    index_path.write_text("{not json")
    with pytest.raises(ShardCorruptError, match="unreadable index") as info:
        ShardReader(shards, name="synth")
    assert info.value.file == str(index_path)
    # rewrite shard 3's input with the same number of bytes but another shape, and make the index agree on bytes
    index = json.loads(good)
    victim = shards / "shard-00003.input.npy"
    np.save(victim, np.zeros((58, 3, 16), dtype=np.uint8))
    entry = index["shards"][3]["files"]["input"]
    entry["bytes"] = victim.stat().st_size
    import hashlib

    entry["sha256"] = hashlib.sha256(victim.read_bytes()).hexdigest()
    index_path.write_text(json.dumps(index))
    with pytest.raises(ShapeMismatchError, match=r"uint8\[58, 3, 16\]") as info:
        ShardReader(shards, name="synth").read([249])
    assert (info.value.file, info.value.index) == (str(victim), 249)


def test_out_of_range_index_names_dataset_file_index(shards):
    reader = ShardReader(shards, name="synth")
    with pytest.raises(IndexOutOfRangeError) as info:
        reader.read([3, 250, -1])
    assert (info.value.dataset, info.value.file, info.value.index) == ("synth", str(shards), 250)
    assert isinstance(info.value, IndexError) and isinstance(info.value, DataError)


def test_writer_refuses_mismatched_batches(tmp_path):
    writer = ShardWriter(tmp_path / "w", name="w", shard_size=4)
    writer.write({"input": np.zeros((3, 2), np.float32), "target": np.zeros(3, np.int64)})
    with pytest.raises(ShapeMismatchError, match=r"float32\[3\], the dataset's is float32\[2\]") as info:
        writer.write({"input": np.zeros((2, 3), np.float32), "target": np.zeros(2, np.int64)})
    assert (info.value.dataset, info.value.index) == ("w", 3)
    with pytest.raises(ShapeMismatchError, match="fields"):
        writer.write({"input": np.zeros((2, 2), np.float32)})
    writer.write({"input": np.ones((6, 2), np.float32), "target": np.ones(6, np.int64)})
    writer.close()
    reader = ShardReader(tmp_path / "w")
    assert len(reader) == 9 and reader.num_shards == 3
    assert reader.read([8])["input"].tolist() == [[1.0, 1.0]]
    with pytest.raises(DataError, match="already exists"):
        ShardWriter(tmp_path / "w")


class Ragged(torch.utils.data.Dataset):
    root = "/data/ragged"

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        return torch.zeros(3 if i != 4 else 2), i


def test_map_source_mismatched_shapes_name_the_index():
    source = MapSource(Ragged(), name="ragged")
    assert source.read([0, 1])["input"].shape == (2, 3)
    with pytest.raises(ShapeMismatchError, match=r"float32\[2\], but sample 1 has float32\[3\]") as info:
        source.read([1, 4])
    assert (info.value.dataset, info.value.file, info.value.index) == ("ragged", "/data/ragged", 4)


def test_errors_cross_process_boundaries_intact():
    e = ShardCorruptError("bad", dataset="d", file="/f", index=3)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is ShardCorruptError and (back.dataset, back.file, back.index) == ("d", "/f", 3)
    assert str(back) == "dataset 'd': file '/f': index 3: bad"
    assert str(ShardCorruptError(str(e))) == str(e)  # rebuilt from its message alone


def test_shards_through_process_workers(shards, synthetic):
    reader = ShardReader(shards)
    reader.read([0])
    clone = pickle.loads(pickle.dumps(reader))  # what a spawned worker gets: no open memmaps, verified set kept
    assert clone._maps == {} and clone._verified == {0} and torch.equal(clone.read([7])["input"],
                                                                          reader.read([7])["input"])
    pipe = ShardedPipeline(reader, batch_size=50, workers=2, worker_mode="processes", tail="pad",
                           preview_interval=None)
    batches = list(pipe)
    idx = torch.cat([b["index"][b["mask"]] for b in batches])
    assert sorted(idx.tolist()) == list(range(250))
    first = batches[0]
    assert torch.equal(first["input"], synthetic.read(first["index"].numpy())["input"])
