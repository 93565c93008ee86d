"""benchmarks/merged_classes.py: per target folder of a merged class, what a trained run predicts.

The reference predicts each folder on its own with the library's ``predict_files`` and counts
the classes by hand; the script predicts all folders in one call and groups by path."""

from collections import Counter

import pytest

from conftest import make_tree, tiny_config

from benchmarks import merged_classes


def test_merged_folders_are_the_ones_sharing_a_class():
    cmap = {"Dense": "res", "Sparse": "res", "Park": "park", "Medium": "res", "Port": "harbor"}
    assert merged_classes.merged_folders(cmap) == ["Dense", "Medium", "Sparse"]
    assert merged_classes.merged_folders({"a": "x", "b": "y"}) == []


def test_folder_table_means_shares_over_runs_and_names_the_top_other_class():
    runs = [{"F": Counter({"res": 3, "park": 1})}, {"F": Counter({"res": 1, "park": 2, "x": 1})}]
    table = merged_classes.folder_table(runs, {"F": "res"}, ["F"])
    own = [3 / 4, 1 / 4]                    # mean 50.0, sample std 35.36
    park = (1 / 4 + 2 / 4) / 2              # 37.5, above x's (0 + 1/4) / 2
    assert table.splitlines()[-1] == (f"| F | res | 4 | {100 * sum(own) / 2:.1f} ± 35.4% "
                                      f"| park: {100 * park:.1f}% |")


def test_the_table_counts_each_folder_as_predicting_it_alone_does(tmp_path, capsys):
    from ddc.config import from_dict
    from ddc.report.predict import predict_files
    from ddc.train import train_and_evaluate

    src = make_tree(tmp_path / "src", seed=1)
    # the target's class b split over two folders, as AID's residential is
    tgt = make_tree(tmp_path / "tgt", classes=("a", "b1", "b2", "c"), seed=2, colour_shift=30)
    cfg = tiny_config(src, tgt)
    cfg["data"]["target"]["class_map"] = {"a": "a", "b1": "b", "b2": "b", "c": "c"}
    train_and_evaluate(from_dict(cfg), tmp_path / "run")

    assert merged_classes.main([str(tmp_path / "run"), "--also", "c",
                                "--data-root", str(tmp_path)]) == 0
    rows = {line.split(" | ")[0].strip("| "): line
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert set(rows) == {"folder", "b1", "b2", "c"}
    for folder, mapped in (("b1", "b"), ("b2", "b"), ("c", "c")):
        _, alone = predict_files(tmp_path / "run", [tgt / folder])
        counts = Counter(r["class"] for r in alone)
        assert f"| {folder} | {mapped} | {len(alone)} | {100 * counts[mapped] / len(alone):.1f}%" \
            in rows[folder]


def test_a_map_without_merges_and_no_also_is_an_error_naming_the_run(tmp_path, capsys):
    from ddc.config import from_dict
    from ddc.train import train_and_evaluate

    src = make_tree(tmp_path / "src", seed=1)
    tgt = make_tree(tmp_path / "tgt", seed=2)
    cfg = tiny_config(src, tgt, steps=1, eval_every=1, checkpoint_every=1)
    train_and_evaluate(from_dict(cfg), tmp_path / "run")
    with pytest.raises(SystemExit):
        merged_classes.main([str(tmp_path / "run"), "--data-root", str(tmp_path)])
    assert f"{tmp_path / 'run'}: data.target.class_map merges no folders" in capsys.readouterr().err


def test_runs_of_different_targets_are_an_error_naming_the_odd_run(tmp_path, capsys):
    from ddc.config import from_dict
    from ddc.train import train_and_evaluate

    src = make_tree(tmp_path / "src", seed=1)
    tgt = make_tree(tmp_path / "tgt", classes=("a", "b1", "b2", "c"), seed=2)
    cfg = tiny_config(src, tgt, steps=1, eval_every=1, checkpoint_every=1)
    cfg["data"]["target"]["class_map"] = {"a": "a", "b1": "b", "b2": "b", "c": "c"}
    train_and_evaluate(from_dict(cfg), tmp_path / "run1")
    cfg["data"]["target"]["class_map"] = {"a": "a", "b1": "b", "b2": "c", "c": "c"}
    train_and_evaluate(from_dict(cfg), tmp_path / "run2")
    with pytest.raises(SystemExit):
        merged_classes.main([str(tmp_path / "run1"), str(tmp_path / "run2"),
                             "--data-root", str(tmp_path)])
    assert f"{tmp_path / 'run2'}: data.target differs from" in capsys.readouterr().err
