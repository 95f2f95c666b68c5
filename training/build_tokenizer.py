"""Stage 1: build the real CLIP BPE tokenizer offline, as a transformers CLIPTokenizer folder.

The BPE merges come from ``bpe_simple_vocab_16e6.txt.gz``, which ships (MIT licence) inside the PyPI
wheel of open-clip-torch; the wheel is downloaded with pip (never installed) and the file read from the
zip. The vocabulary is built exactly as CLIP's ``SimpleTokenizer`` does: the 256 byte characters of
``bytes_to_unicode``, the same with ``</w>``, one token per merge, then ``<|startoftext|>`` and
``<|endoftext|>``: 49408 tokens. ``model_max_length`` is 77, like every SD 1.x tokenizer.

    python -m training.build_tokenizer [--out training/runs/tokenizer] [--wheel W.whl | --bpe F.txt.gz]

The wheel is cached in training/data/wheels/.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from transformers import CLIPTokenizer

from leakstyle.testing import bytes_to_unicode  # CLIP's byte map, shared with the tiny test tokenizer

OPEN_CLIP = "open-clip-torch==3.3.0"
BPE_IN_WHEEL = "open_clip/bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # the merges CLIP uses: lines 1 .. 48894 of the file (line 0 is a header)
MODEL_MAX_LENGTH = 77
CHECK_TEXT, CHECK_IDS = "a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407]
DEFAULT_OUT = Path(__file__).resolve().parent / "runs" / "tokenizer"
WHEEL_CACHE = Path(__file__).resolve().parent / "data" / "wheels"


def read_merges(bpe_gz: bytes) -> list[tuple[str, str]]:
    """The merges of a ``bpe_simple_vocab`` file: skip its header line, keep at most N_MERGES."""
    lines = gzip.decompress(bpe_gz).decode("utf-8").split("\n")[1 : N_MERGES + 1]
    return [tuple(line.split()) for line in lines if line.strip()]


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """Token -> id, in CLIP's order: bytes, bytes + '</w>', merges, start, end."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}


def bpe_from_wheel(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        return z.read(BPE_IN_WHEEL)


def download_wheel(dest: Path) -> Path:
    """The open-clip-torch wheel in dest, pip-downloaded there first if absent (never installed)."""
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob("open_clip_torch-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        OPEN_CLIP, "-d", str(dest), "-q"], check=True)
        found = sorted(dest.glob("open_clip_torch-*.whl"))
    return found[-1]


def build_tokenizer(bpe_gz: bytes, out: Path) -> CLIPTokenizer:
    """Write vocab.json, merges.txt and a saved CLIPTokenizer into out; return it reloaded from out."""
    merges = read_merges(bpe_gz)
    vocab = clip_vocab(merges)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH)
    tok.save_pretrained(out)
    return CLIPTokenizer.from_pretrained(out)


def check_real_ids(tok: CLIPTokenizer) -> None:
    """Fail unless the tokenizer is CLIP's: vocabulary size and the ids of a known sentence."""
    ids = tok(CHECK_TEXT)["input_ids"]
    if len(tok) != 49408 or ids != CHECK_IDS:
        raise SystemExit(f"tokenizer check failed: {len(tok)} tokens, {CHECK_TEXT!r} -> {ids}, want {CHECK_IDS}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--wheel", type=Path, help="an open_clip_torch wheel already downloaded")
    src.add_argument("--bpe", type=Path, help="a bpe_simple_vocab .txt.gz file (no CLIP-id check)")
    args = p.parse_args(argv)
    if args.bpe:
        tok = build_tokenizer(args.bpe.read_bytes(), args.out)
    else:
        wheel = args.wheel or download_wheel(WHEEL_CACHE)
        tok = build_tokenizer(bpe_from_wheel(wheel), args.out)
        check_real_ids(tok)
        print(f"{CHECK_TEXT!r} -> {CHECK_IDS} (ok)")
    print(f"tokenizer with {len(tok)} tokens, model_max_length {tok.model_max_length}, in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
