"""Stage 0: fetch the emoji images that the miniature model is trained on.

Downloads the npm packages emoji-datasource-google@16.0.0 (Noto Emoji, Apache-2.0) and
emoji-datasource-twitter@16.0.0 (Twemoji, CC-BY 4.0) with ``npm pack``, extracts only their 64x64 PNGs
and ``emoji.json``, and writes ``<data>/<set>/manifest.jsonl`` with one line per image:
``{"file", "name", "category", "unified", "base", "split"}``. Skin-tone variants get the base name plus
their tones ("waving hand sign, medium skin tone"). A fixed 5% of emoji, chosen by a hash of the base
emoji's unified code point (so all tones of one emoji fall on the same side, and both sets agree), is
held out as split "eval".

    python -m training.fetch_data [--data training/data] [--sets google twitter]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "16.0.0"
SETS = ("google", "twitter")
EVAL_FRACTION = 0.05
DEFAULT_DATA = Path(__file__).resolve().parent / "data"
SKIN_TONES = {
    "1F3FB": "light skin tone",
    "1F3FC": "medium-light skin tone",
    "1F3FD": "medium skin tone",
    "1F3FE": "medium-dark skin tone",
    "1F3FF": "dark skin tone",
}


class FetchError(RuntimeError):
    """npm is missing or failed, or a package does not hold what we expect."""


def split_of(base_unified: str) -> str:
    """'eval' for a fixed EVAL_FRACTION of emoji, by SHA-256 of the base code point, else 'train'."""
    digest = hashlib.sha256(base_unified.upper().encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") / 2**64 < EVAL_FRACTION else "train"


def manifest_rows(emoji_json: list[dict], set_name: str) -> list[dict]:
    """One row per image the set has: base emoji and each skin-tone variant."""
    rows = []
    for e in emoji_json:
        name, category, base = e["name"].lower(), e["category"].lower(), e["unified"]
        variants = [(e, name)]
        for tones, v in sorted(e.get("skin_variations", {}).items()):
            tone_names = [SKIN_TONES[t] for t in tones.split("-")]
            variants.append((v, ", ".join([name, *dict.fromkeys(tone_names)])))
        for v, caption_name in variants:
            if not v.get(f"has_img_{set_name}", False):
                continue
            rows.append({"file": f"img/{v['image']}", "name": caption_name, "category": category,
                         "unified": v["unified"], "base": base, "split": split_of(base)})
    return rows


def npm_pack(spec: str, workdir: Path) -> Path:
    """Download the tarball of an npm package spec into workdir and return its path."""
    if shutil.which("npm") is None:
        raise FetchError("npm is not installed; install Node.js/npm (e.g. apt-get install npm) and rerun")
    proc = subprocess.run(["npm", "pack", spec, "--silent"], cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchError(f"'npm pack {spec}' failed: {last}")
    tarballs = sorted(workdir.glob("*.tgz"))
    if not tarballs:
        raise FetchError(f"'npm pack {spec}' wrote no tarball")
    return tarballs[-1]


def extract_set(tarball: Path, set_name: str, out: Path) -> list[dict]:
    """Write emoji.json, the 64 px PNGs and manifest.jsonl of one set into out; return the rows."""
    img_dir = out / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:gz") as tar:
        emoji_bytes = tar.extractfile("package/emoji.json").read()
        rows = manifest_rows(json.loads(emoji_bytes), set_name)
        for row in rows:
            member = f"package/img/{set_name}/64/{Path(row['file']).name}"
            try:
                data = tar.extractfile(member).read()
            except KeyError:
                raise FetchError(f"{tarball.name} lacks {member}; is the version {VERSION}?") from None
            (out / row["file"]).write_bytes(data)
    (out / "emoji.json").write_bytes(emoji_bytes)
    tmp = out / "manifest.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(out / "manifest.jsonl")  # written last: its presence means the set is complete
    return rows


def is_complete(out: Path) -> bool:
    manifest = out / "manifest.jsonl"
    if not manifest.exists():
        return False
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    return all((out / r["file"]).exists() for r in rows)


def fetch(set_name: str, data: Path = DEFAULT_DATA, force: bool = False) -> Path:
    """Make <data>/<set_name> complete (download only if needed); return that folder."""
    out = data / set_name
    if not force and is_complete(out):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        tarball = npm_pack(f"emoji-datasource-{set_name}@{VERSION}", Path(tmp))
        extract_set(tarball, set_name, out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    p.add_argument("--force", action="store_true", help="download again even if complete")
    args = p.parse_args(argv)
    try:
        for s in args.sets:
            out = fetch(s, args.data, args.force)
            rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
            n_eval = sum(r["split"] == "eval" for r in rows)
            print(f"{s}: {len(rows)} images ({n_eval} eval) in {out}")
    except FetchError as e:
        print(f"fetch_data: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
