"""Images/s of the input pipeline, with and without the decode cache, against the step's needs.

Variants, alternating block by block after a warm-up round:

* ``pipeline, decoded cache``: ``ddc.data.pipeline.train_dataset`` over the decoded arrays of
  ``prepare_data`` (what training uses), zipped source + target, flips as configured.
* ``pipeline, decode every image``: a tf.data stream that reads and decodes every file each time
  (``tf.io.decode_jpeg`` for JPEG files, else ``tf.io.decode_image``; bilinear antialiased
  resize; parallel ``map``; shuffle, repeat, batch, zip, flips, prefetch), i.e. no cache.
* ``step, fixed batches``: the config's training step on batches already in memory: the
  images/s the step consumes.
* ``step fed by train_dataset``: the same step pulling each batch from ``train_dataset`` as the
  training loop does (the pipeline and the step share the CPU).

Pipeline blocks make a fresh iterator, discard ``--warm-batches`` batches, then time
``--batches`` batches; images are counted as the step sees them (B source + B target).

    nice -n 5 python benchmarks/bench_pipeline.py          # configs/siri_whu_ddc.json, real data
    python benchmarks/bench_pipeline.py --config my.json --data-root DIR --batches 2 --steps 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common  # noqa: E402  (first: sets up paths and TF logging)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ddc.data.domains import folder_root, list_class_folders  # noqa: E402
from ddc.data.pipeline import train_dataset  # noqa: E402
from ddc.data.prepare import prepare_data  # noqa: E402

JPEG = (".jpg", ".jpeg")


def decode_every_time(files: list[str], labels: np.ndarray, size: int, channels: int,
                      batch: int, seed: int, augment: bool) -> tf.data.Dataset:
    """(x uint8 [B,S,S,C], labels [B]) batches decoded from ``files`` on every pass."""
    jpeg = all(f.lower().endswith(JPEG) for f in files)

    def load(path, label):
        raw = tf.io.read_file(path)
        img = (tf.io.decode_jpeg(raw, channels=channels) if jpeg
               else tf.io.decode_image(raw, channels=channels, expand_animations=False))
        img = tf.image.resize(img, (size, size), method="bilinear", antialias=True)
        img = tf.cast(tf.clip_by_value(tf.round(img), 0.0, 255.0), tf.uint8)
        if augment:
            img = tf.image.random_flip_up_down(tf.image.random_flip_left_right(img))
        return img, label

    ds = tf.data.Dataset.from_tensor_slices((files, labels.astype(np.int32)))
    ds = ds.shuffle(len(files), seed=seed).repeat()
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch, drop_remainder=True)


def domain_files(dom_cfg, key: str, root: Path, class_names: list) -> tuple[list, np.ndarray]:
    """The files (and class ids) of the classes the run keeps, as ``prepare_data`` lists them."""
    classes = list_class_folders(folder_root(dom_cfg, root), key)
    files, labels = [], []
    for name in sorted(classes):
        merged = dom_cfg.class_map.get(name, name)
        if merged in class_names:
            files += [str(f) for f in classes[name]]
            labels += [class_names.index(merged)] * len(classes[name])
    return files, np.asarray(labels)


def pipeline_block(make_ds, batches: int, warm: int):
    def block() -> float:
        it = iter(make_ds())
        for _ in range(warm):
            common.sync(next(it))
        t0 = time.perf_counter()
        for _ in range(batches):
            common.sync(next(it))
        dt = time.perf_counter() - t0
        del it
        return dt

    return block


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="siri_whu_ddc")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-root", default=None, help="default: $DDC_DATA_ROOT or ../shared/data")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", type=int, default=30, help="timed batches per pipeline block")
    p.add_argument("--warm-batches", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="timed steps per step block")
    args = p.parse_args(argv)
    cfg = common.load_config(args.config, args.set)
    root = Path(args.data_root) if args.data_root else common.data_root()
    d, t = cfg.data, cfg.train
    b = t.batch_size
    if not (d.source.root and d.target.root):
        raise SystemExit("bench_pipeline: needs folder domains (data.source.root and "
                         "data.target.root)")

    cache_dir = Path(os.environ.get("DDC_CACHE_DIR", "~/.cache/ddc")).expanduser()
    data = prepare_data(cfg, root, cache_dir)  # data.cache=disk: decoded once per machine
    k = len(data.class_names)
    src, tgt = data.source_train, data.target

    def cached():
        return train_dataset(src.images, src.labels, tgt.images, batch_size=b, seed=cfg.seed,
                             augment=d.augment, use_target=True)

    s_files, s_labels = domain_files(d.source, "data.source", root, data.class_names)
    t_files, t_labels = domain_files(d.target, "data.target", root, data.class_names)

    def uncached():
        s = decode_every_time(s_files, s_labels, d.image_size, d.channels, b, cfg.seed, d.augment)
        tt = decode_every_time(t_files, t_labels, d.image_size, d.channels, b, cfg.seed + 1,
                               d.augment).map(lambda x, y: x)
        return tf.data.Dataset.zip(s, tt).map(lambda s_, t_: (s_[0], s_[1], t_)).prefetch(
            tf.data.AUTOTUNE)

    keras.utils.set_random_seed(cfg.seed)
    run = common.build_run(cfg, k)
    fixed_it = iter(common.batch_dataset(common.random_batches(cfg, k)))
    fixed_step = common.step_block(run, fixed_it, args.steps, run.weights)

    def fed_step() -> float:
        it = iter(cached())
        return common.step_block(run, it, args.steps, run.weights)()

    per_batch = 2 * b  # both pipelines deliver B source + B target images per element
    blocks = {  # name -> (timed block, images per timed block)
        "pipeline, decoded cache (train_dataset)": (
            pipeline_block(cached, args.batches, args.warm_batches), per_batch * args.batches),
        "pipeline, decode every image": (
            pipeline_block(uncached, args.batches, args.warm_batches), per_batch * args.batches),
        "step, fixed batches": (fixed_step, run.images_per_step * args.steps),
        "step fed by train_dataset": (fed_step, run.images_per_step * args.steps),
    }
    times = common.alternate({n: v[0] for n, v in blocks.items()}, args.repeats, warmup=1)
    ips = {n: [blocks[n][1] / s for s in ts] for n, ts in times.items()}
    rows = [[n, f"{common.Stats(v).median:.1f}", common.Stats(v).fmt(1)] for n, v in ips.items()]
    step = ips["step, fixed batches"]
    rrows = []
    for n, target in (("pipeline, decoded cache (train_dataset)", 3.0),
                      ("pipeline, decode every image", None)):
        r = common.ratios(ips[n], step)
        ok = "" if target is None else ("yes" if r.mean >= target else "NO")
        rrows.append([f"{n} / step", f"{r.mean:.2f} ± {r.std:.2f}", f"{r.median:.2f}", ok])
    r = common.ratios(ips["step fed by train_dataset"], step)
    rrows.append(["step fed by train_dataset / step on fixed batches",
                  f"{r.mean:.3f} ± {r.std:.3f}", f"{r.median:.3f}", ""])
    out = [common.header(f"Input pipeline vs training step: {Path(args.config).stem}, "
                         f"batch {b}+{b}, {d.image_size} px", __file__, argv),
           f"source train {len(src)} images ({len(s_files)} files), target {len(tgt)} images "
           f"({len(t_files)} files); "
           + (f"step with {', '.join(t.name for t in run.terms)}" if run.terms
              else "source-only step")
           + (f"; {run.note}" if run.note else ""), "",
           common.table(["variant", "median images/s", "images/s mean ± std"], rows), "",
           f"Paired per-round ratios over {args.repeats} rounds (target: the cached pipeline "
           "delivers >= 3x what the step consumes):", "",
           common.table(["comparison", "mean ± std", "median", "meets target"], rrows)]
    text = "\n".join(out) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main()
