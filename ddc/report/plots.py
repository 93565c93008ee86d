"""Report pictures as PNG files: confusion matrix, prediction grid, learning curves, embeddings.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot): no global state, no display
needed, safe inside a training process. Each function writes ``path`` and returns it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

DPI = 110


def _save(fig: Figure, path, dpi: int = DPI) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    return path


def _class_colours(k: int):
    """Distinct colours: tab10 up to 10 classes; beyond, tab20's ten dark shades first and its
    light shades only for classes 11 to 20 (adjacent tab20 pairs are hard to tell apart)."""
    from matplotlib import colormaps

    if k <= 10:
        return [colormaps["tab10"](i) for i in range(k)]
    cmap = colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [cmap(order[i % 20]) for i in range(k)]


def plot_confusion(cm, class_names: list, path, title: str | None = None) -> Path:
    """Confusion matrix (row = true class, column = predicted): cells coloured by the row
    fraction (per-class recall on the diagonal), annotated with counts."""
    cm = np.asarray(cm, np.int64)
    k = len(class_names)
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, np.maximum(rows, 1))
    side = max(4.5, 0.55 * k + 2.5)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    size = 9 if k <= 12 else (7 if k <= 20 else 5)
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=size,
                        color="white" if frac[i, j] > 0.55 else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=size + 1)
    ax.set_yticks(range(k), [f"{c} ({rows[i, 0]})" for i, c in enumerate(class_names)],
                  fontsize=size + 1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (images)")
    n = int(cm.sum())
    acc = float(np.trace(cm) / n) if n else float("nan")
    present = rows[:, 0] > 0
    mca = float(np.mean(np.diag(cm)[present] / rows[present, 0])) if present.any() else float("nan")
    head = f"{title}\n" if title else ""
    ax.set_title(f"{head}accuracy {acc:.3f}, mean per-class {mca:.3f} (n={n})", fontsize=11)
    return _save(fig, path)


def choose_grid_samples(labels, preds, n: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``n`` images to show: a seeded sample, at most half of it mistakes
    when there are enough of them, so both kinds appear."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    rng = np.random.default_rng(seed)
    wrong = rng.permutation(np.flatnonzero(labels != preds))
    right = rng.permutation(np.flatnonzero(labels == preds))
    n = min(n, len(labels))
    n_wrong = min(len(wrong), max(n // 2, n - len(right)))
    idx = np.concatenate([wrong[:n_wrong], right[:n - n_wrong]]).astype(int)
    return np.sort(idx)


def plot_prediction_grid(images, labels, preds, probs, class_names: list, path, *,
                         n: int = 36, seed: int = 0, title: str | None = None) -> Path:
    """A grid of images titled ``true -> predicted (probability)``; mistakes in red with a red
    frame, correct predictions in green.

    Args:
        images: uint8 [N, H, W, C] (C = 1 or 3); labels, preds: int [N]; probs: float [N]
            (the probability of the predicted class).
    """
    idx = choose_grid_samples(labels, preds, n, seed)
    cols = int(np.ceil(np.sqrt(max(len(idx), 1))))
    rows = int(np.ceil(len(idx) / cols)) if len(idx) else 1
    fig = Figure(figsize=(2.1 * cols, 2.5 * rows + 0.5), layout="constrained")
    fig.get_layout_engine().set(h_pad=0.08, w_pad=0.05, hspace=0.06)
    for pos, i in enumerate(idx):
        ax = fig.add_subplot(rows, cols, pos + 1)
        img = np.asarray(images[i])
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                  vmin=0, vmax=255, interpolation="nearest" if img.shape[0] < 64 else "antialiased")
        ok = labels[i] == preds[i]
        colour = "tab:green" if ok else "red"
        ax.set_title(f"{class_names[labels[i]]}\n-> {class_names[preds[i]]} ({probs[i]:.2f})",
                     fontsize=9, color="darkgreen" if ok else "red")
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_edgecolor(colour)
            side.set_linewidth(1 if ok else 3)
    n_wrong = int(np.sum(np.asarray(labels)[idx] != np.asarray(preds)[idx]))
    head = f"{title}: " if title else ""
    fig.suptitle(f"{head}true class -> predicted (probability); {n_wrong} of {len(idx)} shown "
                 f"are mistakes (red)", fontsize=11)
    # Photos make large PNGs: a lower resolution, still about one screen pixel per image pixel
    # for 128-pixel images.
    return _save(fig, path, dpi=80)


# Curves on another scale than their panel's first curve: drawn against a right-hand axis.
RIGHT_AXIS = ("lambda", "train/bandwidth_base")

# (panel title, [(tag, legend name)], y label)
CURVE_PANELS = (
    ("classification loss (source)", [("train/cls_loss", "cls loss"),
                                      ("train/total_loss", "total loss")], "loss"),
    ("MMD² (training batches)", [("train/mmd2", "MMD²")], "MMD²"),
    ("accuracy", [("train/source_acc", "source train (batch)"),
                  ("eval/source_val_acc", "source validation"),
                  ("eval/target_acc", "target"),
                  ("eval/target_mean_class_acc", "target, mean per class")], "accuracy"),
    ("target prediction entropy (label-free)", [("eval/target_entropy", "entropy")], "nats"),
    ("feature norm and MMD bandwidth", [("train/feature_norm", "feature norm"),
                                        ("train/bandwidth_base", "bandwidth base (right axis)")],
     "norm"),
    ("schedules", [("lr", "learning rate"), ("lambda", "λ (MMD weight, right axis)")], "value"),
)


def plot_learning_curves(runs: dict, path, title: str | None = None) -> Path:
    """Learning curves of one or more runs against the training step.

    Args:
        runs: ``{run label: {tag: (steps, values)}}`` (see ``tb.read_run_scalars``); the first
            run is drawn solid, the others dashed, dotted, dash-dotted, in the same colour per
            curve. Evaluation points are marked.
    """
    fig = Figure(figsize=(16, 8.5), layout="constrained")
    styles = ["-", "--", ":", "-."]
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    labels = list(runs)
    for p, (ptitle, curves, ylabel) in enumerate(CURVE_PANELS):
        ax = fig.add_subplot(2, 3, p + 1)
        handles = []
        for c, (tag, name) in enumerate(curves):
            axis = ax.twinx() if tag in RIGHT_AXIS and any(tag in r for r in runs.values()) else ax
            drawn = False
            for r, label in enumerate(labels):
                if tag not in runs[label]:
                    continue
                steps, vals = runs[label][tag]
                axis.plot(steps, vals, styles[r % len(styles)], color=colours[c % len(colours)],
                          marker="o" if tag.startswith("eval/") else None, markersize=4)
                drawn = True
            if drawn:
                handles.append(Line2D([], [], color=colours[c % len(colours)], label=name,
                                      marker="o" if tag.startswith("eval/") else None))
            if axis is not ax:
                axis.set_ylabel(name.replace(" (right axis)", ""), color=colours[c % len(colours)])
        if not handles:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes,
                    color="gray")
        else:
            if len(labels) > 1:
                handles += [Line2D([], [], color="black", ls=styles[r % len(styles)], label=l)
                            for r, l in enumerate(labels)]
            ax.legend(handles=handles, fontsize=8, framealpha=0.8,
                      loc="center right" if ptitle == "schedules" else "best")
        if ptitle == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(ptitle, fontsize=11)
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate" if ptitle == "schedules" else ylabel)
        ax.grid(alpha=0.3)
    head = title or (labels[0] if len(labels) == 1 else
                     f"{labels[0]} (solid) vs " + ", ".join(
                         f"{l} ({s})" for l, s in zip(labels[1:], ["dashed", "dotted", "dash-dot"])))
    fig.suptitle(head, fontsize=13)
    return _save(fig, path)


def plot_embeddings(panels: list, class_names: list, path, *,
                    domain_names=("source", "target"), title: str | None = None) -> Path:
    """Side-by-side 2-D embeddings, coloured by class, marked by domain.

    Args:
        panels: ``[(panel title, emb [N, 2], labels int [N], domain int [N] (0 or 1))]``.
    """
    colours = _class_colours(len(class_names))
    fig = Figure(figsize=(7.0 * len(panels) + 2.0, 7.0), layout="constrained")
    markers = ("o", "^")
    for p, (ptitle, emb, labels, domain) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        emb, labels, domain = np.asarray(emb), np.asarray(labels), np.asarray(domain)
        for d in (0, 1):
            sel = domain == d
            cols = [colours[c] for c in labels[sel]]
            if d == 0:
                ax.scatter(emb[sel, 0], emb[sel, 1], c=cols, marker=markers[d], s=16, alpha=0.55,
                           linewidths=0)
            else:
                ax.scatter(emb[sel, 0], emb[sel, 1], facecolors="none", edgecolors=cols,
                           marker=markers[d], s=22, alpha=0.9, linewidths=0.9)
        ax.set_title(ptitle, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], ls="", marker="s", markersize=8, color=colours[i], label=c)
               for i, c in enumerate(class_names)]
    handles += [Line2D([], [], ls="", marker="o", color="gray", alpha=0.6, label=domain_names[0]),
                Line2D([], [], ls="", marker="^", markerfacecolor="none", color="gray",
                       label=domain_names[1])]
    fig.legend(handles=handles, loc="outside right center", fontsize=9, frameon=False,
               title="class / domain")
    if title:
        fig.suptitle(title, fontsize=13)
    return _save(fig, path)
