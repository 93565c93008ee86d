"""``compare_runs``: one markdown table of several runs: the config keys that differ, results,
and which run the label-free rule ``staged_agree`` picks among them."""

from __future__ import annotations

from pathlib import Path

from ddc.report.runs import ReportError, load_target_probs, read_json
from ddc.config.flatten import flatten_config

RESULT_COLUMNS = (("target_acc", "target acc"), ("target_mean_class_acc", "mean per-class acc"),
                  ("best_source_val_acc", "best source val acc"), ("steps", "steps"),
                  ("wall_time_s", "wall time"), ("source_val_acc", "source val acc"),
                  ("target_agreement", "agreement"))


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v).replace("|", "\\|")


def _wall(s) -> str:
    if s is None:
        return "—"
    s = float(s)
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def differing_keys(configs: list[dict]) -> list[str]:
    """Dotted config keys whose values are not the same in every config (absent counts)."""
    flat = [flatten_config(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    missing = object()
    return [k for k in keys if len({repr(f.get(k, missing)) for f in flat}) > 1]


def _predictions(run: dict):
    probs = load_target_probs(run["dir"])
    return None if probs is None else [probs]


def label_free_pick(workdirs: list, configs: list[dict], results: list) -> tuple[list, str]:
    """Each run's agreement with the soft vote of the eligible finished runs (the runs as one
    group of ``ddc.selection.group_agreement``; None where there is none) and a line naming the
    run ``staged_agree`` picks, or saying why there is no pick. Eligible: a source validation
    accuracy at most ``SOURCE_GUARD`` below the mean of the source-only runs among them (no
    alignment term), or, without one, below the best of them."""
    from ddc.selection import SOURCE_GUARD, group_agreement, select

    runs = [{"dir": w, "source_val_acc": (r or {}).get("source_val_acc"),
             "source_only": not c.get("align")}
            for w, c, r in zip(workdirs, configs, results)]
    done = [r for r in runs if r["source_val_acc"] is not None]  # finished, with validation
    if len(done) < 2:
        return [None] * len(runs), ""
    plain = [r["source_val_acc"] for r in done if r["source_only"]]
    ref = sum(plain) / len(plain) if plain else max(r["source_val_acc"] for r in done)
    what = "the source-only runs' mean" if plain else "the best of these runs"
    for r in done:  # read first: a file that is not an array is a ReportError naming it
        r["probs"] = _predictions(r)
    try:
        scores = group_agreement(done, lambda r: r["probs"], reference_source_val=lambda r: ref,
                                 group=lambda r: 0)
    except ValueError:  # the runs' predictions differ in shape
        return [None] * len(runs), ("No label-free pick: these runs predicted different numbers "
                                    "of target samples or classes (not the same target).")
    for r, a in zip(done, scores):
        r["target_agreement"] = a
    if all(a is None for a in scores):
        return [None] * len(runs), (
            "No label-free pick: an eligible run has no saved target predictions "
            "(eval/target_probs.npy; `ddc.train.rescore` recomputes them for an older run).")
    pick = select(done, "staged_agree", reference_source_val=ref)
    line = (f"Label-free pick (`staged_agree` over these runs as one group): {pick['dir']}, the "
            "highest agreement with the soft vote of the runs whose source validation accuracy "
            f"is at most {100 * SOURCE_GUARD:g} points below {what} ({ref:.4f}). No target "
            "label is read.")
    return [r.get("target_agreement") for r in runs], line


def compare_runs(workdirs: list) -> str:
    """The markdown table: one row per run, its differing config keys, then its results.

    Raises:
        ReportError: a folder without ``config.json``.
    """
    configs, results = [], []
    for w in workdirs:
        cfg = read_json(Path(w) / "config.json")
        if cfg is None:
            raise ReportError(f"{w}: not a run directory (no config.json)")
        configs.append(cfg)
        results.append(read_json(Path(w) / "results.json"))
    keys = differing_keys(configs)
    flat = [flatten_config(c) for c in configs]
    agreement, pick_line = label_free_pick(workdirs, configs, results)
    results = [r if r is None else {**r, "target_agreement": a}
               for r, a in zip(results, agreement)]
    head = ["run"] + keys + [title for _, title in RESULT_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w, f, r in zip(workdirs, flat, results):
        # config values as written (0.5, not 0.5000); absent keys as a dash
        cells = [_fmt(str(w))] + [_fmt(str(f[k])) if k in f else "—" for k in keys]
        if r is None:
            cells += ["unfinished"] + ["—"] * (len(RESULT_COLUMNS) - 1)
        else:
            cells += [_wall(r.get(key)) if key == "wall_time_s" else _fmt(r.get(key))
                      for key, _ in RESULT_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    if not keys and len(workdirs) > 1:
        lines.append("")
        lines.append("The runs' configs are identical.")
    if pick_line:
        lines += ["", pick_line]
    return "\n".join(lines) + "\n"
