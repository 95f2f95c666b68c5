"""Stage 4: export the trained model into the package, with the few images the demo needs.

    python -m training.export_model                       # latest UNet checkpoint -> src/leakstyle/models/mini-sd
    python -m training.export_model --smoke --checkpoint /tmp/unet-smoke/checkpoint.pt --out /tmp/mini-sd --assets /tmp/assets
    python -m training.export_model --slim --record /tmp/move   # also a 37 MB slim checkpoint, to move a run

Writes an fp16 StableDiffusionPipeline folder (DDIM with SD 1.5's schedule and clip_sample False; every
scheduler of leakstyle works from its config) and src/leakstyle/assets/: `twemoji/` (20 Twitter-style emoji of the training split, CC-BY 4.0, for
the demo's training-free style adaptation), `reference/` (32 training composites: Noto emoji on random
backgrounds, Apache-2.0, for the demo's mean-colour plot) and ATTRIBUTION.md. The model card
(README.md in the model folder) is kept when it exists: it is written by hand from measured figures.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from diffusers import AutoencoderKL, UNet2DConditionModel

from training.dataset import EmojiComposites, load_manifest, require_data
from training.loop import save_atomic
from training.train_unet import export_pipeline, named_ema

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent / "src" / "leakstyle"

ATTRIBUTION = """# Attribution of the demo images

- `twemoji/`: Twemoji by Twitter, Inc and other contributors, licensed under CC-BY 4.0
  (https://creativecommons.org/licenses/by/4.0/), from the npm package emoji-datasource-twitter@16.0.0
  (emoji-datasource by Cal Henderson, MIT). Unmodified 64 x 64 PNGs.
- `reference/`: Noto Emoji by Google, licensed under Apache-2.0, from the npm package
  emoji-datasource-google@16.0.0, resized and composited by leakstyle onto random backgrounds
  (training/dataset.py) as in the embedded model's training data.
"""


def load_trained(checkpoint: Path | dict) -> tuple[UNet2DConditionModel, CLIPTextModel, int]:
    """UNet and text encoder of a train_unet checkpoint (a path or the loaded dict), with the EMA averages
    where it has them."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else torch.load(checkpoint, weights_only=False, map_location="cpu")
    unet = UNet2DConditionModel.from_config(ckpt["unet_config"])
    unet.load_state_dict(ckpt["unet"])
    text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(ckpt["text_config"]))
    text_encoder.load_state_dict(ckpt["text_encoder"])
    if "ema" in ckpt:
        n = len(list(unet.parameters()))
        unet.load_state_dict(named_ema(unet, ckpt["ema"]["shadow"][:n]))
        text_encoder.load_state_dict(named_ema(text_encoder, ckpt["ema"]["shadow"][n:]))
    return unet.eval(), text_encoder.eval(), ckpt["step"]


def write_assets(data: Path, assets: Path, n_twemoji: int = 20, n_reference: int = 32, seed: int = 0) -> None:
    """Copy n (at most all) Twitter-style training emoji and render n reference composites into `assets`."""
    tmp = assets.with_name(assets.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "twemoji").mkdir(parents=True)
    (tmp / "reference").mkdir()
    rows = load_manifest(data / "twitter", "train")
    base = [r for r in rows if r["base"] == r["unified"]]  # no skin-tone variants: more different emoji
    for k in np.random.default_rng(seed).choice(len(base), min(n_twemoji, len(base)), replace=False):
        shutil.copy(data / "twitter" / base[k]["file"], tmp / "twemoji" / f"{base[k]['unified'].lower()}.png")
    ds = EmojiComposites(data / "google", "train", seed=seed + 1000, repeats=n_reference)  # item e*n+k: emoji k, background e
    for i, k in enumerate(np.random.default_rng(seed + 1).choice(len(ds), n_reference, replace=False)):
        x, _ = ds[int(k)]
        arr = ((x.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp / "reference" / f"{i:02d}.png", optimize=True)
    (tmp / "ATTRIBUTION.md").write_text(ATTRIBUTION)
    shutil.rmtree(assets, ignore_errors=True)
    tmp.replace(assets)


def save_slim_checkpoint(checkpoint: Path, folder: Path) -> Path:
    """folder/checkpoint.pt: the run's exported weights (the EMA averages), configs and step, without the
    optimizer state or the raw weights (37 MB instead of 150 MB), to move a run between machines. train_unet
    resumes from it (copy it into a run folder) with a fresh Adam and a new warm-up."""
    ckpt = torch.load(checkpoint, weights_only=False, map_location="cpu")
    unet, text_encoder, _ = load_trained(ckpt)
    ckpt.update(unet=unet.state_dict(), text_encoder=text_encoder.state_dict(), weights="ema")
    for key in ("optimizer", "ema", "total_steps"):  # a resumed run takes its length from --steps
        ckpt.pop(key, None)
    folder.mkdir(parents=True, exist_ok=True)
    save_atomic(ckpt, folder / "checkpoint.pt")
    return folder / "checkpoint.pt"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=HERE / "runs" / "unet" / "checkpoint.pt")
    p.add_argument("--vae", type=Path, default=HERE / "artifacts" / "vae")
    p.add_argument("--tokenizer", type=Path, default=HERE / "runs" / "tokenizer")
    p.add_argument("--data", type=Path, default=HERE / "data")
    p.add_argument("--out", type=Path, default=None, help="pipeline folder (default: the package's models/mini-sd)")
    p.add_argument("--assets", type=Path, default=None, help="demo images (default: the package's assets/)")
    p.add_argument("--record", type=Path, default=None,
                   help="folder for the run's loss curve (default training/artifacts/unet; with --smoke, OUT-record)")
    p.add_argument("--slim", action="store_true", help="also write the slim checkpoint (EMA weights only) there")
    p.add_argument("--smoke", action="store_true", help="allow an untrained VAE (for CI smoke runs)")
    args = p.parse_args(argv)
    if args.smoke and (args.out is None or args.assets is None):
        raise SystemExit("--smoke exports a throwaway model: give --out and --assets (the package's model stays as it is)")
    args.out = args.out or PACKAGE / "models" / "mini-sd"
    args.assets = args.assets or PACKAGE / "assets"
    require_data(args.data / "google", args.data / "twitter")
    for path, stage in ((args.checkpoint, "train_unet"), (args.tokenizer / "tokenizer_config.json", "build_tokenizer")):
        if not path.exists():
            raise SystemExit(f"missing {path}: run `python -m training.{stage}` first")
    if (args.vae / "config.json").exists():
        vae = AutoencoderKL.from_pretrained(args.vae, torch_dtype=torch.float32)
    elif args.smoke:
        from training.train_vae import vae_config
        vae = AutoencoderKL.from_config(vae_config())
    else:
        raise SystemExit(f"no VAE in {args.vae}: run `python -m training.train_vae` first")
    unet, text_encoder, step = load_trained(args.checkpoint)
    card = args.out / "README.md"
    card_text = card.read_text() if card.exists() else None
    export_pipeline(vae, text_encoder, CLIPTokenizer.from_pretrained(args.tokenizer), unet, args.out)
    if card_text is not None:
        card.write_text(card_text)
    write_assets(args.data, args.assets)
    record = args.record or (args.out.with_name(args.out.name + "-record") if args.smoke else HERE / "artifacts" / "unet")
    record.mkdir(parents=True, exist_ok=True)  # a smoke run never writes into training/artifacts
    if (args.checkpoint.parent / "loss.jsonl").exists():
        shutil.copy(args.checkpoint.parent / "loss.jsonl", record / "loss.jsonl")
    if args.slim:
        save_slim_checkpoint(args.checkpoint, record)
    size = sum(f.stat().st_size for f in args.out.rglob("*.safetensors")) / 2**20
    print(f"exported step {step} to {args.out} ({size:.1f} MB of weights) and demo images to {args.assets}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
