"""The published Wan 2.1 / 2.2 text-to-video models in diffusers format: what each directory
holds (configs, component classes, dtypes) and how to serve it (sizes, lengths, defaults).

`videogen.fake_wan` writes directories from this table; `videogen.catalog` reads it to give a
directory without a `videogen.json` the defaults of the variant it recognises. The catalog is
imported by the API process, so this module stays light: no torch, no diffusers.

Where the figures come from:

- Transformer configs: `get_transformer_config` in diffusers' `scripts/convert_wan_to_diffusers.py`
  (model types Wan-T2V-1.3B, Wan-T2V-14B, Wan2.2-T2V-A14B, Wan2.2-TI2V-5B). The fields it leaves
  out take `WanTransformer3DModel`'s defaults (image_dim and pos_embed_seq_len null,
  rope_max_seq_len 1024), which is what the published `transformer/config.json` files show.
  Wan2.2-T2V-A14B has two experts of that one config: the script converts `high_noise_model`
  into `transformer` and `low_noise_model` into `transformer_2`.
- VAE configs: Wan2.1 (and Wan2.2-T2V-A14B) use `AutoencoderKLWan()` with its defaults (the
  script's `convert_vae`); TI2V-5B uses the script's `vae22_diffusers_config` (z_dim 48,
  base_dim 160, decoder_base_dim 256, patch_size 2, spatial factor 16) without `clip_output`,
  an argument diffusers removed from `AutoencoderKLWan` in July 2025 (diffusers PR #12041) that
  the script still passes.
- Text encoder: google/umt5-xxl's `UMT5EncoderModel` config, as published in `text_encoder/
  config.json` of the Wan-AI `*-Diffusers` repositories; tokenizer class `T5TokenizerFast` as
  their `model_index.json` names it.
- Scheduler: the script's `UniPCMultistepScheduler(prediction_type="flow_prediction",
  use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=...)`, flow_shift 5.0 for TI2V
  and 3.0 for the others; pipeline config `boundary_ratio=0.875` for Wan2.2 T2V and
  `expand_timesteps=True` for TI2V (the script's `WanPipeline(...)` calls).
- Dtypes: the published file sizes over the parameter counts of these configs (counted with
  `videogen.fake_wan.parameter_counts`). Every transformer is float32: Wan2.1-T2V-1.3B's
  transformer is 5.68 GB for 1,418,996,800 parameters, the 14B and A14B ones are 12 shards of
  up to 4.92 GB for 14,288,491,584, TI2V-5B's 5 shards (the fourth 4.85 GB) for 4,999,787,712.
  The UMT5 encoder (5,680,910,336 parameters) is float32 in the Wan2.1 repositories (22.7 GB, 5
  shards) and bfloat16 in the Wan2.2 ones (11.4 GB, 3 shards, as the current script saves it).
  The Wan2.1 VAE is float32 (508 MB for 126,892,531 parameters). The script never casts the
  Wan2.2 VAE (it keeps the checkpoint's dtype); float32 is what a 2.82 GB third-party copy of
  it gives for its 704,688,668 parameters.
- Serving: the Wan reference repositories. Wan-Video/Wan2.1 `wan/configs` and `generate.py`:
  16 fps, 81 frames (5 s), 50 steps, guidance 5.0, sizes 832*480 and 480*832 for the 1.3B model,
  also 1280*720 and 720*1280 for the 14B one (default 1280*720); its README recommends guidance 6
  for T2V-1.3B and, for diffusers, flow_shift 5.0 at 720P and 3.0 at 480P. Wan-Video/Wan2.2
  `wan/configs`: T2V-A14B samples 40 steps at 16 fps and 81 frames, boundary 0.875, guidance
  4.0 for the high-noise expert and 3.0 for the low-noise one, shift 12.0; TI2V-5B 24 fps,
  121 frames (5 s), 50 steps, guidance 5.0, shift 5.0, sizes 1280*704 and 704*1280. Both use
  512 text tokens (`text_len`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

# The conversion script saves with save_pretrained(max_shard_size="5GB").
SHARD_SIZE = "5GB"
# google/umt5-xxl's vocabulary size: the embedding is 256384 x 4096.
UMT5_VOCAB_SIZE = 256384

# text_encoder/config.json of the Wan-AI *-Diffusers repositories (google/umt5-xxl), minus the
# bookkeeping keys transformers writes itself (_name_or_path, dtype, transformers_version).
UMT5_XXL: dict[str, Any] = {
    "architectures": ["UMT5EncoderModel"],
    "classifier_dropout": 0.0,
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "umt5",
    "num_decoder_layers": 24,
    "num_heads": 64,
    "num_layers": 24,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "scalable_attention": True,
    "tie_word_embeddings": False,
    "tokenizer_class": "T5Tokenizer",
    "use_cache": True,
    "vocab_size": UMT5_VOCAB_SIZE,
}

# What every Wan text-to-video transformer config shares (the conversion script).
_TRANSFORMER_COMMON: dict[str, Any] = {
    "added_kv_proj_dim": None,
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-06,
    "freq_dim": 256,
    "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads",
    "text_dim": 4096,
}

# Keys that identify an architecture (widths, channels); num_layers is left out so that a
# directory cut in depth (videogen.fake_wan's `layers`) is still recognised.
ARCHITECTURE_KEYS = (
    "attention_head_dim",
    "ffn_dim",
    "freq_dim",
    "in_channels",
    "num_attention_heads",
    "out_channels",
    "patch_size",
    "text_dim",
)

# AutoencoderKLWan's defaults are the Wan2.1 VAE: nothing to override.
WAN21_VAE: dict[str, Any] = {}

# The Wan2.2 VAE's per-channel latent statistics (vae22_diffusers_config).
# fmt: off
_WAN22_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]
_WAN22_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]
# fmt: on

# The script's vae22_diffusers_config, without the removed `clip_output`.
WAN22_VAE: dict[str, Any] = {
    "base_dim": 160,
    "z_dim": 48,
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "decoder_base_dim": 256,
    "scale_factor_temporal": 4,
    "scale_factor_spatial": 16,
    "patch_size": 2,
    "latents_mean": _WAN22_LATENTS_MEAN,
    "latents_std": _WAN22_LATENTS_STD,
}

WAN21_480P = ("832x480", "480x832")
WAN_480P_720P = ("1280x720", "720x1280", "832x480", "480x832")


def _transformer(**widths: Any) -> dict[str, Any]:
    return {**_TRANSFORMER_COMMON, **widths}


def _scheduler(flow_shift: float) -> dict[str, Any]:
    """UniPCMultistepScheduler arguments as the conversion script passes them."""
    return {
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "num_train_timesteps": 1000,
        "flow_shift": flow_shift,
    }


@dataclass(frozen=True)
class Serving:
    """How to serve a variant: the `serving` object of a `videogen.json` (`as_json`), plus
    Wan's own sampler shift, which that object has no field for."""

    fps: int
    sizes: tuple[str, ...]
    default_size: str
    seconds: tuple[int, ...]
    default_seconds: int
    default_steps: int
    guidance_scale: float
    # Low-noise expert's guidance (WanPipeline's guidance_scale_2); None: one transformer.
    guidance_scale_2: float | None = None
    # Published per-resolution flow shift for diffusers' scheduler, where there is one.
    flow_shift_by_size: dict[str, float] = field(default_factory=dict)
    # The shift Wan's own sampler uses (its `sample_shift`), for comparison.
    reference_sample_shift: float | None = None
    max_sequence_length: int = 512

    def as_json(self) -> dict[str, Any]:
        """The `serving` object of a videogen.json (read by `videogen.catalog`)."""
        g2 = self.guidance_scale_2
        return {
            "fps": self.fps,
            "sizes": list(self.sizes),
            "default_size": self.default_size,
            "seconds": list(self.seconds),
            "default_seconds": self.default_seconds,
            "default_steps": self.default_steps,
            "guidance_scale": self.guidance_scale,
            **({} if g2 is None else {"guidance_scale_2": g2}),
            **({"flow_shift_by_size": self.flow_shift_by_size} if self.flow_shift_by_size else {}),
            "max_sequence_length": self.max_sequence_length,
        }


@dataclass(frozen=True)
class WanVariant:
    """One published diffusers directory: its components' configs, dtypes and serving."""

    name: str
    repo: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    scheduler: dict[str, Any]
    # Component -> torch dtype name of the published weights.
    dtypes: dict[str, str]
    serving: Serving
    # Wan2.2 A14B: a second expert (`transformer_2`) of the same config.
    two_experts: bool = False
    boundary_ratio: float | None = None
    expand_timesteps: bool = False
    text_encoder: dict[str, Any] = field(default_factory=lambda: dict(UMT5_XXL))
    tokenizer_class: str = "T5TokenizerFast"
    # The published model_index.json has the Wan2.2 keys (boundary_ratio, expand_timesteps,
    # transformer_2); the Wan2.1 ones predate them.
    wan22_index: bool = False

    @property
    def vae_z_dim(self) -> int:
        return int(self.vae.get("z_dim", 16))

    def model_index(self, diffusers_version: str) -> dict[str, Any]:
        """model_index.json with the published component classes and pipeline config."""
        index: dict[str, Any] = {
            "_class_name": "WanPipeline",
            "_diffusers_version": diffusers_version,
        }
        if self.wan22_index:
            index["boundary_ratio"] = self.boundary_ratio
            index["expand_timesteps"] = self.expand_timesteps
        index["scheduler"] = ["diffusers", "UniPCMultistepScheduler"]
        index["text_encoder"] = ["transformers", "UMT5EncoderModel"]
        index["tokenizer"] = ["transformers", self.tokenizer_class]
        index["transformer"] = ["diffusers", "WanTransformer3DModel"]
        if self.wan22_index:
            expert = ["diffusers", "WanTransformer3DModel"] if self.two_experts else [None, None]
            index["transformer_2"] = expert
        index["vae"] = ["diffusers", "AutoencoderKLWan"]
        return index


_FP32 = {"transformer": "float32", "text_encoder": "float32", "vae": "float32"}
_WAN22_DTYPES = {**_FP32, "text_encoder": "bfloat16"}

VARIANTS: dict[str, WanVariant] = {
    v.name: v
    for v in (
        WanVariant(
            name="wan2.1-t2v-1.3b",
            repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            transformer=_transformer(
                ffn_dim=8960,
                in_channels=16,
                num_attention_heads=12,
                num_layers=30,
                out_channels=16,
            ),
            vae=WAN21_VAE,
            scheduler=_scheduler(3.0),
            dtypes=_FP32,
            serving=Serving(
                fps=16,
                sizes=WAN21_480P,
                default_size="832x480",
                seconds=(1, 2, 3, 4, 5),
                default_seconds=5,
                default_steps=50,
                guidance_scale=6.0,
                flow_shift_by_size={"832x480": 3.0, "480x832": 3.0},
                reference_sample_shift=5.0,
            ),
        ),
        WanVariant(
            name="wan2.1-t2v-14b",
            repo="Wan-AI/Wan2.1-T2V-14B-Diffusers",
            transformer=_transformer(
                ffn_dim=13824,
                in_channels=16,
                num_attention_heads=40,
                num_layers=40,
                out_channels=16,
            ),
            vae=WAN21_VAE,
            scheduler=_scheduler(3.0),
            dtypes=_FP32,
            serving=Serving(
                fps=16,
                sizes=WAN_480P_720P,
                default_size="1280x720",
                seconds=(1, 2, 3, 4, 5),
                default_seconds=5,
                default_steps=50,
                guidance_scale=5.0,
                flow_shift_by_size={
                    "1280x720": 5.0,
                    "720x1280": 5.0,
                    "832x480": 3.0,
                    "480x832": 3.0,
                },
                reference_sample_shift=5.0,
            ),
        ),
        WanVariant(
            name="wan2.2-t2v-a14b",
            repo="Wan-AI/Wan2.2-T2V-A14B-Diffusers",
            transformer=_transformer(
                ffn_dim=13824,
                in_channels=16,
                num_attention_heads=40,
                num_layers=40,
                out_channels=16,
            ),
            vae=WAN21_VAE,
            scheduler=_scheduler(3.0),
            dtypes=_WAN22_DTYPES,
            serving=Serving(
                fps=16,
                sizes=WAN_480P_720P,
                default_size="1280x720",
                seconds=(1, 2, 3, 4, 5),
                default_seconds=5,
                default_steps=40,
                guidance_scale=4.0,
                guidance_scale_2=3.0,
                reference_sample_shift=12.0,
            ),
            two_experts=True,
            boundary_ratio=0.875,
            wan22_index=True,
        ),
        WanVariant(
            name="wan2.2-ti2v-5b",
            repo="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
            transformer=_transformer(
                ffn_dim=14336,
                in_channels=48,
                num_attention_heads=24,
                num_layers=30,
                out_channels=48,
            ),
            vae=WAN22_VAE,
            scheduler=_scheduler(5.0),
            dtypes=_WAN22_DTYPES,
            serving=Serving(
                fps=24,
                sizes=("1280x704", "704x1280"),
                default_size="1280x704",
                seconds=(1, 2, 3, 4, 5),
                default_seconds=5,
                default_steps=50,
                guidance_scale=5.0,
                reference_sample_shift=5.0,
            ),
            expand_timesteps=True,
            wan22_index=True,
        ),
    )
}


def variant(name: str) -> WanVariant:
    """The variant called `name`; ValueError naming the known ones otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown Wan variant {name!r}; allowed: {', '.join(VARIANTS)}") from None


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _has_second_expert(path: str) -> bool:
    index = _read_json(os.path.join(path, "model_index.json")) or {}
    entry = index.get("transformer_2")
    if isinstance(entry, list) and entry and entry[0] is not None:
        return True
    return os.path.isfile(os.path.join(path, "transformer_2", "config.json"))


def identify(path: str | os.PathLike[str]) -> WanVariant | None:
    """The variant a local diffusers directory is, from its `transformer/config.json` widths,
    whether it has a `transformer_2` and its VAE's z_dim; None if it matches none (or has no
    readable transformer config). Depth is not compared: see ARCHITECTURE_KEYS."""
    path = os.fspath(path)
    config = _read_json(os.path.join(path, "transformer", "config.json"))
    if config is None:
        return None
    vae = _read_json(os.path.join(path, "vae", "config.json")) or {}
    z_dim = vae.get("z_dim", 16)
    two_experts = _has_second_expert(path)
    for candidate in VARIANTS.values():
        if (
            all(config.get(k) == candidate.transformer[k] for k in ARCHITECTURE_KEYS)
            and candidate.two_experts == two_experts
            and candidate.vae_z_dim == z_dim
        ):
            return candidate
    return None
