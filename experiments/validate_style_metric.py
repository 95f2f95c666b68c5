"""Validate the style measures: held-out Twitter-style emoji must come out far closer to the Twitter set
than Google-style emoji of the same held-out names do.

    .venv/bin/python experiments/validate_style_metric.py [--data training/data] [--n-boot 1000] [--out FILE.md]

For each measure of leakstyle.metrics (colour, gradient, spectrum) and their combination (style), prints
d_twitter = d(twitter-eval, twitter-train), d_google = d(google-eval, twitter-train), the margin
d_google - d_twitter and the ratio d_google / d_twitter, with 95% bootstrap intervals (all three sets
resampled jointly, seeded). Two conditions: emoji composited on white, and on the random solid/gradient
backgrounds of the training data (twitter-eval and google-eval on the same backgrounds). Also prints the
Google-train vs Twitter-train distances, from which metrics.STYLE_GAP was set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leakstyle import metrics  # noqa: E402
from leakstyle.images import open_image  # noqa: E402


def on_white(folder: Path, split: str) -> list[np.ndarray]:
    from training.dataset import load_manifest

    return [np.asarray(open_image(folder / r["file"])) for r in load_manifest(folder, split)]


def on_backgrounds(folder: Path, split: str, seed: int) -> list[np.ndarray]:
    """The training data's composites (random solid or gradient backgrounds); item i is the same for any folder."""
    from training.dataset import EmojiComposites

    data = EmojiComposites(folder, split=split, seed=seed)
    return [((data[i][0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1) for i in range(len(data))]


def margins(train, twitter_eval, google_eval) -> dict[str, float]:
    d_t, d_g = metrics.style_distances(twitter_eval, train), metrics.style_distances(google_eval, train)
    out = {}
    for k in d_t:
        out.update({f"{k}/d_twitter": d_t[k], f"{k}/d_google": d_g[k], f"{k}/margin": d_g[k] - d_t[k],
                    f"{k}/ratio": d_g[k] / d_t[k] if d_t[k] > 0 else float("inf")})
    return out


def table(title: str, result: dict) -> str:
    lines = [f"### {title}", "", "| measure | d(twitter-eval, twitter-train) | d(google-eval, twitter-train) | margin | ratio |",
             "|---|---|---|---|---|"]
    for k in (*metrics.MEASURES, "style"):
        cells = [format(result[f"{k}/{c}"], ".3g") for c in ("d_twitter", "d_google", "margin", "ratio")]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / "training" / "data")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="also write the tables to this markdown file")
    args = p.parse_args(argv)
    google, twitter = args.data / "google", args.data / "twitter"
    for folder in (google, twitter):
        if not (folder / "manifest.jsonl").exists():
            print(f"no emoji data at {folder}; run: python -m training.fetch_data", file=sys.stderr)
            return 2

    start = time.perf_counter()
    sections = []
    conditions = {
        "on white": lambda folder, split, seed: on_white(folder, split),
        "on the training backgrounds": on_backgrounds,
    }
    for i, (name, load) in enumerate(conditions.items()):
        train = metrics.style_features(load(twitter, "train", 1))
        t_eval = metrics.style_features(load(twitter, "eval", 2))
        g_eval = metrics.style_features(load(google, "eval", 2))
        result = metrics.bootstrap(margins, (train, t_eval, g_eval), args.n_boot, seed=args.seed)
        sections.append(table(f"{name}: {len(train)} twitter-train, {len(t_eval)} twitter-eval, {len(g_eval)} google-eval "
                              f"(95% bootstrap intervals, {args.n_boot} resamples)", result))
        print(sections[-1] + "\n", flush=True)
        if i == 0:
            gap = metrics.style_distances(metrics.style_features(load(google, "train", 1)), train)
            line = ("Google-train vs Twitter-train on white (metrics.STYLE_GAP): "
                    + ", ".join(f"{k} {v:.3g}" for k, v in gap.items() if k != "style"))
            sections.append(line)
            print(line + "\n", flush=True)
    footer = f"measured in {time.perf_counter() - start:.0f} s by experiments/validate_style_metric.py"
    print(footer)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("## Validation of the style measures\n\n" + "\n\n".join(sections) + f"\n\n{footer}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
