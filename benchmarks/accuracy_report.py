"""The accuracy benchmark's report: bars, λ and model chosen without target labels, and the
markdown ``docs/RESULTS.md`` and ``results.json`` written from the cells' summaries
(``accuracy_run.summarize``). The selection rules themselves are ``ddc.selection``'s.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from benchmarks import accuracy_grid as grid

# how the rule we call ours came to be (the report states it under its selection table)
HISTORY = (
    "How it came to be, disclosed in full because every change was made after some target "
    "accuracies had been printed. `snd_guarded` was fixed before the first full grid, with a "
    "1-point guard; the first run of the D4 variant (SIRI-WHU -> AID, seed 0) showed every "
    "adapted cell giving up 1.2 to 3.7 points of source validation accuracy, so the guard was "
    "widened to 5 points (a bound against collapse, not a tuned value). It then picked IM on "
    "128 px features over the 224 px cells by an SND difference inside the seed spread, so the "
    "next report's rule, `staged_snd`, left the choice of input (resolution, views, schedule) "
    "to each variant's source-only source accuracy and asked SND only which method. That "
    "report (50c7b5f) found SND rewarding collapse: `staged_snd` picked entropy minimisation "
    "on both MobileNetV2 tasks, whose target predictions use the classes least evenly, and "
    "source only on USPS -> MNIST; `staged_snd_diverse` (a collapse guard added after those "
    "accuracies were seen) is printed, not called ours. `staged_bnm` was then pre-registered "
    "(commit 6f3648f) before the BNM of any run was computed: the same two stages with BNM in "
    "SND's place, chosen because a collapse scores low on it by construction and because it was "
    "the best target-only validator of Musgrave et al. 2022's benchmark of 1,000,000 "
    "checkpoints. Whoever chose it had seen these tasks' target accuracies (not their BNM), so "
    "its picks here are a weaker test than on a new target domain; `staged_im` is printed "
    "beside it. `staged_bnm` then picked IM or a pair with IM on SIRI-WHU -> AID, AID -> "
    "SIRI-WHU and MNIST -> USPS where MCC alone scored higher: BNM rewards what IM's loss "
    "maximises (confident predictions spread evenly over the classes). `staged_agree` replaced "
    "it as ours on 2026-12-07, pre-registered (commit b46b78f, before the agreement of any run "
    "was computed): the same two stages, then the highest agreement with the consensus of the "
    "group's eligible runs, a score no method optimises. Whoever chose it had seen every target "
    "accuracy of this grid (not the agreement); `staged_bnm` stays printed beside it.")


def check_bars(summaries: list[dict]) -> list[dict]:
    """Each DDC cell (the ``mmd`` term's) against its task's bar: beats source only (same task
    and variant) on the mean over seeds by more than ``min_gain``, and reaches
    ``min_ddc_acc``. The other methods' cells are compared in the tables (``Δ``), not barred."""
    base = {(s["task"], s["variant"]): s for s in summaries if s["method"] == "source_only"}
    checks = []
    for s in summaries:
        if (grid.method_term(s["task"], s["method"]) != "mmd"
                or (s["task"], s["variant"]) not in base):
            continue
        task = grid.TASKS_BY_NAME[s["task"]]
        gain = s["target_acc"] - base[(s["task"], s["variant"])]["target_acc"]
        ok = gain > task.min_gain and (task.min_ddc_acc is None or s["target_acc"] >= task.min_ddc_acc)
        checks.append({"id": s["id"], "bar": task.bar, "target_acc": s["target_acc"],
                       "gain": gain, "passed": ok})
    return checks


def _source_only_value(summaries: list[dict], key: str):
    """``cell -> value``: ``key`` of the source-only cell of the same task and variant (None
    where there is none), e.g. its ``source_val_acc``: the staged rules' reference."""
    base = {(s["task"], s["variant"]): s for s in summaries if s["method"] == "source_only"}

    def value(s):
        ref = base.get((s["task"], s["variant"]))
        return ref.get(key) if ref else None
    return value


def _run_predictions(cell: dict):
    """The target softmax predictions of each seed of ``cell`` from its run directories
    (``ddc.paths.TARGET_PROBS``), or None if a run directory or its file is missing."""
    from ddc.report.runs import load_target_probs

    dirs = cell.get("run_dirs") or []
    probs = [load_target_probs(d if Path(d).is_absolute() else grid.REPO / d) for d in dirs]
    return probs if probs and all(p is not None for p in probs) else None


def add_agreement(summaries: list[dict]) -> None:
    """Sets each of our cells' ``target_agreement`` (the ``staged_agree`` score,
    ``ddc.selection.group_agreement``: its runs' agreement with the consensus of the eligible
    cells of its task and variant) where every such cell's run directories hold their target
    predictions; elsewhere a cell keeps the value it was read back with (``--reuse``), which was
    computed against the group as it was then."""
    from ddc.selection import group_agreement

    reference = _source_only_value(summaries, "source_val_acc")
    for task in grid.TASKS:
        cells = [s for s in summaries if s["task"] == task.name
                 and not grid.method_peer(s["task"], s["method"])]
        scores = group_agreement(cells, _run_predictions, reference_source_val=reference,
                                 group=lambda c: c["variant"])
        for cell, a in zip(cells, scores):
            if a is not None:
                cell["target_agreement"] = a


def model_selection(summaries: list[dict]) -> list[dict]:
    """For each task and each rule of ``ddc.selection.RULES``: the cell it picks among the
    task's cells that have the rule's score (mean over seeds; cells read back from a file
    without SND are not candidates), and, for honesty only, the best cell by target accuracy
    among the same candidates. ``snd_guarded`` compares each cell with its own variant's source
    only; ``staged_snd`` first takes the variant whose source only validates best. Target
    accuracy is looked up only after the choice."""
    from ddc.selection import RULES, score, select

    reference = _source_only_value(summaries, "source_val_acc")
    spread = _source_only_value(summaries, "target_pred_entropy")

    def row(s):
        return {k: s.get(k) for k in ("id", "target_acc", "target_acc_std", "target_acc_tta",
                                      "source_val_acc", "target_snd", "target_entropy",
                                      "target_pred_entropy", "target_bnm", "target_im",
                                      "target_agreement", "source_val_dev")}

    out = []
    for task in grid.TASKS:
        cands = [s for s in summaries if s["task"] == task.name and s.get("target_snd") is not None
                 and not grid.method_peer(s["task"], s["method"])]  # ours only
        if not cands:
            continue
        oracle = max(cands, key=lambda s: s["target_acc"])
        for rule in RULES:
            pick = select(cands, rule, reference_source_val=reference,
                          group=lambda c: c["variant"], reference_spread=spread)
            if pick is None:  # no cell has the rule's score (read back from an older file)
                continue
            n = sum(score(c, rule) is not None for c in cands)
            out.append({"task": task.name, "rule": rule, "candidates": n, **row(pick),
                        "best_cell": row(oracle)})
    return out


def peer_comparison(summaries: list[dict], picks: list[dict]) -> list[str]:
    """Markdown: the cell our rule picked against ADAPT's cells of the same task (each peer in
    every variant it ran), with each cell's training time; empty where no peer cell ran."""
    from ddc.selection import DEFAULT_RULE

    lines = []
    by_id = {s["id"]: s for s in summaries}
    for p in picks:
        if p["rule"] != DEFAULT_RULE:
            continue
        peers = [s for s in summaries if s["task"] == p["task"]
                 and grid.method_peer(s["task"], s["method"])]
        if not peers:
            continue
        ours = by_id[p["id"]]
        # the peers of our pick's own variant: the same frozen features, steps and seeds
        same = [s for s in peers if s["variant"] == ours["variant"]]
        best = max(same or peers, key=lambda s: s["target_acc"])
        margin = 100 * (ours["target_acc"] - best["target_acc"])
        lines += [f"### {p['task']}: our pick against ADAPT", "",
                  f"Our pick ({DEFAULT_RULE}) is {margin:+.1f} points from the best ADAPT cell "
                  f"({best['id']}"
                  + ("; the same variant: the same frozen features, steps and seeds" if same
                     else "; no ADAPT cell ran in our pick's variant")
                  + "); the issue's bar is +3. ADAPT reads the identity view's features (it "
                  "has no D4 draw) with its own batches.", "",
                  "| cell | target acc | src val | train s per run | setup s per run |",
                  "|---|---|---|---|---|"]
        for s in [ours] + sorted(peers, key=lambda s: s["id"]):
            lines.append(f"| {s['id']}{' (ours)' if s is ours else ''} | "
                         f"{_pct(s['target_acc'], s['target_acc_std'])} | "
                         f"{_pct(s['source_val_acc'])} | {s.get('wall_time_s') or 0:.1f} | "
                         f"{s.get('setup_time_s') or 0:.1f} |")
        lines.append("")
    return lines


def _pct(mean, std=None) -> str:
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def _num(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _machine() -> str:
    import keras
    import tensorflow as tf

    from benchmarks.common import cpu_model
    cpu = cpu_model()
    gpus = tf.config.list_physical_devices("GPU")
    load = "%.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else "n/a"
    return (f"nproc={os.cpu_count()}, CPU: {cpu}, "
            + (f"GPU: {', '.join(g.name for g in gpus)}" if gpus else "no GPU")
            + f"; tensorflow {tf.__version__}, keras {keras.__version__}, python "
            f"{platform.python_version()}; load average at the end (1/5/15 min): {load} "
            "(a shared machine: wall times are indicative only)")


def targets(summaries: list[dict], picks: list[dict]) -> list[str]:
    """Markdown: each task's target against the cell our rule picked (and, not used, the best
    cell and the best cell with D4 test-time augmentation)."""
    from ddc.selection import DEFAULT_RULE

    ours = {p["task"]: p for p in picks if p["rule"] == DEFAULT_RULE}
    rows = []
    for task in grid.TASKS:
        if task.target is None or task.name not in ours:
            continue
        p = ours[task.name]
        tta = p.get("target_acc_tta")
        met = p["target_acc"] >= task.target
        rows.append(f"| {task.name} | {100 * task.target:.0f} | {p['id']} | "
                    f"{_pct(p['target_acc'], p['target_acc_std'])} | {_pct(tta)} | "
                    f"{'**met**' if met else 'not met'} | "
                    f"{p['best_cell']['id']}: {_pct(p['best_cell']['target_acc'])} |")
    if not rows:
        return []
    return ["## Targets", "",
            f"Our number is the target accuracy of the cell `{DEFAULT_RULE}` picked without "
            "target labels (see *Model chosen without target labels*); `with D4 TTA` is the same "
            "model's softmax averaged over the 8 views (label-free too, where the cell ran it). "
            "The best cell is printed for honesty and never used.", "",
            "| task | target % | our pick | target acc | with D4 TTA | | best cell (not used) |",
            "|---|---|---|---|---|---|---|", *rows, ""]


def render(summaries: list[dict], checks: list[dict], command: str, machine: str, date: str,
           notes: list[str], picks: list[dict] | None = None, reading: str = "") -> str:
    """The markdown report (``reading``: markdown appended as its last section)."""
    lines = ["# Accuracy benchmark: DDC and the other alignment methods vs source only", "",
             "Generated by `benchmarks/accuracy.py`; do not edit by hand.", "",
             f"- command: `{command}`", f"- machine: {machine}", f"- date: {date}",
             f"- hyperparameters: {grid.HYPERPARAMETER_RULE}", ""]
    for note in notes:
        lines.append(f"- {note}")
    if notes:
        lines.append("")
    lines += targets(summaries, picks or [])
    lines += ["Accuracies in %, mean ± std over the seeds. `Δ` is the method minus source only "
              "(same task and backbone variant). `src val` is source validation accuracy at the final "
              "step. `setup s` is the run's own `setup_time_s`: decoding (or reading the image cache), "
              "building the network and, in mode \"features\", extracting the frozen part's output "
              "or reading it from the disk cache; `train s` the training loop with its evaluations.", ""]
    by_task: dict = {}
    for s in summaries:
        by_task.setdefault(s["task"], []).append(s)
    for task in grid.TASKS:
        rows = by_task.get(task.name)
        if not rows:
            continue
        common = " ".join(f"`--set {o}`" for o in rows[0]["common_overrides"]) or "none"
        lines += [f"## {task.title}", "", f"Base config `{task.base}`; bar: {task.bar}. "
                  f"Classes ({len(rows[0]['classes'])}): {', '.join(rows[0]['classes'])}.",
                  f"Overrides of every run of this task: {common}; each row adds its own, "
                  "and `--set seed=<seed>`."]
        dropped = {k: v for k, v in rows[0]["dropped_classes"].items() if v}
        if dropped:
            lines.append("Dropped for lack of a counterpart: " + "; ".join(
                f"{k}: {', '.join(v)}" for k, v in dropped.items()) + ".")
        lines += ["", "| cell | method | seeds | steps | target acc | Δ | with D4 TTA | "
                  "mean per-class acc | target acc @ best src val | src val | SND | setup s | "
                  "train s | overrides |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        base = {s["variant"]: s for s in rows if s["method"] == "source_only"}
        for s in rows:
            title = (grid.method_title(s["task"], s["method"])
                     + (" †" if s.get("reused_from") else ""))
            ref = base.get(s["variant"])
            delta = ("" if s["method"] == "source_only" or ref is None
                     else f"{100 * (s['target_acc'] - ref['target_acc']):+.1f}")
            setup = s.get("setup_time_s")  # older results: everything but the training loop
            setup = (s["total_wall_s"] or 0) - (s["wall_time_s"] or 0) if setup is None else setup
            over = " ".join(f"`--set {o}`" for o in s["overrides"])
            lines.append(
                f"| {s['id']} | {title} | {len(s['seeds'])} | {'/'.join(map(str, s['steps']))} | "
                f"{_pct(s['target_acc'], s['target_acc_std'])} | {delta} | "
                f"{_pct(s.get('target_acc_tta'), s.get('target_acc_tta_std'))} | "
                f"{_pct(s['target_mean_class_acc'], s['target_mean_class_acc_std'])} | "
                f"{_pct(s['target_acc_at_best_source_val'], s['target_acc_at_best_source_val_std'])} | "
                f"{_pct(s['source_val_acc'])} | "
                f"{'' if s.get('target_snd') is None else format(s['target_snd'], '.3f')} | "
                f"{setup:.0f} | {s['wall_time_s']:.0f} | {over} |")
        lines.append("")
    if picks:
        from ddc.selection import DEFAULT_RULE, RULES, SOURCE_GUARD
        lines += ["## Model chosen without target labels", "",
                  "Each rule picks one cell of a task among its cells that have the rule's score "
                  "(mean over seeds; cells read back from an earlier file without SND are not "
                  "candidates). Rules (`ddc.selection`): "
                  + "; ".join(f"`{k}`: {v.replace('SOURCE_GUARD', f'{100 * SOURCE_GUARD:g} points')}"
                              for k, v in RULES.items())
                  + f". **`{DEFAULT_RULE}` is the rule whose pick we call ours.** " + HISTORY
                  + " No rule reads a target label. `best cell` is the candidate with the "
                  "highest target accuracy, printed for honesty and never used.", "",
                  "`pred. class entropy` is the entropy (nats) of the target's predicted-class "
                  "distribution (log 11 = 2.398 for 11 classes used equally; 0: one class); "
                  "`BNM` the nuclear norm of the target softmax matrix over the number of "
                  "samples, `IM` the information-maximisation score (nats), `DEV` deep embedded "
                  "validation (an estimate of the target cross-entropy from the source "
                  "validation set; lower is better; only runs trained or rescored since DEV "
                  "existed have it, and the rules `dev` and `staged_dev` choose among those); "
                  "`agreement` the share (%) of target samples the picked cell's runs put in "
                  "the class of its group's consensus (only groups whose every eligible run "
                  "has saved or rescored target predictions have it).",
                  "",
                  "| task | rule | candidates | picked cell | target acc | with D4 TTA | src val | "
                  "SND | BNM | IM | agreement | DEV | entropy | pred. class entropy | "
                  "best cell (not used) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p in picks:
            b = p["best_cell"]
            mark = "**" if p["rule"] == DEFAULT_RULE else ""
            lines.append(
                f"| {p['task']} | {mark}{p['rule']}{mark} | {p['candidates']} | {p['id']} | "
                f"{mark}{_pct(p['target_acc'], p['target_acc_std'])}{mark} | "
                f"{_pct(p['target_acc_tta'])} | {_pct(p['source_val_acc'])} | "
                f"{p['target_snd']:.3f} | {_num(p.get('target_bnm'), '.4f')} | "
                f"{_num(p.get('target_im'))} | {_pct(p.get('target_agreement'))} | "
                f"{_num(p.get('source_val_dev'))} | "
                f"{p['target_entropy']:.3f} | "
                f"{_num(p.get('target_pred_entropy'))} | "
                f"{b['id']}: {_pct(b['target_acc'], b['target_acc_std'])} |")
        lines.append("")
        lines += peer_comparison(summaries, picks)
    if checks:
        lines += ["## Bars", "", f"- DDC cells: {sum(c['passed'] for c in checks)} of "
                  f"{len(checks)} pass their task's bar."]
        lines += ["", "| cell | bar | target acc | Δ vs source only | passed |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c['id']} | {c['bar']} | {_pct(c['target_acc'])} | {100 * c['gain']:+.1f} | "
                  f"{'yes' if c['passed'] else '**no**'} |" for c in checks]
        lines.append("")
    if reading:
        lines += [reading.strip(), ""]
    lines += ["## Exact configs", "",
              "Each run is `python scripts/train_ddc.py --config <base> --set ...` with the overrides "
              "of its row plus `--set seed=<seed>` (and a `name`). The resolved config of seed 0 of "
              "each cell:", ""]
    for s in summaries:
        lines += [f"<details><summary>{s['id']}</summary>", "", "```json",
                  json.dumps(s["config_seed0"], indent=1), "```", "", "</details>", ""]
    return "\n".join(lines)


def reductions(cells: list[grid.Cell], summaries: list[dict], seeds: list[int],
               quick: bool) -> list[str]:
    """Lines saying how this report differs from the full grid (cells, seeds, steps)."""
    lines = []
    if quick:
        lines.append("**quick grid** (`--quick`: fewer steps and images, frozen MobileNetV2 only; "
                     "the registry's other methods at one λ, frozen MobileNetV2 only): a smoke "
                     "run, not the benchmark")
    done = {s["id"] for s in summaries}
    missing = [c.id for c in grid.build_grid(False, None, []) if c.id not in done]
    if missing and not quick:
        lines.append(f"**reduced grid**: {len(missing)} of {len(missing) + len(done)} cells not "
                     f"run: {', '.join(missing)}")
    if seeds != [0, 1, 2]:
        lines.append(f"seeds: {', '.join(map(str, seeds))} (the full grid uses 0, 1, 2)")
    # steps: each cell against the grid's own for it (its base config's, or its variant's
    # train.steps), so a variant that trains longer by design is not reported as a change
    base_steps = {t.name: json.loads((grid.REPO / t.base).read_text()).get("train", {}).get(
        "steps", 1000) for t in grid.TASKS}
    expected = {}
    for c in grid.build_grid(False, None, []):
        base = base_steps[c.task.name]
        set_steps = [o for o in c.task.overrides + c.own if o.startswith("train.steps=")]
        expected[c.id] = int(set_steps[-1].split("=", 1)[1]) if set_steps else base
    for task in grid.TASKS:
        off = {}  # (steps trained, the grid's) -> cells
        for s in summaries:
            if s["task"] == task.name and set(s["steps"]) != {expected.get(s["id"])}:
                key = ("/".join(map(str, sorted(set(s["steps"])))), expected.get(s["id"]))
                off.setdefault(key, []).append(s["id"])
        for (trained_steps, grid_steps), ids in off.items():
            lines.append(f"{task.name}: {len(ids)} cell(s) trained for {trained_steps} steps "
                         f"instead of the grid's {grid_steps}: {', '.join(ids)}")
    return lines


def _write_report(args, cells, seeds, summaries, out_md, out_json, command,
                  elapsed: float) -> str:
    checks = check_bars(summaries)
    date = time.strftime("%Y-%m-%d %H:%M %Z")
    notes = reductions(cells, summaries, seeds, args.quick) + list(args.note)
    origins = sorted({s["reused_from"] for s in summaries if s.get("reused_from")})
    if origins:
        n = sum(bool(s.get("reused_from")) for s in summaries)
        notes.append(f"† {n} cells read back from {'; '.join(origins)} (`--reuse`: that run's "
                     "summaries, with the identical resolved config and seeds; their run "
                     "directories are not kept). Leave `--reuse` out to rerun them.")
    own = [w for s in summaries for w in (s.get("total_wall_s_per_seed") or [])
           if w is not None]
    notes.append(f"{len(summaries)} of {len(cells)} cells done; {elapsed:.0f} s in this "
                 "invocation (runs read back from earlier invocations cost ~0 s); the runs' own "
                 f"wall times add up to {sum(own) / 60:.0f} min ({len(own)} runs, each from its "
                 "start to its results, feature extraction included where a run did it)")
    extracted = sum(s.get("features_extracted") or 0 for s in summaries)
    cached = sum(s.get("features_from_cache") or 0 for s in summaries)
    if extracted or cached:
        notes.append(
            "mode \"features\" runs read the frozen part's output from the library's disk cache "
            "(`ddc.train.feature_cache`, as a CLI run does): the first run of a backbone variant "
            f"extracts it; {extracted} views extracted, {cached} read from the cache by the runs "
            "of this report. `setup s` is what the same config costs from the command line.")
    add_agreement(summaries)
    picks = model_selection(summaries)
    reading = Path(args.reading).read_text() if getattr(args, "reading", None) else ""
    text = render(summaries, checks, command, _machine(), date, notes, picks, reading)
    _write_whole(out_md, text)
    _write_whole(out_json, json.dumps({"command": command, "date": date, "machine": _machine(),
                                       "hyperparameter_rule": grid.HYPERPARAMETER_RULE,
                                       "seeds": seeds, "cells": summaries, "bars": checks,
                                       "model_selection": picks}, indent=1))
    return text


def _write_whole(path: Path, text: str) -> None:
    """The report and the results file that a later ``--reuse`` reads (often the same path as
    this run's ``--reuse``), never torn: ``ddc.train.rundir.write_text_atomic``."""
    from ddc.train.rundir import write_text_atomic
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
