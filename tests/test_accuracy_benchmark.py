"""The accuracy benchmark's smallest cell end to end (real USPS -> MNIST, a few images, 5 steps),
and its grid, override and bar logic, so the benchmark code cannot rot."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA_ROOT, REPO, WEIGHTS_ROOT

from benchmarks import accuracy, accuracy_report, accuracy_run

needs_digits = pytest.mark.skipif(not (DATA_ROOT / "usps").is_dir()
                                  or not (DATA_ROOT / "mnist_test").is_dir(),
                                  reason=f"USPS / MNIST not found under {DATA_ROOT}")


def _rows(text: str) -> dict:
    """Rows of the markdown tables, keyed by their first cell."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and not line.startswith("|---"):
            rows.setdefault(cells[0], cells)
    return rows


def _active_terms(cfg) -> list:
    return sorted(name for name, opts in cfg.align.items() if opts.weight > 0)


def test_grid_covers_tasks_methods_and_variants():
    from ddc.align import REGISTRY
    cells = accuracy.build_grid(quick=False, only=None, extra=[])
    ids = {c.id for c in cells}
    assert len(ids) == len(cells)
    from ddc.align import term_class
    # mmd: the DDC methods; each other term with its defaults and each of its named variants
    others = [f for n in REGISTRY if n != "mmd" for f in [n, *term_class(n).variants]]
    assert "cdan_e" in others
    assert others and {m.name for m in accuracy.registry_methods()} == {
        f"{n}_lam{lam:g}" for n in others for lam in accuracy.ALIGN_LAMBDAS}
    cdan_e = next(m for m in accuracy.registry_methods() if m.name == "cdan_e_lam1")
    assert cdan_e.overrides == ['align={"cdan": {"weight": 1.0, "entropy_conditioning": true}}']
    for task in accuracy.TASKS:
        for variant in task.variants:
            names = {c.method.name for c in cells if c.task is task and c.variant == variant}
            assert "source_only" in names, (task.name, variant)
            peers = ({m.name for m in accuracy.PEER_METHODS} if variant in task.peer_variants
                     else set())
            listed = task.variant_methods[variant]
            assert names == {m.name for m in accuracy.grid.methods_for(task)
                             if accuracy.grid.runs_in(m.name, listed)} | peers
            # each name or pattern of the list runs something
            assert all(any(accuracy.grid.runs_in(n, [p]) for n in names) for p in listed), listed
    main = {c.method.name for c in cells if c.variant == "frozen_224_d4_3000"
            and c.task.name == "siri_whu_aid"}
    # the main variant: source only, DDC, every registered term at λ = 1, the pairs, the peers
    assert main == ({"source_only", "ddc_gauss_biased"} | {f"{n}_lam1" for n in others}
                    | set(accuracy.COMBOS) | {m.name for m in accuracy.PEER_METHODS})
    assert not any(i.endswith("_lam0.1") for i in ids)
    assert {f"siri_whu_aid/frozen/{m}" for m in accuracy.FROZEN_METHODS} < ids
    for variant in ("frozen_224_d4_3000_ls", "frozen_224_d4_3000_bn",
                    "frozen_224_d4_3000_ls_bn"):
        assert {c.method.name for c in cells if c.variant == variant} == set(accuracy.LS_METHODS)
    tllib = next(c for c in cells if c.id == "usps_mnist/tllib/mcc_lam1")
    assert {"model.adapt_bn=true", 'model.backbone="lenet_tllib"'} <= set(tllib.overrides(0))
    budget = {f"usps_mnist/long_12000/{m}" for m in accuracy.BUDGET_DIGIT_METHODS}
    for task in ("usps_mnist", "mnist_usps"):
        assert ({f"{task}/{m}" for m in accuracy.DIGIT_METHODS}
                | {f"{task}/tllib/{m}" for m in accuracy.TLLIB_PAIR_METHODS}
                | (budget | {f"usps_mnist/tllib_sgd/{m}" for m in accuracy.TLLIB_DIGIT_METHODS}
                   if task == "usps_mnist" else set())) == {
            i for i in ids if i.startswith(f"{task}/")}
    long = next(c for c in cells if c.id == "usps_mnist/long_12000/im_lam1")
    assert {'align={"im": {"weight": 1.0}}', "train.steps=12000"} <= set(long.overrides(0))
    pair = next(c for c in cells if c.id == "mnist_usps/tllib/mcc+pseudo_label")
    assert {'model.backbone="lenet_tllib"', "model.adapt_bn=true",
            'align={"mcc": {"weight": 1.0}, "pseudo_label": {"weight": 1.0}}'} <= set(
        pair.overrides(0))
    assert not any(i.startswith(("usps_mnist/tllib_sgd/mcc+", "usps_mnist/mcc+")) for i in ids)
    sgd = next(c for c in cells if c.id == "usps_mnist/tllib_sgd/cdan_lam1")
    assert {'model.backbone="lenet_tllib"', "model.adapt_bn=true", 'train.optimizer="sgd"',
            "train.lr=0.01", "train.weight_decay=0.001", 'train.lr_schedule="inv"'} <= set(
        sgd.overrides(0))
    dann = next(c for c in cells if c.id == "aid_siri_whu/frozen_224_d4_3000/dann_lam1")
    assert {'align={"dann": {"weight": 1.0}}', "data.image_size=224", "train.steps=3000"} <= set(
        dann.overrides(0))
    quick = {c.id for c in accuracy.build_grid(quick=True, only=None, extra=[])}
    # --quick: the 128 px baseline and the digits without their target-prediction terms
    assert quick == {f"{t}/frozen/{m}" for t in ("siri_whu_aid", "aid_siri_whu")
                     for m in accuracy.FROZEN_METHODS} | {
        f"{t}/{m}" for t in ("usps_mnist", "mnist_usps")
        for m in ("source_only", "ddc_gauss_biased")}
    only = accuracy.build_grid(quick=False, only=["siri_whu_aid/frozen", "usps_mnist/ddc_*"],
                               extra=[])
    assert [c.id for c in only] == (  # in the order of the patterns
        [f"siri_whu_aid/frozen/{m}" for m in accuracy.FROZEN_METHODS]
        + ["usps_mnist/ddc_gauss_biased"])
    scoped = accuracy.build_grid(quick=False, only=["usps_mnist/source_only", "aid_siri_whu"],
                                 extra=["usps_mnist:train.steps=9", "train.lr=0.1"])
    assert scoped[0].common[-2:] == ["train.steps=9", "train.lr=0.1"]
    assert all("train.steps=9" not in c.common and "train.lr=0.1" in c.common
               for c in scoped[1:])


def test_a_newly_registered_term_joins_the_grid(monkeypatch):
    from ddc import align
    from ddc.config import load
    monkeypatch.setitem(align.REGISTRY, "coral_copy", "ddc.align.coral:CORAL")
    cells = {c.id: c for c in accuracy.build_grid(quick=False, only=None, extra=[])}
    for task in accuracy.TASKS:
        # where a variant runs every term at λ = 1 ("*_lam1"), the new term runs too
        for variant in [v for v in task.align_variants
                        if accuracy.grid.runs_in("coral_copy_lam1", task.variant_methods[v])]:
            cell = cells[f"{task.name}/{variant}/coral_copy_lam1"]
            cfg = load(accuracy.REPO / task.base, cell.overrides(0))
            assert _active_terms(cfg) == ["coral_copy"] and cfg.align["coral_copy"].weight == 1
        assert "siri_whu_aid/frozen/coral_copy_lam1" not in cells
    assert accuracy.method_title("usps_mnist", "coral_copy_lam1").startswith("coral_copy: Deep CORAL")


def test_overrides_resolve_to_valid_configs_of_each_method():
    from ddc.align import REGISTRY, term_class
    from ddc.config import load
    seen = {}  # task -> the sets of active terms of its cells
    for cell in accuracy.build_grid(quick=False, only=None, extra=["train.steps=7"]):
        cfg = load(accuracy.REPO / cell.task.base, cell.overrides(2))
        assert cfg.seed == 2 and cfg.train.steps == 7
        family = cell.method.family or cell.method.name
        term = cell.method.term
        digits = cell.task.name in ("usps_mnist", "mnist_usps")
        if cell.method.peer:  # ADAPT on the variant's frozen features, no term of ours
            assert cfg.align == {} and cfg.mode == "features" and cfg.model.freeze.mode == "backbone"
            assert cell.variant in cell.task.peer_variants and family == f"adapt_{cell.method.peer}"
            continue
        terms = term.split("+") if term else []
        # exactly the method's own terms (the base config's mmd is gone where another runs)
        assert sorted(cfg.align) == sorted(terms), cell.id
        assert sorted(_active_terms(cfg)) == sorted(terms)
        seen.setdefault(cell.task.name, set()).update(terms or [""])
        assert (term == "") == (family == "source_only")
        if len(terms) > 1:  # a pair of COMBOS, each term at its given weight
            assert family in accuracy.COMBOS and cell.method.lam is None
            for name, opts in accuracy.COMBOS[family].items():
                assert cfg.align[name] == term_class(name).Options(**opts)
            continue
        assert (term == "mmd") == family.startswith("ddc_")
        if term and term != "mmd":
            variant = term_class(term).variants.get(family, {}) if family != term else {}
            assert (family == term or variant) and cell.method.lam in accuracy.ALIGN_LAMBDAS
            # the term's default options (and its named variant's) at λ
            assert cfg.align[term] == term_class(term).Options(weight=cell.method.lam, **variant)
        if family == "ddc_linear_kernel":
            assert cfg.align["mmd"].kernel == "linear"
        if family.startswith("ddc_gauss_"):
            assert (cfg.align["mmd"].kernel, cfg.align["mmd"].estimator) == ("gaussian", family[10:])
        if cell.method.lam is not None:
            assert cell.method.name.endswith(f"_lam{cell.method.lam:g}")
            assert cfg.align[term].weight == cell.method.lam
        elif term == "mmd":  # the base config's λ
            assert cfg.align["mmd"].weight == (1.0 if digits else 0.25)
        if not digits:
            d4 = "_d4" in cell.variant
            assert cfg.mode == "features" and cfg.data.cache == "disk"
            assert cfg.data.augment == ("d4" if d4 else False) and cfg.train.tta == d4
            assert cfg.model.adapt_width == 256
            assert (cfg.model.freeze.mode, cfg.model.freeze.layer) == ("backbone", None)
            assert cfg.data.image_size == (224 if cell.variant.startswith("frozen_224") else 128)
            assert cfg.train.steps == 7  # the invocation's --set wins over the variant's 3000
            assert cfg.model.adabn == (cell.variant == "frozen_adabn")
    # every registered method, and source only, on each MobileNetV2 task; USPS: a few (CPU),
    # pseudo-labels only beside MCC (the pair of variant tllib)
    assert seen["siri_whu_aid"] == seen["aid_siri_whu"] == {""} | set(REGISTRY)
    assert seen["usps_mnist"] == seen["mnist_usps"] == {"", "mmd", "mcc", "im", "entropy", "cdan",
                                                        "pseudo_label"}
    mnist = load(accuracy.REPO / "configs/grid/mnist_usps.json")
    usps = load(accuracy.REPO / "configs/usps_mnist_ddc.json")
    # the other direction of the same recipe: only the roots (and the name) differ
    assert (mnist.data.source.root, mnist.data.target.root) == ("mnist_test", "usps")
    assert ({**mnist.to_dict(), "name": "", "data": {**mnist.to_dict()["data"], "source": 0, "target": 0}}
            == {**usps.to_dict(), "name": "", "data": {**usps.to_dict()["data"], "source": 0, "target": 0}})
    aid = load(accuracy.REPO / "configs/grid/aid_siri_whu.json")
    assert aid.data.source.root == "aid" and aid.data.target.root == "siri_whu"
    assert aid.data.source.class_map["SparseResidential"] == "residential"
    assert not aid.data.target.class_map


def test_sweep_finds_a_finished_run_of_the_same_resolved_config(tmp_path):
    from ddc import sweep
    from ddc.config import load
    # the hash names existing run directories: it must not change
    assert sweep.config_hash({"b": 1, "a": [2]}) == "57c78504"
    cfg = load(accuracy.REPO / "configs/usps_mnist.json", ["seed=1"]).to_dict()
    workdir = sweep.run_dir(tmp_path, "seed1", cfg)
    assert workdir == tmp_path / f"seed1-{sweep.config_hash(cfg)}"
    assert sweep.finished_run(tmp_path, "seed1", cfg, "meta.json") is None
    workdir.mkdir()
    # a run written before data.balance_source existed (its directory has another hash)
    legacy = json.loads(json.dumps(cfg))
    del legacy["data"]["balance_source"]
    old = tmp_path / f"seed1-{sweep.config_hash(legacy)}"
    old.mkdir()
    for d, res in ((workdir, 0.5), (old, 0.4)):
        (d / "config.json").write_text(json.dumps(legacy if d == old else cfg))
        (d / "results.json").write_text(json.dumps({"target_acc": res}))
    assert sweep.finished_run(tmp_path, "seed1", cfg, "meta.json") is None  # no meta: unfinished
    (workdir / "meta.json").write_text('{"total_wall_s": 3}')
    assert sweep.finished_run(tmp_path, "seed1", cfg, "meta.json") == (
        {"target_acc": 0.5}, {"total_wall_s": 3}, workdir)
    (old / "meta.json").write_text('{"total_wall_s": 4}')
    first = min(workdir, old)  # both runs of the config: the first by name
    assert sweep.finished_run(tmp_path, "seed1", cfg, "meta.json")[2] == first
    assert sweep.finished_run(tmp_path, "seed2", cfg, "meta.json") is None
    other = load(accuracy.REPO / "configs/usps_mnist.json", ["seed=1", "train.lr=0.1"]).to_dict()
    assert sweep.finished_run(tmp_path, "seed1", other, "meta.json") is None
    assert sweep.finished_run(tmp_path, "seed1", {"nonsense": 1}, "meta.json") is None
    # the benchmark's own names: seed<seed>-<hash>, accuracy_benchmark.json
    (workdir / accuracy.RUN_META).write_text('{"total_wall_s": 5}')
    (old / "meta.json").unlink()
    assert accuracy.finished_run(tmp_path, 1, cfg) == (
        {"target_acc": 0.5}, {"total_wall_s": 5}, workdir)


def test_effective_overrides_keep_the_last_value_of_a_key():
    assert accuracy.effective(["a=1", "b=2", "a=3"]) == ["b=2", "a=3"]


def test_model_selection_picks_among_our_cells_only_and_reports_targets_and_peers():
    def s(variant, method, src_val, acc, snd, entropy=0.5, train_s=10.0, bnm=0.1, im=1.0,
          agree=0.8):
        return {"task": "siri_whu_aid", "variant": variant, "method": method,
                "id": f"siri_whu_aid/{variant}/{method}", "source_val_acc": src_val,
                "target_acc": acc, "target_acc_std": 0.01, "target_acc_tta": acc + 0.02,
                "target_snd": snd, "target_entropy": entropy, "wall_time_s": train_s,
                "setup_time_s": 2.0, "target_bnm": bnm, "target_im": im,
                "target_agreement": agree}
    summaries = [
        s("frozen", "source_only", 0.90, 0.52, 5.90),
        s("frozen", "mcc_lam1", 0.88, 0.64, 6.00, entropy=0.1, bnm=0.5, im=2.0, agree=0.97),
        # collapsed: the highest SND and lowest entropy, its source accuracy gone
        s("frozen", "dann_lam1", 0.20, 0.08, 7.00, entropy=0.01, bnm=0.01, im=0.0, agree=0.3),
        s("frozen_224_d4_3000", "source_only", 0.91, 0.55, 5.80),
        s("frozen_224_d4_3000", "im_lam1", 0.89, 0.66, 5.95, bnm=0.3, im=1.5, agree=0.90),
        # best target acc: never used
        s("frozen_224_d4_3000", "mcc_lam1", 0.89, 0.71, 5.90, bnm=0.25, im=1.8, agree=0.93),
        s("frozen_224_d4_3000", "adapt_cdan", 0.88, 0.60, 9.00, train_s=12.5, bnm=9.0,
          agree=0.99),  # a peer
        {**s("frozen", "dan_lam1", 0.9, 0.5, 0.0), "target_snd": None},   # no SND ...
        {**s("frozen", "jmmd_lam1", 0.9, 0.5, 5.0, bnm=None, im=None, agree=None)}]  # no BNM..
    picks = {p["rule"]: p for p in accuracy.model_selection(summaries)}
    assert picks["snd_guarded"]["id"] == "siri_whu_aid/frozen/mcc_lam1"
    assert picks["snd"]["id"] == picks["entropy"]["id"] == "siri_whu_aid/frozen/dann_lam1"
    assert picks["source_val"]["id"] == "siri_whu_aid/frozen_224_d4_3000/source_only"
    # the variant whose source only validates best, then the highest SND within it
    assert picks["staged_snd"]["id"] == "siri_whu_aid/frozen_224_d4_3000/im_lam1"
    # the same variant, then the highest BNM (a score the peer's 9.0 does not enter)
    assert picks["staged_bnm"]["id"] == "siri_whu_aid/frozen_224_d4_3000/im_lam1"
    assert picks["staged_im"]["id"] == "siri_whu_aid/frozen_224_d4_3000/mcc_lam1"
    # ours: the same variant, then the highest agreement (not the peer's, nor the other input's)
    assert picks["staged_agree"]["id"] == "siri_whu_aid/frozen_224_d4_3000/mcc_lam1"
    # the cells with the rule's score (jmmd has SND but no BNM, IM or agreement; one without
    # SND is none's)
    assert {r: p["candidates"] for r, p in picks.items()} == {
        r: (6 if r in ("staged_bnm", "staged_im", "staged_agree") else 7) for r in picks}
    assert picks["staged_snd"]["best_cell"]["id"] == "siri_whu_aid/frozen_224_d4_3000/mcc_lam1"
    text = "\n".join(accuracy_report.targets(summaries, list(picks.values())))
    assert ("| siri_whu_aid | 70 | siri_whu_aid/frozen_224_d4_3000/mcc_lam1 | 71.0 ± 1.0 | 73.0 | "
            "**met** |") in text
    peers = "\n".join(accuracy_report.peer_comparison(summaries, list(picks.values())))
    assert ("+11.0 points from the best ADAPT cell (siri_whu_aid/frozen_224_d4_3000/adapt_cdan; "
            "the same variant") in peers
    assert "| siri_whu_aid/frozen_224_d4_3000/adapt_cdan | 60.0 ± 1.0 | 88.0 | 12.5 | 2.0 |" in peers


def test_bars_compare_each_ddc_cell_with_source_only_of_its_variant():
    def s(task, variant, method, acc):
        return {"task": task, "variant": variant, "method": method, "target_acc": acc,
                "id": f"{task}/{variant}/{method}"}
    checks = accuracy.check_bars([
        s("usps_mnist", "", "source_only", 0.6), s("usps_mnist", "", "ddc_gauss_biased", 0.91),
        s("usps_mnist", "", "ddc_linear_kernel", 0.85),
        s("siri_whu_aid", "frozen", "source_only", 0.54),
        s("siri_whu_aid", "frozen", "ddc_gauss_biased", 0.56),
        s("siri_whu_aid", "frozen_224_d4_3000", "source_only", 0.50),
        s("siri_whu_aid", "frozen_224_d4_3000", "ddc_gauss_biased", 0.56),
        s("siri_whu_aid", "frozen", "dann_lam1", 0.90)])  # the bars are DDC's: not checked
    assert [(c["id"], c["passed"]) for c in checks] == [
        ("usps_mnist//ddc_gauss_biased", True), ("usps_mnist//ddc_linear_kernel", False),
        ("siri_whu_aid/frozen/ddc_gauss_biased", False),
        ("siri_whu_aid/frozen_224_d4_3000/ddc_gauss_biased", True)]
    assert checks[3]["gain"] == pytest.approx(0.06)


@needs_digits
def test_smallest_cell_end_to_end_writes_the_row_and_resumes(tmp_path):
    args = ["--quick", "--only", "usps_mnist/source_only", "--seeds", "0", "--steps", "5",
            "--max-per-class", "10", "--runs", str(tmp_path / "runs"),
            "--data-root", str(DATA_ROOT), "--weights-root", str(WEIGHTS_ROOT)]
    text = accuracy.main(args)
    md = (tmp_path / "runs" / "RESULTS.md").read_text()
    assert md == text and "--only usps_mnist/source_only" in md.splitlines()[4]
    assert "target labels are used only" in md.lower()
    row = _rows(md)["usps_mnist/source_only"]
    assert row[2] == "1" and row[3] == "5"
    acc = float(row[4].split("±")[0])
    assert 0 <= acc <= 100
    data = json.loads((tmp_path / "runs" / "results.json").read_text())
    (cell,) = data["cells"]
    assert cell["steps"] == [5] and cell["config_seed0"]["align"] == {}
    assert "mmd" not in cell["config_seed0"] and cell["overrides"] == ["align={}"]
    assert cell["target_acc"] == pytest.approx(acc / 100, abs=5e-4)
    run_dir = cell["run_dirs"][0]
    assert json.loads(open(f"{run_dir}/results.json").read())["target_acc"] == cell["target_acc"]
    # a second invocation reads the finished run back instead of training again
    accuracy.main(args)
    again = json.loads((tmp_path / "runs" / "results.json").read_text())["cells"][0]
    assert again["run_dirs"] == [run_dir] and again["target_acc"] == cell["target_acc"]
    assert again["total_wall_s"] == cell["total_wall_s"]
    # the run saved its target predictions; alone in its group, its one seed is the consensus
    from ddc.paths import TARGET_PROBS
    saved = np.load(Path(run_dir) / TARGET_PROBS)
    assert saved.shape[1] == 10 and cell["target_agreement"] == 1.0
    # a run from before they were saved gets them by --rescore (the same checkpoint's)
    (Path(run_dir) / TARGET_PROBS).unlink()
    accuracy.main(args)
    assert not (Path(run_dir) / TARGET_PROBS).exists()
    assert json.loads((tmp_path / "runs" / "results.json").read_text())["cells"][0].get(
        "target_agreement") is None   # without predictions, no score
    # with --only, --rescore reaches the cells of --only (here a cell with no runs: --no-train)
    accuracy.main(args + ["--rescore", "--no-train", "--only", "usps_mnist/ddc_gauss_biased"])
    assert not (Path(run_dir) / TARGET_PROBS).exists()
    accuracy.main(args + ["--rescore"])
    np.testing.assert_allclose(np.load(Path(run_dir) / TARGET_PROBS), saved, atol=1e-3)
    (Path(run_dir) / "rescored.json").unlink()   # written by that rescoring
    # a run written before BNM and IM existed: --rescore recomputes them from its checkpoint
    res_path = Path(run_dir) / "results.json"
    res = json.loads(res_path.read_text())
    assert res["target_bnm"] == pytest.approx(cell["target_bnm"]) and cell["target_im"] >= 0
    res_path.write_text(json.dumps({k: v for k, v in res.items()
                                    if k not in ("target_bnm", "target_im")}))
    accuracy.main(args)  # without --rescore: the cell has no BNM
    assert json.loads((tmp_path / "runs" / "results.json").read_text())["cells"][0][
        "target_bnm"] is None
    accuracy.main(args + ["--rescore"])
    rescored = json.loads((Path(run_dir) / "rescored.json").read_text())
    assert rescored["target_bnm"] == pytest.approx(res["target_bnm"], rel=1e-6)
    assert rescored["target_im"] == pytest.approx(res["target_im"], rel=1e-6, abs=1e-9)
    again = json.loads((tmp_path / "runs" / "results.json").read_text())["cells"][0]
    assert again["target_bnm"] == pytest.approx(res["target_bnm"], rel=1e-6)
    assert rescored["source_val_dev"] == pytest.approx(res["source_val_dev"], rel=1e-6)
    # a rescored.json from before DEV: read back as it is, completed only by --rescore
    (Path(run_dir) / "rescored.json").write_text(json.dumps(
        {k: v for k, v in rescored.items() if k != "source_val_dev"}))
    res_path.write_text(json.dumps({k: v for k, v in res.items()
                                    if k not in ("target_bnm", "target_im", "source_val_dev")}))
    accuracy.main(args)
    again = json.loads((tmp_path / "runs" / "results.json").read_text())["cells"][0]
    assert again["source_val_dev"] is None and again["target_bnm"] == pytest.approx(
        res["target_bnm"], rel=1e-6)
    accuracy.main(args + ["--rescore"])
    again = json.loads((tmp_path / "runs" / "results.json").read_text())["cells"][0]
    assert again["source_val_dev"] == pytest.approx(res["source_val_dev"], rel=1e-6)
    assert res["source_val_dev"] > 0
    # a recomputation that does not reproduce the run's own evaluation is refused
    (Path(run_dir) / "rescored.json").unlink()
    res_path.write_text(json.dumps({**{k: v for k, v in res.items() if k != "target_bnm"},
                                    "target_acc": res["target_acc"] + 0.5}))
    with pytest.raises(RuntimeError, match="rescoring"):
        accuracy.main(args + ["--rescore"])
    assert not (Path(run_dir) / "rescored.json").exists()
    res_path.write_text(json.dumps(res))
    # --reuse: a new runs folder, the cell read back from the earlier results.json unrun...
    first = tmp_path / "first.json"
    first.write_text((tmp_path / "runs" / "results.json").read_text())
    fresh = args[:args.index("--runs")] + ["--runs", str(tmp_path / "fresh"), "--reuse", str(first)]
    md = accuracy.main(fresh)
    reused = json.loads((tmp_path / "fresh" / "results.json").read_text())["cells"][0]
    assert not (tmp_path / "fresh" / "usps_mnist").exists()
    assert reused["target_acc"] == cell["target_acc"] and str(first) in reused["reused_from"]
    assert _rows(md)["usps_mnist/source_only"][1].endswith("†") and "read back from" in md
    # ... but not when the config differs (here the number of steps)
    changed = [a if a != "5" else "6" for a in fresh]
    md = accuracy.main(changed)
    rerun = json.loads((tmp_path / "fresh" / "results.json").read_text())["cells"][0]
    assert rerun["steps"] == [6] and "reused_from" not in rerun
    assert (tmp_path / "fresh" / "usps_mnist").exists() and "†" not in md
    # finished run directories win over --reuse (a doctored copy of that cell is ignored)
    doctored = json.loads((tmp_path / "fresh" / "results.json").read_text())
    doctored["cells"][0]["target_acc"] = -1.0
    (tmp_path / "doctored.json").write_text(json.dumps(doctored))
    accuracy.main(changed[:-1] + [str(tmp_path / "doctored.json")])
    again = json.loads((tmp_path / "fresh" / "results.json").read_text())["cells"][0]
    assert again["target_acc"] == rerun["target_acc"] and "reused_from" not in again
    # a results file written before a config key existed matches with that key at its default
    legacy = json.loads(first.read_text())
    del legacy["cells"][0]["config_seed0"]["data"]["balance_source"]
    (tmp_path / "legacy.json").write_text(json.dumps(legacy))
    accuracy.main(fresh[:-1] + [str(tmp_path / "legacy.json")])
    old = json.loads((tmp_path / "fresh" / "results.json").read_text())["cells"][0]
    assert "legacy.json" in old["reused_from"] and old["target_acc"] == cell["target_acc"]
    assert old["config_seed0"]["data"]["balance_source"] is False
    # ... and one written with the old mmd block (mmd.weight=0 is source only, align={})
    older = json.loads(first.read_text())
    conf = older["cells"][0]["config_seed0"]
    del conf["align"], conf["train"]["steps_per_call"]
    conf["mmd"] = {"kernel": "gaussian", "estimator": "biased", "weight": 0.0,
                   "multipliers": [0.25, 0.5, 1.0, 2.0, 4.0], "schedule": "constant"}
    older["cells"][0]["overrides"] = ["mmd.weight=0"]
    (tmp_path / "older.json").write_text(json.dumps(older))
    md = accuracy.main(fresh[:-1] + [str(tmp_path / "older.json")])
    old = json.loads((tmp_path / "fresh" / "results.json").read_text())["cells"][0]
    assert "older.json" in old["reused_from"] and old["target_acc"] == cell["target_acc"]
    assert old["config_seed0"]["align"] == {} and "mmd" not in old["config_seed0"]
    # the overrides shown are the ones that make this config now (the old ones are refused)
    assert old["overrides"] == ["align={}"] and "mmd.weight=0" not in md
    # an old mmd block that differs (weight 0.5: not source only) does not match
    conf["mmd"]["weight"] = 0.5
    (tmp_path / "other.json").write_text(json.dumps(older))
    accuracy.main(fresh[:-1] + [str(tmp_path / "other.json")])
    other = json.loads((tmp_path / "fresh" / "results.json").read_text())["cells"][0]
    assert "reused_from" not in other and other["steps"] == [5]


@needs_digits
def test_a_registry_cell_runs_end_to_end_beside_source_only(tmp_path):
    # not --quick (which runs the registry's methods with cached features only); every output
    # under tmp_path (the full grid's default is docs/)
    runs = tmp_path / "runs"
    args = ["--only", "usps_mnist/source_only,usps_mnist/cdan_lam1", "--seeds", "0",
            "--steps", "3", "--max-per-class", "8", "--runs", str(runs),
            "--out", str(runs / "RESULTS.md"), "--json", str(runs / "results.json"),
            "--data-root", str(DATA_ROOT), "--weights-root", str(WEIGHTS_ROOT)]
    md = accuracy.main(args)
    assert (runs / "RESULTS.md").read_text() == md and "reduced grid" in md
    data = json.loads((tmp_path / "runs" / "results.json").read_text())
    cells = {c["id"]: c for c in data["cells"]}
    assert list(cells) == ["usps_mnist/source_only", "usps_mnist/cdan_lam1"]
    cdan = cells["usps_mnist/cdan_lam1"]
    assert list(cdan["config_seed0"]["align"]) == ["cdan"]
    assert cdan["config_seed0"]["align"]["cdan"]["weight"] == 1.0 and cdan["steps"] == [3]
    row = _rows(md)["usps_mnist/cdan_lam1"]
    assert row[1].startswith("cdan: CDAN") and row[5].startswith(("+", "-"))  # Δ vs source only
    assert data["bars"] == []  # no DDC cell ran
    log = json.loads(open(f"{cdan['run_dirs'][0]}/results.json").read())
    assert log["target_acc"] == cdan["target_acc"]
    # a later --only of one cell (here a finished one, read back) trains only that cell but
    # reports the whole grid: the other finished cell stays in the report, in the grid's order
    only = args[:args.index("--only") + 1] + ["usps_mnist/cdan_lam1"] + args[
        args.index("--only") + 2:]
    md = accuracy.main(only)
    again = json.loads((runs / "results.json").read_text())["cells"]
    assert [c["id"] for c in again] == ["usps_mnist/source_only", "usps_mnist/cdan_lam1"]
    assert [c["target_acc"] for c in again] == [cells[c["id"]]["target_acc"] for c in again]
    assert [c["run_dirs"] for c in again] == [cells[c["id"]]["run_dirs"] for c in again]
    assert "usps_mnist/source_only" in _rows(md)
    # an invocation stopped in its second trained cell has written, after its first, a report
    # of the whole grid: the finished cells read back before anything trained, and the new one
    real = accuracy_run.run_cell_seed

    def stop_at_im(cell, *a, **k):
        if cell.method.name == "im_lam1":
            raise KeyboardInterrupt
        return real(cell, *a, **k)

    two = args[:args.index("--only") + 1] + ["usps_mnist/mcc_lam1,usps_mnist/im_lam1"] + args[
        args.index("--only") + 2:]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(accuracy_run, "run_cell_seed", stop_at_im)
        with pytest.raises(KeyboardInterrupt):
            accuracy.main(two)
    left = json.loads((runs / "results.json").read_text())["cells"]
    assert [c["id"] for c in left] == ["usps_mnist/source_only", "usps_mnist/mcc_lam1",
                                       "usps_mnist/cdan_lam1"]
    assert [c["target_acc"] for c in left if c["id"] in cells] == [
        cells[c["id"]]["target_acc"] for c in left if c["id"] in cells]


def test_reuse_rejects_a_file_that_is_not_a_results_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"cells": 3}')
    with pytest.raises(SystemExit, match="bad.json"):
        accuracy.load_reusable(str(bad))


# the cells of docs/RESULTS.md whose recipes the shipped configs are: configs/siri_whu.json and
# configs/usps_mnist.json the picks of the label-free rule we call ours (DEFAULT_RULE), and
# configs/siri_whu_finetune.json a source only
SHIPPED = {"configs/siri_whu.json": "siri_whu_aid/frozen_224_d4_3000_bn/mmd+mcc",
           "configs/usps_mnist.json": "usps_mnist/tllib/mcc+im",
           "configs/siri_whu_finetune.json": "siri_whu_aid/frozen_224_d4_3000/source_only"}
# keys that change what a run logs, keeps or caches, not what it trains
NOT_TRAINING = {"name", "seed", "data.cache", "data.cache_dir", "train.eval_every",
                "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                "train.eval_batch_size"}


@pytest.mark.parametrize("path", sorted(SHIPPED))
def test_shipped_config_trains_as_its_grid_cell(path):
    from ddc.config import load
    from ddc.config.flatten import flatten_config
    cell = next(c for c in accuracy.build_grid(False, [SHIPPED[path]], []))
    want = flatten_config(load(accuracy.REPO / cell.task.base, cell.overrides(0)).to_dict())
    got = flatten_config(load(accuracy.REPO / path).to_dict())
    differ = {k for k in set(want) | set(got) if want.get(k) != got.get(k)} - NOT_TRAINING
    assert not differ, {k: (got.get(k), want.get(k)) for k in sorted(differ)}


def test_shipped_recipes_are_the_picks_of_our_rule_in_the_committed_results():
    from ddc.selection import DEFAULT_RULE
    picks = {p["task"]: p["id"] for p in json.loads(
        (REPO / "docs" / "results.json").read_text())["model_selection"]
        if p["rule"] == DEFAULT_RULE}
    assert SHIPPED["configs/siri_whu.json"] == picks["siri_whu_aid"]
    assert SHIPPED["configs/usps_mnist.json"] == picks["usps_mnist"]


def test_no_train_reports_what_is_there_and_trains_nothing(tmp_path):
    out = tmp_path / "R.md"
    text = accuracy.main(["--no-train", "--only", "usps_mnist/source_only,usps_mnist/cdan_lam1",
                          "--runs", str(tmp_path / "runs"), "--out", str(out)])
    # --only limits what trains; the report counts the whole grid
    total = len(accuracy.build_grid(quick=False, only=None, extra=[]))
    assert out.read_text() == text and f"0 of {total} cells done" in text
    assert not (tmp_path / "runs" / "usps_mnist").exists()


def test_the_committed_results_are_reported_whole_by_no_train_reuse(tmp_path):
    """``--no-train --reuse docs/results.json`` on a machine with no run directories (and,
    in CI, without ADAPT) reports every cell of the committed file: ADAPT's peer cells are read
    back, not skipped for want of the package."""
    committed = REPO / "docs" / "results.json"
    before = json.loads(committed.read_text())
    out = tmp_path / "R.md"
    accuracy.main(["--no-train", "--seeds", ",".join(map(str, before["seeds"])), "--reuse",
                   str(committed), "--runs", str(tmp_path / "runs"), "--out", str(out)])
    after = json.loads((tmp_path / "results.json").read_text())
    assert [c["id"] for c in after["cells"]] == [c["id"] for c in before["cells"]]
    assert any(c["id"].endswith("/adapt_cdan") for c in after["cells"])
    assert [c["target_acc"] for c in after["cells"]] == [c["target_acc"] for c in before["cells"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["R.md", "results.json"]  # no temporary


def test_reductions_compare_each_cells_steps_with_the_grids_own_for_it():
    """A variant that trains 3000 steps by design is not a reduction; a cell trained for other
    steps than the grid gives it (--steps, --quick) is named with both counts."""
    def s(cell_id, steps):
        return {"id": cell_id, "task": cell_id.split("/")[0], "steps": steps}
    summaries = [s("siri_whu_aid/frozen/source_only", [1000, 1000, 1000]),
                 s("siri_whu_aid/frozen_224_d4_3000/source_only", [3000, 3000, 3000])]
    assert not [l for l in accuracy_report.reductions([], summaries, [0, 1, 2], False)
                if "steps" in l]
    summaries.append(s("siri_whu_aid/frozen_224_d4_3000/mcc_lam1", [200, 200, 200]))
    steps = [l for l in accuracy_report.reductions([], summaries, [0, 1, 2], False)
             if "steps" in l]
    assert steps == ["siri_whu_aid: 1 cell(s) trained for 200 steps instead of the grid's "
                     "3000: siri_whu_aid/frozen_224_d4_3000/mcc_lam1"]
