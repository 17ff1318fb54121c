"""Train the built-in model (`make train-tiny`): a tiny Wan text-to-video model for the world
of `videogen.tiny.world`, written as a diffusers directory that loads like any other.

Three stages, each on what the one before produced, all on the CPU and seeded:

1. **Text encoder** (UMT5, as Wan uses, with the byte-level ByT5 tokenizer). Trained to name
   the clip's colour, shape, motion and backdrop from a paraphrased prompt (small
   classification heads on its pooled output, dropped afterwards), then frozen: the
   transformer learns against fixed embeddings, so they are computed once.
2. **VAE** (`AutoencoderKLWan`, 4x spatial and 4x temporal compression, 16 latent channels).
   Trained on 32x32 crops of 9 frames, where most of the cost of whole clips is saved, then
   on crops of all 17 (the causal cache of later frames is only seen that long); pixels
   of the moving object weigh more than the backdrop, because a blurred object loses exactly
   what the judge reads (its colour and where it is).
3. **Transformer** (`WanTransformer3DModel`) by flow matching on the VAE's normalised latents,
   as Wan trains: x_t = (1 - s) x_0 + s e, target e - x_0, timestep 1000 s, with s drawn
   logit-normally and shifted like the sampler's `flow_shift`. The prompt is dropped 10 % of
   the time, for classifier-free guidance. The weights kept are an exponential moving average.

The directory gets `model_index.json`, each component's config and safetensors, and
`videogen.json` (the spec the service reads: native size, lengths, defaults). `python -m
videogen.tiny.train --quick` runs every stage for a few steps (a smoke test, not a model).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

from videogen.tiny import world
from videogen.tiny.judge import judge

DEFAULT_OUT = Path(__file__).parent / "model"
T = TypeVar("T")
# Upscaled at encode time from the native size; square, as the model draws.
SERVED_SIZES = ("128x128", "256x256")
DEFAULT_STEPS = 20
GUIDANCE_SCALE = 5.0
DESCRIPTION = (
    "a tiny Wan model trained on procedural clips: one ball, square or triangle in red, green, "
    "blue, yellow, purple or orange, moving left, right, up or down or bouncing, on a grey, "
    "dark, checkered or wooden floor; anything else gives a video of that world"
)


@dataclass
class TrainConfig:
    """Everything a training run depends on; `--set FIELD=VALUE` changes one."""

    seed: int = 0
    threads: int = 2
    # The clips: the model's native size and length (2 s at 8 fps).
    width: int = 64
    height: int = 64
    num_frames: int = 17
    fps: int = 8
    clips: int = 2000
    prompts_per_clip: int = 3
    # Bytes of prompt the model reads (ByT5: one token per byte); the world's prompts are
    # at most ~85.
    max_sequence_length: int = 96
    # Stage 1: text encoder.
    text_steps: int = 500
    text_batch: int = 64
    text_lr: float = 2e-3
    # Stage 2: VAE.
    vae_steps: int = 1200
    vae_batch: int = 8
    vae_crop: int = 32
    vae_frames: int = 9
    vae_lr: float = 1e-3
    # Then whole-length crops: the causal convolutions' cache from the third chunk of
    # frames on (frame 9 on) is only ever seen in clips that long.
    vae_long_steps: int = 400
    vae_long_batch: int = 4
    vae_long_lr: float = 3e-4
    decoder_steps: int = 600
    decoder_lr: float = 2e-4
    colour_weight: float = 5.0
    object_weight: float = 10.0
    kl_weight: float = 1e-6
    # Stage 3: transformer.
    dit_steps: int = 1800
    dit_batch: int = 32
    dit_lr: float = 6e-4
    warmup: int = 200
    p_uncond: float = 0.1
    ema: float = 0.999
    flow_shift: float = 3.0
    # How many held-out clips the VAE's round trip is judged on.
    check_clips: int = 40
    log_every: int = 50

    def quick(self) -> TrainConfig:
        """Every stage for a few steps, on a few clips: checks the script, not the model."""
        return dataclasses.replace(
            self,
            clips=48,
            text_steps=5,
            vae_steps=5,
            vae_long_steps=2,
            vae_long_batch=2,
            decoder_steps=2,
            dit_steps=5,
            text_batch=8,
            vae_batch=4,
            dit_batch=8,
            warmup=2,
            check_clips=4,
            log_every=1,
        )


# --- the architecture ----------------------------------------------------------------------

TEXT_DIM = 64
Z_DIM = 16


def text_encoder_config() -> UMT5Config:
    return UMT5Config(
        vocab_size=384,  # ByT5: 256 bytes + 3 special tokens + 125 extra ids
        d_model=TEXT_DIM,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        dropout_rate=0.0,
    )


def new_vae() -> AutoencoderKLWan:
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=Z_DIM,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[True, True],
        scale_factor_spatial=4,
        scale_factor_temporal=4,
    )


def new_transformer() -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 4, 4),
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=Z_DIM,
        out_channels=Z_DIM,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=256,
        num_layers=4,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )


def new_scheduler(flow_shift: float) -> UniPCMultistepScheduler:
    # Wan2.1's sampler setup.
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=flow_shift,
    )


# --- data ----------------------------------------------------------------------------------


@dataclass
class Dataset:
    clips: list[world.ClipSpec]
    videos: np.ndarray  # uint8 (N, T, H, W, 3)
    prompts: list[list[str]]  # `prompts_per_clip` paraphrases per clip


def make_dataset(cfg: TrainConfig) -> Dataset:
    clips = world.training_clips(cfg.clips, cfg.seed)
    rng = np.random.default_rng([cfg.seed, 2])
    size = {"width": cfg.width, "height": cfg.height, "num_frames": cfg.num_frames}
    videos = np.stack([world.render(clip, **size) for clip in clips])
    prompts = [[world.prompt_for(c, rng) for _ in range(cfg.prompts_per_clip)] for c in clips]
    return Dataset(clips, videos, prompts)


def to_model_space(videos: np.ndarray) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) -> float (N, 3, T, H, W) in [-1, 1], as the VAE sees pixels."""
    x = torch.from_numpy(videos).permute(0, 4, 1, 2, 3).float()
    return x / 127.5 - 1.0


def from_model_space(x: torch.Tensor) -> np.ndarray:
    """What WanPipeline's video processor does to a decoded video, as uint8 (N, T, H, W, 3)."""
    x = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1)
    return (x * 255).round().clip(0, 255).to(torch.uint8).numpy()


# --- the stages ----------------------------------------------------------------------------


Log = Callable[[str, int, int, dict[str, float]], None]


def schedule(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


LABELS: dict[str, list[str]] = {
    "colour": list(world.Colour),
    "shape": list(world.Shape),
    "motion": list(world.Motion),
    "background": list(world.Background),
}


def train_text_encoder(cfg: TrainConfig, tokenizer: ByT5Tokenizer, log: Log) -> UMT5EncoderModel:
    encoder = UMT5EncoderModel(text_encoder_config())
    heads = torch.nn.ModuleDict(
        {name: torch.nn.Linear(TEXT_DIM, len(values)) for name, values in LABELS.items()}
    )
    params = [*encoder.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.text_lr, weight_decay=0.0)
    rng = np.random.default_rng([cfg.seed, 3])
    encoder.train()
    for step in range(cfg.text_steps):
        # Fresh clips and phrasings every step: the encoder sees far more wordings than clips.
        clips = world.training_clips(cfg.text_batch, int(rng.integers(2**31)))
        texts = [world.prompt_for(c, rng) for c in clips]
        tokens = tokenizer(
            texts,
            padding="max_length",
            max_length=cfg.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        )
        hidden = encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
        mask = tokens.attention_mask.unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        losses, correct = [], 0.0
        for name, values in LABELS.items():
            target = torch.tensor([values.index(getattr(c, name)) for c in clips])
            logits = heads[name](pooled)
            losses.append(F.cross_entropy(logits, target))
            correct += (logits.argmax(-1) == target).float().mean().item() / len(LABELS)
        loss = torch.stack(losses).sum()
        for g in opt.param_groups:
            g["lr"] = cfg.text_lr * schedule(step, cfg.text_steps, cfg.warmup)
        opt.zero_grad()
        loss.backward()
        opt.step()
        log("text encoder", step, cfg.text_steps, {"loss": loss.item(), "accuracy": correct})
    encoder.eval()
    return encoder.requires_grad_(False)


def _object_weight(x: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weight: `weight` where a pixel differs from its clip's temporal median
    (the moving object), else 1. x is (N, 3, T, H, W) in [-1, 1]."""
    median = x.median(dim=2, keepdim=True).values
    moving = ((x - median).abs().amax(dim=1, keepdim=True) > 0.15).float()
    return 1.0 + (weight - 1.0) * moving


@dataclass(frozen=True)
class _Phase:
    steps: int
    batch: int
    frames: int
    lr: float


def _vae_crops(
    cfg: TrainConfig, phase: _Phase, videos: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of crops (N, 3, frames, crop, crop), most centred near the object, and their
    loss weights (from the whole clip's median, so a slow object still counts)."""
    n, _, t, h, w = videos.shape
    idx = rng.integers(n, size=phase.batch)
    weights = _object_weight(videos[idx], cfg.object_weight)
    crops, crop_weights = [], []
    for j, i in enumerate(idx):
        t0 = int(rng.integers(t - phase.frames + 1))
        frames = weights[j, 0, t0 : t0 + phase.frames]
        ys, xs = torch.nonzero(frames.amax(0) > 1, as_tuple=True)
        if len(ys) and rng.random() < 0.8:
            k = int(rng.integers(len(ys)))
            cy = int(ys[k]) + int(rng.integers(-8, 9))
            cx = int(xs[k]) + int(rng.integers(-8, 9))
        else:
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
        half = cfg.vae_crop // 2
        y0 = min(max(cy - half, 0), h - cfg.vae_crop)
        x0 = min(max(cx - half, 0), w - cfg.vae_crop)
        window = (slice(t0, t0 + phase.frames), slice(y0, y0 + cfg.vae_crop))
        cols = slice(x0, x0 + cfg.vae_crop)
        crops.append(videos[i, :, window[0], window[1], cols])
        crop_weights.append(weights[j, :, window[0], window[1], cols])
    return torch.stack(crops), torch.stack(crop_weights)


def train_vae(cfg: TrainConfig, data: Dataset, log: Log) -> AutoencoderKLWan:
    """Short crops (cheap: most of the VAE's learning)."""
    phase = _Phase(cfg.vae_steps, cfg.vae_batch, cfg.vae_frames, cfg.vae_lr)
    return _fit_vae(cfg, phase, new_vae(), data, log, "vae", 4)


def train_vae_long(
    cfg: TrainConfig, vae: AutoencoderKLWan, data: Dataset, log: Log
) -> AutoencoderKLWan:
    """Then crops as long as the clips, from where the short ones left the VAE."""
    phase = _Phase(cfg.vae_long_steps, cfg.vae_long_batch, cfg.num_frames, cfg.vae_long_lr)
    return _fit_vae(cfg, phase, copy.deepcopy(vae), data, log, "vae, long", 6)


def _fit_vae(
    cfg: TrainConfig,
    phase: _Phase,
    vae: AutoencoderKLWan,
    data: Dataset,
    log: Log,
    name: str,
    stream: int,
) -> AutoencoderKLWan:
    videos = to_model_space(data.videos)
    opt = torch.optim.AdamW(vae.requires_grad_(True).parameters(), lr=phase.lr, weight_decay=0.0)
    rng = np.random.default_rng([cfg.seed, stream])
    gen = torch.Generator().manual_seed(cfg.seed + stream)
    vae.train()
    for step in range(phase.steps):
        x, weight = _vae_crops(cfg, phase, videos, rng)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=gen, dtype=posterior.mean.dtype
        )
        recon = vae.decode(z).sample
        err = recon - x
        rec = ((err.abs() + err.square()) * weight).sum() / weight.sum()
        kl = posterior.kl().mean() / x[0].numel()
        loss = rec + cfg.kl_weight * kl
        for g in opt.param_groups:
            g["lr"] = phase.lr * schedule(step, phase.steps, min(cfg.warmup, phase.steps // 4))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        log(name, step, phase.steps, {"loss": loss.item(), "recon": rec.item()})
    vae.eval()
    return vae.requires_grad_(False)


def train_decoder(
    cfg: TrainConfig, vae: AutoencoderKLWan, data: Dataset, log: Log
) -> AutoencoderKLWan:
    """Last, the decoder alone on whole-length crops, from fixed latents (the encoder's means,
    so the latents, and a transformer trained on them, stay valid), with a loss on the
    object's mean colour besides the pixels: the joint training leaves hues pulled toward
    each other (red and yellow toward orange), which is what a viewer notices first."""
    vae = copy.deepcopy(vae).requires_grad_(False)
    trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=cfg.decoder_lr, weight_decay=0.0)
    phase = _Phase(cfg.decoder_steps, cfg.vae_long_batch, cfg.num_frames, cfg.decoder_lr)
    videos = to_model_space(data.videos)
    rng = np.random.default_rng([cfg.seed, 8])
    vae.decoder.train()
    for step in range(phase.steps):
        x, weight = _vae_crops(cfg, phase, videos, rng)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        recon = vae.decode(z).sample
        err = recon - x
        rec = ((err.abs() + err.square()) * weight).sum() / weight.sum()
        obj = (weight > 1).float()
        area = obj.sum(dim=(2, 3, 4)).clamp(min=1)
        colour = ((recon - x) * obj).sum(dim=(2, 3, 4)) / area  # (N, 3): mean colour error
        loss = rec + cfg.colour_weight * colour.square().mean()
        for g in opt.param_groups:
            g["lr"] = phase.lr * schedule(step, phase.steps, min(cfg.warmup, phase.steps // 4))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        log("decoder", step, phase.steps, {"loss": loss.item(), "recon": rec.item()})
    vae.eval()
    return vae.requires_grad_(False)


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def encode_latents(vae: AutoencoderKLWan, videos: np.ndarray) -> torch.Tensor:
    """The posterior means of whole clips: (N, z, T', H', W')."""
    with torch.no_grad():
        parts = [
            vae.encode(to_model_space(videos[s])).latent_dist.mean
            for s in _batches(len(videos), 16)
        ]
    return torch.cat(parts)


def judge_accuracy(videos: np.ndarray, clips: list[world.ClipSpec]) -> dict[str, float]:
    hits = dict.fromkeys(("colour", "shape", "motion"), 0)
    for frames, clip in zip(videos, clips, strict=True):
        verdict = judge(frames)
        for attr in hits:
            hits[attr] += getattr(verdict, attr) == getattr(clip, attr)
    return {attr: n / len(clips) for attr, n in hits.items()}


def check_vae(cfg: TrainConfig, vae: AutoencoderKLWan) -> dict[str, float]:
    """The judge's accuracy on held-out clips after a VAE round trip: an upper bound for the
    whole model's adherence."""
    clips = world.held_out_clips(cfg.check_clips, cfg.seed)
    size = {"width": cfg.width, "height": cfg.height, "num_frames": cfg.num_frames}
    videos = np.stack([world.render(c, **size) for c in clips])
    with torch.no_grad():
        recon = vae.decode(encode_latents(vae, videos)).sample
    return judge_accuracy(from_model_space(recon), clips)


def embed_prompts(pipe: WanPipeline, prompts: list[str], length: int) -> torch.Tensor:
    """Prompt embeddings exactly as the pipeline computes them at generation time."""
    with torch.no_grad():
        return torch.cat(
            [
                pipe._get_t5_prompt_embeds(prompts[s], max_sequence_length=length)
                for s in _batches(len(prompts), 256)
            ]
        )


def _sigmas(n: int, shift: float, gen: torch.Generator) -> torch.Tensor:
    """Noise levels in (0, 1): logit-normal, then shifted toward noise as the sampler is."""
    u = torch.sigmoid(torch.randn(n, generator=gen))
    return shift * u / (1 + (shift - 1) * u)


def train_transformer(
    cfg: TrainConfig,
    latents: torch.Tensor,
    embeds: torch.Tensor,
    uncond: torch.Tensor,
    log: Log,
) -> WanTransformer3DModel:
    """latents (N, z, T', H', W') normalised; embeds (N, prompts_per_clip, L, D)."""
    model = new_transformer()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.dit_lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(cfg.seed + 5)
    n, per = embeds.shape[:2]
    model.train()
    for step in range(cfg.dit_steps):
        idx = torch.randint(n, (cfg.dit_batch,), generator=gen)
        which = torch.randint(per, (cfg.dit_batch,), generator=gen)
        text = embeds[idx, which].clone()
        drop = torch.rand(cfg.dit_batch, generator=gen) < cfg.p_uncond
        text[drop] = uncond
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        sigma = _sigmas(cfg.dit_batch, cfg.flow_shift, gen).view(-1, 1, 1, 1, 1)
        xt = (1 - sigma) * x0 + sigma * noise
        pred = model(
            hidden_states=xt,
            timestep=sigma.flatten() * 1000,
            encoder_hidden_states=text,
            return_dict=False,
        )[0]
        loss = F.mse_loss(pred, noise - x0)
        for g in opt.param_groups:
            g["lr"] = cfg.dit_lr * schedule(step, cfg.dit_steps, cfg.warmup)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        log("transformer", step, cfg.dit_steps, {"loss": loss.item()})
    return ema.eval()


# --- the whole run -------------------------------------------------------------------------


def _progress(every: int) -> Log:
    started: dict[str, float] = {}

    def log(stage: str, step: int, total: int, values: dict[str, float]) -> None:
        started.setdefault(stage, time.monotonic())
        if step % every and step != total - 1:
            return
        elapsed = time.monotonic() - started[stage]
        done = (step + 1) / total
        bar = "#" * int(done * 30)
        eta = elapsed / done - elapsed
        figures = " ".join(f"{k} {v:.4f}" for k, v in values.items())
        print(
            f"[{stage:>12}] [{bar:<30}] {step + 1}/{total} {figures} "
            f"({elapsed:.0f} s, {eta:.0f} s left)",
            flush=True,
        )

    return log


class _Stages:
    """Runs the stages, each from a fixed seed, and keeps each one's result and time in
    `work` (if given) to reuse: a later stage can be retried without the earlier ones."""

    def __init__(self, seed: int, work: Path | None) -> None:
        self.seed = seed
        self.work = work
        self.seconds: dict[str, float | None] = {}

    def run(self, name: str, load: Callable[[str], T], train: Callable[[], T]) -> T:
        saved = self.work / name if self.work is not None else None
        if saved is not None and saved.is_dir():
            print(f"{name}: reusing {saved}", flush=True)
            timing = saved / "train_seconds"
            self.seconds[name] = float(timing.read_text()) if timing.exists() else None
            return load(str(saved))
        # Its own seed: whether the stages before ran or were reused changes nothing here.
        torch.manual_seed(self.seed * 100 + len(self.seconds))
        started = time.monotonic()
        result = train()
        elapsed = self.seconds[name] = round(time.monotonic() - started, 1)
        if saved is not None:
            result.save_pretrained(saved)  # type: ignore[attr-defined]
            (saved / "train_seconds").write_text(f"{elapsed}\n")
        return result


def _load_vae(path: str) -> AutoencoderKLWan:
    return AutoencoderKLWan.from_pretrained(path).eval().requires_grad_(False)


def _vae_stages(cfg: TrainConfig, data: Dataset, stages: _Stages, log: Log) -> AutoencoderKLWan:
    vae = stages.run("vae", _load_vae, lambda: train_vae(cfg, data, log))
    vae = stages.run("vae_long", _load_vae, lambda: train_vae_long(cfg, vae, data, log))
    return stages.run("decoder", _load_vae, lambda: train_decoder(cfg, vae, data, log))


def _normalised_latents(vae: AutoencoderKLWan, data: Dataset) -> torch.Tensor:
    """The clips' latents, each channel to mean 0 and std 1; the VAE's config records the
    statistics (latents_mean, latents_std), which the pipeline undoes before decoding."""
    raw = encode_latents(vae, data.videos)
    mean = raw.mean(dim=(0, 2, 3, 4))
    std = raw.std(dim=(0, 2, 3, 4))
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    return (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)


def train(cfg: TrainConfig, out: Path, work: Path | None = None) -> dict[str, object]:
    """Run all stages and write the model directory; returns the training summary."""
    torch.set_num_threads(cfg.threads)
    log = _progress(cfg.log_every)
    stages = _Stages(cfg.seed, work)
    tokenizer = ByT5Tokenizer()
    data = make_dataset(cfg)
    print(f"rendered {len(data.clips)} clips of {data.videos.shape[1:]}", flush=True)
    text_encoder = stages.run(
        "text_encoder",
        lambda p: UMT5EncoderModel.from_pretrained(p).eval().requires_grad_(False),
        lambda: train_text_encoder(cfg, tokenizer, log),
    )
    vae = _vae_stages(cfg, data, stages, log)
    vae_check = check_vae(cfg, vae)
    print(f"judge on held-out VAE round trips: {vae_check}", flush=True)
    latents = _normalised_latents(vae, data)
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=new_scheduler(cfg.flow_shift),
        transformer=None,
    )
    flat = [p for prompts in data.prompts for p in prompts]
    embeds = embed_prompts(pipe, flat, cfg.max_sequence_length)
    embeds = embeds.view(len(data.clips), cfg.prompts_per_clip, *embeds.shape[1:])
    uncond = embed_prompts(pipe, [""], cfg.max_sequence_length)[0]
    transformer = stages.run(
        "transformer",
        lambda p: WanTransformer3DModel.from_pretrained(p).eval(),
        lambda: train_transformer(cfg, latents, embeds, uncond, log),
    )
    # A new pipeline, not an assignment: only constructor arguments are registered (saved).
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=new_scheduler(cfg.flow_shift),
        transformer=transformer,
    )
    summary = {
        "seed": cfg.seed,
        "config": dataclasses.asdict(cfg),
        "vae_round_trip_judge": vae_check,
        "stage_seconds": stages.seconds,
        "parameters": {
            name: sum(p.numel() for p in module.parameters())
            for name, module in (
                ("text_encoder", text_encoder),
                ("vae", vae),
                ("transformer", pipe.transformer),
            )
        },
    }
    save(pipe, cfg, out, summary)
    return summary


def save(pipe: WanPipeline, cfg: TrainConfig, out: Path, summary: dict[str, object]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    native = f"{cfg.width}x{cfg.height}"
    # What the service reads (videogen.catalog): it draws at `native`, the encoder scales
    # the frames to the size asked for.
    serving = {
        "fps": cfg.fps,
        "sizes": [native, *SERVED_SIZES],
        "default_size": SERVED_SIZES[-1],
        "seconds": [1, 2, 3, 4],
        "default_seconds": (cfg.num_frames - 1) // cfg.fps,
        "default_steps": DEFAULT_STEPS,
        "guidance_scale": GUIDANCE_SCALE,
        "render_size": native,
        "max_sequence_length": cfg.max_sequence_length,
    }
    spec = {
        "name": "videogen-tiny",
        "description": DESCRIPTION,
        "serving": serving,
        "training": summary,
    }
    (out / "videogen.json").write_text(json.dumps(spec, indent=2) + "\n")


def _parse(argv: list[str] | None) -> tuple[TrainConfig, Path, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="a few steps per stage")
    parser.add_argument(
        "--work",
        type=Path,
        help="keep each stage's result here, and reuse what is there (to retry a later stage)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="a TrainConfig field"
    )
    args = parser.parse_args(argv)
    cfg = TrainConfig()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in fields:
            parser.error(f"--set {item}: no field {name!r}; fields: {', '.join(fields)}")
        kind = type(getattr(cfg, name))
        cfg = dataclasses.replace(cfg, **{name: kind(value)})
    if args.quick:
        cfg = cfg.quick()
    return cfg, args.out, args.work


def main(argv: list[str] | None = None) -> None:
    cfg, out, work = _parse(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    summary = train(cfg, out, work)
    print(json.dumps(summary["vae_round_trip_judge"]), f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
