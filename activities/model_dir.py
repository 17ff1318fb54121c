"""Checks that a local directory is a Wan diffusers directory this worker can serve, before
anything is loaded from it: `from_pretrained` on a wrong directory fails deep inside diffusers
or transformers, often minutes into a load, with a message about a tensor or a class. This
reads only JSON and file names, and names the missing file or the mismatched field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from videogen.catalog import ModelSpec

# Component -> (config file, whether weights must be there). transformer_2 is optional.
_COMPONENTS = {
    "scheduler": ("scheduler_config.json", False),
    "tokenizer": ("tokenizer_config.json", False),
    "text_encoder": ("config.json", True),
    "transformer": ("config.json", True),
    "vae": ("config.json", True),
}
# Pixel-to-latent factor times the transformer's spatial patch: Wan2.1's 8 x 2, the built-in
# model's 4 x 4. Every model's sizes are multiples of it.
SIZE_MULTIPLE = 16


class ModelDirError(ValueError):
    """The directory cannot be served; the message says which file or field and why."""


def check(spec: ModelSpec) -> None:
    """Raise ModelDirError unless spec.path is a servable Wan directory matching the spec."""
    root = Path(spec.path or "")
    index = _read(root / "model_index.json", "a diffusers directory has one at its root")
    if index.get("_class_name") != "WanPipeline":
        raise ModelDirError(
            f"{root}/model_index.json: _class_name is {index.get('_class_name')!r}; "
            "only WanPipeline directories are served"
        )
    configs = {name: _component(root, index, name, *entry) for name, entry in _COMPONENTS.items()}
    if _listed(index, "transformer_2"):
        configs["transformer_2"] = _component(root, index, "transformer_2", "config.json", True)
    _check_fields(root, configs)
    _check_pipeline(root, spec, index, configs)
    _check_sizes(root, spec, configs)


def _read(path: Path, why: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelDirError(f"{path}: missing ({why})") from None
    except (OSError, ValueError) as err:
        raise ModelDirError(f"{path}: unreadable ({err})") from err
    if not isinstance(data, dict):
        raise ModelDirError(f"{path}: not a JSON object")
    return data


def _listed(index: dict[str, Any], name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and entry[1] is not None


def _component(
    root: Path, index: dict[str, Any], name: str, config: str, weights: bool
) -> dict[str, Any]:
    if not _listed(index, name):
        raise ModelDirError(f"{root}/model_index.json: no {name!r} component")
    folder = root / name
    data = _read(folder / config, f"the {name} component's config")
    if weights and not any(folder.glob("*.safetensors*")) and not any(folder.glob("*.bin*")):
        raise ModelDirError(f"{folder}: no weights (*.safetensors, or an index of shards)")
    return data


def _check_fields(root: Path, configs: dict[str, dict[str, Any]]) -> None:
    transformer = configs["transformer"]
    pairs = [
        ("transformer", "in_channels", transformer.get("in_channels"), "vae", "z_dim"),
        ("transformer", "text_dim", transformer.get("text_dim"), "text_encoder", "d_model"),
    ]
    for name, field, value, other, other_field in pairs:
        expected = configs[other].get(other_field)
        if value != expected:
            raise ModelDirError(
                f"{root}/{name}/config.json: {field} is {value!r}, but {other}/config.json's "
                f"{other_field} is {expected!r}; they must match"
            )
    second = configs.get("transformer_2")
    for field in ("in_channels", "out_channels", "text_dim", "patch_size"):
        if second is not None and second.get(field) != transformer.get(field):
            raise ModelDirError(
                f"{root}/transformer_2/config.json: {field} is {second.get(field)!r}, the "
                f"transformer's is {transformer.get(field)!r}; the two experts must match"
            )


def _check_pipeline(
    root: Path, spec: ModelSpec, index: dict[str, Any], configs: dict[str, dict[str, Any]]
) -> None:
    """The pipeline-level keys: two experts come with a boundary, guidance_scale_2 only with
    two experts, expanded timesteps only with the patch WanPipeline builds them for."""
    two = "transformer_2" in configs
    boundary = index.get("boundary_ratio")
    if two != (boundary is not None):
        raise ModelDirError(
            f"{root}/model_index.json: transformer_2 and boundary_ratio come together (found "
            f"transformer_2={'yes' if two else 'no'}, boundary_ratio={boundary!r}); add or "
            "remove both"
        )
    if spec.guidance_scale_2 is not None and not two:
        raise ModelDirError(
            f"{root}/videogen.json: guidance_scale_2 is set but the model has one transformer; "
            "remove it"
        )
    patch = tuple(configs["transformer"].get("patch_size", (1, 2, 2)))
    if index.get("expand_timesteps") and patch != (1, 2, 2):
        raise ModelDirError(
            f"{root}/transformer/config.json: expand_timesteps needs patch_size (1, 2, 2), "
            f"not {patch}"
        )


def size_multiple(configs: Mapping[str, Mapping[str, Any]]) -> int:
    """What width and height must be multiples of: the VAE's spatial factor times the
    transformer's patch, and SIZE_MULTIPLE; from the configs (the JSON files', or loaded
    modules' `config`)."""
    factor = int(configs["vae"].get("scale_factor_spatial", 8))
    patch = configs["transformer"].get("patch_size", [1, 2, 2])
    return math.lcm(SIZE_MULTIPLE, factor * int(patch[1]), factor * int(patch[2]))


def _check_sizes(root: Path, spec: ModelSpec, configs: dict[str, dict[str, Any]]) -> None:
    multiple = size_multiple(configs)
    drawn = [spec.render_size] if spec.render_size else list(spec.sizes)
    for size in drawn:
        width, height = spec.parse_size(size)
        if width % multiple or height % multiple:
            raise ModelDirError(
                f"{root}/videogen.json: size {size!r} is not a multiple of {multiple} "
                f"(the VAE's spatial factor times the transformer's patch); drop it or fix it"
            )
