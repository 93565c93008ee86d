"""``compare_runs``: one markdown table of several runs: the config keys that differ, and results."""

from __future__ import annotations

from pathlib import Path

from ddc.report.runs import ReportError, read_json
from ddc.config.flatten import flatten_config

RESULT_COLUMNS = (("target_acc", "target acc"), ("target_mean_class_acc", "mean per-class acc"),
                  ("best_source_val_acc", "best source val acc"), ("steps", "steps"),
                  ("wall_time_s", "wall time"))


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
    return "\n".join(lines) + "\n"
