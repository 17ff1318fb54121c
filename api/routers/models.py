"""The `/v1/models` resource: the models (and aliases) this deployment serves, OpenAI-shaped.

Each entry also carries what a request to it may ask for (sizes, seconds, steps) and, for a
model, the weights version a job on it runs (`version`, as `model_version` records it).
"""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import KeyDep, RegistryDep
from api.errors import NotFoundError
from api.schemas import ModelInfo, ModelList
from videogen.registry import Alias, Registry, ServedModel

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList)
async def list_models(_key: KeyDep, reg: RegistryDep) -> ModelList:
    return ModelList(data=[_describe(reg, name) for name in (*reg.models, *reg.aliases)])


@router.get("/{model_id}", response_model=ModelInfo)
async def retrieve_model(model_id: str, _key: KeyDep, reg: RegistryDep) -> ModelInfo:
    if model_id not in reg.models and model_id not in reg.aliases:
        raise NotFoundError(
            f"no model {model_id!r}; served: {reg.allowed()}",
            param="model_id",
            code="model_not_found",
        )
    return _describe(reg, model_id)


def _describe(reg: Registry, name: str) -> ModelInfo:
    if name in reg.models:
        return _model(reg.models[name], default=name == reg.default)
    return _alias(reg, reg.aliases[name], default=name == reg.default)


def _model(m: ServedModel, *, default: bool) -> ModelInfo:
    spec = m.spec
    return ModelInfo(
        id=m.name,
        created=m.created,
        version=m.short_version,
        model_version=m.ref,
        default=default,
        fps=spec.fps,
        sizes=list(spec.sizes),
        default_size=spec.default_size,
        seconds=list(spec.seconds),
        default_seconds=spec.default_seconds,
        default_steps=spec.default_steps,
        max_steps=spec.max_steps,
    )


def _alias(reg: Registry, alias: Alias, *, default: bool) -> ModelInfo:
    """An alias shows the limits every model it routes to accepts, so a request valid for the
    alias is valid whichever model a user lands on."""
    targets = [reg.models[name] for name, weight in alias.weights if weight]
    first = targets[0].spec
    common = [s for s in first.sizes if all(s in t.spec.sizes for t in targets)]
    seconds = [s for s in first.seconds if all(s in t.spec.seconds for t in targets)]
    return ModelInfo(
        id=alias.name,
        created=max(t.created for t in targets),
        default=default,
        routes_to=dict(alias.weights),
        fps=first.fps,
        sizes=common,
        default_size=first.default_size,
        seconds=seconds,
        default_seconds=first.default_seconds,
        default_steps=first.default_steps,
        max_steps=min(t.spec.max_steps for t in targets),
    )
