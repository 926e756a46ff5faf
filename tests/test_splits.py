"""Stratified, seeded splits that honour the dataset's test partition."""

import pandas as pd
import pytest

from histo_wsss.shards import shard_files, shard_groups, shard_of
from histo_wsss.splits import make_split


def _table(n_pos=40, n_neg=60, n_test=0):
    names = [f"img{i:03d}" for i in range(n_pos + n_neg)]
    labels = ["SSA"] * n_pos + ["HP"] * n_neg
    partition = ["test" if i < n_test else "train" for i in range(n_pos + n_neg)]
    return pd.DataFrame({"name": names, "label": labels, "partition": partition})


def test_partition_test_rows_are_the_test_set_and_rest_is_stratified_80_20():
    table = _table(n_test=10)
    split = make_split(table.sample(frac=1, random_state=3), 0.2, 0.2, seed=1)
    assert list(split["name"]) == sorted(table["name"])
    assert set(split.loc[split["split"] == "test", "name"]) == set(table["name"][:10])
    val = split[split["split"] == "val"]
    assert len(val) == 18  # 20% of the 90 non-test images
    # stratified: val holds the classes in the same proportion as the non-test images
    rest = split[split["split"] != "test"]
    share = rest["label"].eq("SSA").mean()
    assert val["label"].eq("SSA").mean() == pytest.approx(share, abs=0.03)


def test_without_test_partition_a_stratified_test_fraction_is_held_out():
    split = make_split(_table(), 0.2, 0.25, seed=0)
    test = split[split["split"] == "test"]
    assert len(test) == 25
    assert test["label"].value_counts().to_dict() == {"HP": 15, "SSA": 10}
    assert (split["split"] == "val").sum() == 15


def test_same_seed_same_split_other_seed_other_split():
    a = make_split(_table(), 0.2, 0.2, seed=7)
    b = make_split(_table().iloc[::-1], 0.2, 0.2, seed=7)
    c = make_split(_table(), 0.2, 0.2, seed=8)
    assert a.to_csv() == b.to_csv()
    assert not a["split"].equals(c["split"])


def test_too_few_images_of_a_class_is_a_clear_error():
    table = _table(n_pos=1, n_neg=9)
    with pytest.raises(ValueError, match="every class needs at least 2 images"):
        make_split(table, 0.2, 0.2, seed=0)


def test_shards_partition_names_and_are_stable_when_images_are_added():
    names = [f"img{i:04d}" for i in range(500)]
    shards = shard_groups(reversed(names), 8)
    assert sorted(sum(shards, [])) == names
    assert all(group == sorted(group) for group in shards)
    assert all(shard_of(n, 8) == k for k, group in enumerate(shards) for n in group)
    assert min(map(len, shards)) > 40  # roughly balanced
    more = shard_groups([*names, "new_image"], 8)
    changed = [k for k in range(8) if more[k] != shards[k]]
    assert changed == [shard_of("new_image", 8)]


def test_shard_files_finds_each_name_in_its_shard_folder(tmp_path):
    for shard, names in enumerate((["a", "c.v2"], ["b"])):
        (tmp_path / str(shard) / "steps" / "crf").mkdir(parents=True)
        for name in names:
            (tmp_path / str(shard) / "steps" / "crf" / f"{name}.png").touch()
            (tmp_path / str(shard) / "steps" / "crf" / f"{name}.npy").touch()
    found = shard_files([tmp_path / "0", tmp_path / "1"], "steps/crf")
    assert found == {
        n: str(tmp_path / s / "steps" / "crf" / f"{n}.png")
        for n, s in (("a", "0"), ("c.v2", "0"), ("b", "1"))
    }
    assert shard_files([], "masks") == {}  # no real masks: no truth shards
