"""Write a diffusers Wan directory with a published variant's layout and configs but random
weights, so real tensor shapes can be loaded and run without downloading anything.

`build(variant, out_dir, layers=...)` writes `model_index.json`, `scheduler/`, `transformer/`
(and `transformer_2/` for Wan2.2-T2V-A14B), `vae/`, `text_encoder/` and `tokenizer/` as the
Wan-AI `*-Diffusers` repositories lay them out (configs and dtypes from `videogen.wan_variants`,
safetensors sharded by `save_pretrained(max_shard_size=...)` with an index json, 5GB shards as
published), and a `videogen.json` with the variant's serving defaults.

What differs from the published directories, on purpose or because it cannot be had offline:

- Weights are random (seeded, normal with std min(0.02, fan_in**-0.5); norm scales 1, biases 0):
  the pipeline runs and gives finite noise, not pictures.
- `layers` cuts the depth (transformer blocks, and text-encoder layers unless `text_layers`
  says otherwise); every width stays, so each tensor has its published shape.
- The tokenizer is of the published class (`T5TokenizerFast`, which is `T5Tokenizer` in
  transformers 5) but its vocabulary is NOT UMT5's: google/umt5-xxl's `spiece.model` cannot be
  built offline, so it is a small Unigram vocabulary (SMALL_TOKENIZER_SIZE pieces: pad, eos, unk,
  the word marker, ASCII letters and digits with and without it, ASCII punctuation); any other
  character is `<unk>`. Token ids, and so prompt embeddings, are not those of the real model.
- `vocab_size` sets the text encoder's embedding rows (default: the published 256384, a
  256384 x 4096 matrix, 4.2 GB in float32); tests use SMALL_VOCAB_SIZE.
- The configs carry this diffusers/transformers version's bookkeeping keys, not the published
  ones (`_diffusers_version`, `transformers_version`, `dtype` instead of `torch_dtype`).

Building needs memory for one component's weights at a time (the largest is written before
the next is made); `parameter_counts` gives the counts without allocating anything.
"""

from __future__ import annotations

import json
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

from videogen.catalog import SPEC_FILE
from videogen.wan_variants import SHARD_SIZE, WanVariant, variant

# Text-encoder embedding rows for tests: room for the small tokenizer, ~1M parameters.
SMALL_VOCAB_SIZE = 256
# Upper bound of the init std; smaller where fan_in**-0.5 is, so no layer amplifies.
INIT_STD = 0.02

_WORD = "▁"  # SentencePiece's word-start marker, as T5 tokenizers use it.
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _tokenizer_pieces() -> list[tuple[str, float]]:
    # UMT5's first ids: <pad>=0, </s>=1, <unk>=2 (text_encoder config pad/eos ids 0 and 1).
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (_WORD, -2.0)]
    pieces += [(_WORD + c, -3.0) for c in string.ascii_letters + string.digits]
    pieces += [(c, -4.0) for c in string.printable if not c.isspace()]
    return pieces


SMALL_TOKENIZER_SIZE = len(_tokenizer_pieces())


def build_tokenizer(max_length: int = 512) -> T5TokenizerFast:
    """A T5TokenizerFast with the small local vocabulary (see the module docstring)."""
    return T5TokenizerFast(vocab=_tokenizer_pieces(), extra_ids=0, model_max_length=max_length)


@dataclass(frozen=True)
class Built:
    """What `build` wrote."""

    path: Path
    variant: str
    # Component -> parameter count (transformer_2 counted on its own).
    parameters: dict[str, int]
    weights: bool
    seconds: float


def transformer_config(v: WanVariant, layers: int | None = None) -> dict[str, Any]:
    config = dict(v.transformer)
    if layers is not None:
        config["num_layers"] = layers
    return config


def text_encoder_config(
    v: WanVariant, layers: int | None = None, vocab_size: int | None = None
) -> UMT5Config:
    config = dict(v.text_encoder)
    if layers is not None:
        config["num_layers"] = layers
    if vocab_size is not None:
        config["vocab_size"] = vocab_size
    config.pop("model_type")
    return UMT5Config(**config)


def _components(
    v: WanVariant, layers: int | None, text_layers: int | None, vocab_size: int | None
) -> dict[str, Callable[[], torch.nn.Module]]:
    """Component name -> constructor (called under a meta device, so it allocates nothing)."""
    t_config = transformer_config(v, layers)
    te_config = text_encoder_config(v, text_layers, vocab_size)
    made: dict[str, Callable[[], torch.nn.Module]] = {
        "transformer": lambda: WanTransformer3DModel(**t_config),
        "vae": lambda: AutoencoderKLWan(**v.vae),
        "text_encoder": lambda: UMT5EncoderModel(te_config),
    }
    if v.two_experts:
        made["transformer_2"] = made["transformer"]
    return made


def _dtype(v: WanVariant, component: str) -> torch.dtype:
    return _DTYPES[v.dtypes[component.removesuffix("_2")]]


def parameter_counts(
    name: str,
    layers: int | None = None,
    text_layers: int | None = None,
    vocab_size: int | None = None,
) -> dict[str, int]:
    """Parameters per component of `name` (at full depth by default), counted on the meta
    device: nothing is allocated."""
    v = variant(name)
    text_layers = layers if text_layers is None else text_layers
    counts = {}
    for component, make in _components(v, layers, text_layers, vocab_size).items():
        with torch.device("meta"):
            counts[component] = sum(p.numel() for p in make().parameters())
    return counts


def _fill(name: str, param: torch.Tensor, generator: torch.Generator) -> None:
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        param.zero_()
    elif leaf == "gamma" or (param.ndim == 1 and leaf == "weight"):
        param.fill_(1.0)  # RMS/layer-norm scales: identity, so activations stay in range
    else:
        fan_in = param.numel() // param.shape[0]
        param.normal_(0.0, min(INIT_STD, fan_in**-0.5), generator=generator)


def _meta_module(make: Callable[[], torch.nn.Module], dtype: torch.dtype) -> torch.nn.Module:
    with torch.device("meta"):
        module = make()
    # Modules are built in float32; casting one that already is makes diffusers warn about
    # its float32-only submodules for nothing.
    return module if dtype == torch.float32 else module.to(dtype)


def _random_module(
    make: Callable[[], torch.nn.Module], dtype: torch.dtype, seed: int
) -> torch.nn.Module:
    """`make()` with seeded random weights: built on the meta device (no init cost), then given
    uninitialised CPU storage that every parameter is filled into. Non-persistent buffers
    (the transformer's rotary tables) stay uninitialised: they are not saved, and the module
    is only used to save."""
    module = _meta_module(make, dtype)
    module.to_empty(device="cpu")
    tie = getattr(module, "tie_weights", None)
    if tie is not None:
        tie()  # to_empty unties UMT5's shared / encoder.embed_tokens embedding
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            _fill(name, param, generator)
    return module


def _save_config_only(module: torch.nn.Module, out: Path, dtype: torch.dtype) -> None:
    if isinstance(module, UMT5EncoderModel):
        module.config.dtype = dtype
        module.config.save_pretrained(out)
    else:
        module.save_config(out)  # type: ignore[operator]


def _write_component(
    make: Callable[[], torch.nn.Module],
    out: Path,
    dtype: torch.dtype,
    seed: int,
    max_shard_size: str,
    weights: bool,
) -> int:
    if not weights:
        module = _meta_module(make, dtype)
        _save_config_only(module, out, dtype)
        return sum(p.numel() for p in module.parameters())
    module = _random_module(make, dtype, seed)
    module.save_pretrained(out, max_shard_size=max_shard_size)  # type: ignore[operator]
    return sum(p.numel() for p in module.parameters())


def _spec(v: WanVariant, built: dict[str, Any]) -> dict[str, Any]:
    """The videogen.json: serving as videogen.catalog reads it, and what this directory is."""
    s = v.serving
    return {
        "name": f"fake-{v.name}",
        "description": (
            f"random weights in the layout, configs and dtypes of {v.repo}: it loads and "
            "runs at the real tensor shapes, and draws noise"
        ),
        "serving": s.as_json(),
        "wan": {
            "variant": v.name,
            "repo": v.repo,
            "dtypes": dict(v.dtypes),
            "boundary_ratio": v.boundary_ratio,
            "expand_timesteps": v.expand_timesteps,
            "scheduler_flow_shift": v.scheduler["flow_shift"],
            "reference_sample_shift": s.reference_sample_shift,
        },
        "fake": built,
    }


def _check_out(out: Path) -> None:
    # A second build into the same place could leave shards of the first behind.
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not an empty directory; pick a new one")


def build(
    name: str,
    out_dir: str | Path,
    layers: int | None = None,
    *,
    text_layers: int | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
    max_shard_size: str = SHARD_SIZE,
    weights: bool = True,
) -> Built:
    """Write variant `name` into `out_dir` (absent or empty). `layers`: transformer blocks
    and, unless `text_layers` is given, text-encoder layers (None: the published depth).
    `vocab_size`: text-encoder embedding rows (None: the published 256384). `weights=False`
    writes every config, the tokenizer and videogen.json but no weight files."""
    v = variant(name)
    text_layers = layers if text_layers is None else text_layers
    for label, value in (("layers", layers), ("text_layers", text_layers)):
        if value is not None and value < 1:
            raise ValueError(f"{label}: must be at least 1, got {value}")
    rows = v.text_encoder["vocab_size"] if vocab_size is None else vocab_size
    if rows < SMALL_TOKENIZER_SIZE:
        raise ValueError(f"vocab_size: must be at least {SMALL_TOKENIZER_SIZE} (the tokenizer)")
    out = Path(out_dir)
    _check_out(out)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    # fork_rng: building must neither use nor disturb the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        components = _components(v, layers, text_layers, vocab_size)
        for i, (component, make) in enumerate(components.items()):
            dtype = _dtype(v, component)
            # One seed per component: changing one's depth leaves the others' weights alone.
            counts[component] = _write_component(
                make, out / component, dtype, seed * 100 + i, max_shard_size, weights
            )
    UniPCMultistepScheduler(**v.scheduler).save_pretrained(out / "scheduler")
    build_tokenizer(v.serving.max_sequence_length).save_pretrained(out / "tokenizer")
    _write_json(out / "model_index.json", v.model_index(diffusers.__version__))
    built = {
        "seed": seed,
        "layers": layers,
        "text_layers": text_layers,
        "vocab_size": rows,
        "weights": weights,
        "tokenizer": f"small local vocabulary ({SMALL_TOKENIZER_SIZE} pieces), not UMT5's",
        "parameters": counts,
    }
    _write_json(out / SPEC_FILE, _spec(v, built))
    return Built(out, v.name, counts, weights, time.perf_counter() - started)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
