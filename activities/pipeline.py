"""Wan text-to-video as a resumable, step-by-step denoising loop.

`WanPipeline.__call__` runs prepare → denoise → decode in one call and cannot resume. The GPU
activity needs to stop between any two steps (preemption), snapshot everything, and continue
later with a bit-identical result, so this module re-implements the pipeline's loop from its
components with all mutable state in one `DenoiseState` object:

    model = load_pipeline(spec, pick_device())
    check_params(spec, params)
    state = prepare(model, params)          # prompt embeddings, seeded latents, scheduler
    while state.next_step < state.total_steps:
        denoise_step(model, state)          # the state may be snapshotted between steps
    frames = decode(model, state)           # uint8 (T, H, W, 3)

`generate()` is that loop with a progress callback. For the same seed and parameters the output
equals `WanPipeline.__call__` bit for bit (tests/test_pipeline.py checks it).

Every model, the built-in one included, is a local diffusers directory loaded with
`from_pretrained`; the built-in model (`videogen/tiny/model`, trained by `make train-tiny`) is
small enough that all of the above runs on a CPU without downloading anything.

Two-expert directories (Wan2.2 T2V-A14B: `transformer` for high noise, `transformer_2` for low
noise, switching below `boundary_ratio` x 1000) run as WanPipeline runs them. Which expert a
step uses is a function of its timestep alone, so a resume on either side of the boundary needs
no more state; checkpoints record the expert of the next step for operators. Directories with
expanded timesteps (Wan2.2 TI2V-5B: one timestep per latent token rather than per sample) run
as WanPipeline runs them too, at sizes that are multiples of `LoadedModel.size_multiple`.
A worker short of memory may keep the text encoder or the inactive expert in host memory
(`activities/placement.py`); the loop moves them in when they run.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import torch
from diffusers import (
    AutoencoderKLWan,
    SchedulerMixin,
    WanPipeline,
)
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.torch_utils import randn_tensor
from transformers.utils import logging as transformers_logging

from activities import model_dir
from activities.placement import Placed, Placement
from videogen.catalog import MAX_SEED, ModelSpec
from videogen.contracts import VideoRequest

# Every model's sizes are multiples of SIZE_MULTIPLE (model_dir's), some of a larger one
# (TI2V-5B's 32: `LoadedModel.size_multiple`).
SIZE_MULTIPLE = model_dir.SIZE_MULTIPLE
FRAME_STRIDE = 4


class PoisonedStateError(RuntimeError):
    """A step produced NaN or Inf: the state is unusable and must not be checkpointed.

    Retrying from the same state gives the same result, so callers treat this as a
    non-retryable failure of this state (resume from an earlier checkpoint or fail the job).
    """

    def __init__(self, step: int, what: str) -> None:
        super().__init__(f"non-finite values in {what} at step {step}")
        self.step = step
        self.what = what


class Expert(StrEnum):
    """Which transformer of a pipeline runs a step (named as the pipeline's components)."""

    HIGH_NOISE = "transformer"
    LOW_NOISE = "transformer_2"


@dataclass
class LoadedModel:
    """A pipeline kept warm in memory, with what a checkpoint needs to recognise it."""

    pipe: WanPipeline
    spec: ModelSpec
    device: str
    weights_hash: str
    load_seconds: float
    # Where each part is now (the text encoder or an expert may wait in host memory).
    placed: Placed
    # sha256 of the directory's files (videogen.registry.version_of): the version jobs name,
    # set by the worker from its catalog ("" where no catalog says: no job's version checked).
    version: str = ""

    @property
    def transformer_dtype(self) -> torch.dtype:
        return self.pipe.transformer.dtype

    @property
    def boundary_timestep(self) -> float | None:
        """Timesteps below this run on the low-noise expert; None: one transformer."""
        ratio = self.pipe.config.boundary_ratio
        if ratio is None:
            return None
        return float(ratio) * self.pipe.scheduler.config.num_train_timesteps

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this: the VAE's spatial factor times the
        transformer's patch (16 for Wan2.1, 32 for TI2V-5B), and of SIZE_MULTIPLE always."""
        configs = {"vae": self.pipe.vae.config, "transformer": self.pipe.transformer.config}
        return model_dir.size_multiple(configs)

    def expert(self, t: torch.Tensor) -> Expert:
        """The expert WanPipeline uses at timestep `t` (its rule: t >= boundary is high noise)."""
        boundary = self.boundary_timestep
        return Expert.HIGH_NOISE if boundary is None or t >= boundary else Expert.LOW_NOISE


@dataclass
class GenerationParams:
    """Everything that, with the model weights, determines the output video."""

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    # The low-noise expert's guidance (WanPipeline's guidance_scale_2), for two-expert models;
    # None there means the same as guidance_scale, and it must be None for other models.
    guidance_scale_2: float | None = None
    # The sampler's flow shift for this job's size, where the model publishes one per size
    # (Wan2.1 14B: 5.0 at 720P, 3.0 at 480P); None: the scheduler config's own.
    flow_shift: float | None = None
    # Decode in tiles (the model's `vae_tiling_min_pixels`): other bits than a whole-frame decode.
    vae_tiling: bool = False

    @classmethod
    def from_request(cls, req: VideoRequest, spec: ModelSpec) -> GenerationParams:
        """The parameters of a job's request (the rest of it is scheduling, not generation),
        at the size `spec`'s model draws for it (the encoder scales frames to the request's)."""
        width, height = spec.generated_dims(f"{req.width}x{req.height}")
        return cls.for_spec(
            spec,
            prompt=req.prompt,
            negative_prompt=req.negative_prompt,
            seed=req.seed,
            width=width,
            height=height,
            num_frames=req.num_frames,
            num_inference_steps=req.num_inference_steps,
            guidance_scale=req.guidance_scale,
        )

    @classmethod
    def for_spec(
        cls,
        spec: ModelSpec,
        *,
        prompt: str,
        negative_prompt: str,
        seed: int,
        width: int,
        height: int,
        num_frames: int,
        num_inference_steps: int,
        guidance_scale: float,
    ) -> GenerationParams:
        """The given parameters with those the model sets for them (the low-noise expert's
        guidance, the size's flow shift and tiling): the one place they are derived."""
        return cls(
            prompt=prompt,
            negative_prompt=negative_prompt,
            seed=seed,
            width=width,
            height=height,
            num_frames=num_frames,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            guidance_scale_2=spec.guidance_scale_2,
            flow_shift=spec.flow_shift(width, height),
            vae_tiling=spec.vae_tiling(width, height),
        )

    def guidance_for(self, expert: Expert) -> float:
        """The guidance scale the expert runs with (WanPipeline's defaulting rule)."""
        if expert is Expert.LOW_NOISE and self.guidance_scale_2 is not None:
            return self.guidance_scale_2
        return self.guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        # Same rule as WanPipeline.do_classifier_free_guidance.
        return self.guidance_scale > 1.0


@dataclass
class DenoiseState:
    """All mutable state of one generation between two steps.

    Nothing about a run lives elsewhere (not in the pipeline, whose scheduler is shared by
    all runs), so a deep copy of this object, or its serialised form, is a complete resume
    point. Tensors live on the model's device.
    """

    params: GenerationParams
    prompt_embeds: torch.Tensor
    # None when guidance is off (guidance_scale <= 1).
    negative_prompt_embeds: torch.Tensor | None
    latents: torch.Tensor
    timesteps: torch.Tensor
    # A private copy of the pipeline's scheduler (UniPC for Wan), with its multistep history.
    scheduler: SchedulerMixin
    generator: torch.Generator
    next_step: int = 0
    total_steps: int = 0
    # Thread count the run started with: it changes bits for some shapes on the CPU, so a
    # resume that wants bit-exact output must run with the same count.
    num_threads: int = field(default_factory=torch.get_num_threads)

    @property
    def done(self) -> bool:
        return self.next_step >= self.total_steps


def pick_device() -> str:
    """'cuda' if a GPU is usable, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _hashed_modules(pipe: WanPipeline) -> list[tuple[str, torch.nn.Module]]:
    modules = [
        ("transformer", pipe.transformer),
        ("vae", pipe.vae),
        ("text_encoder", pipe.text_encoder),
    ]
    # Appended, so a one-transformer model's hash is what it was before experts existed.
    if pipe.transformer_2 is not None:
        modules.append(("transformer_2", pipe.transformer_2))
    return modules


def weights_hash(pipe: WanPipeline) -> str:
    """sha256 over names, dtypes, shapes and bytes of every parameter and buffer."""
    digest = hashlib.sha256()
    for prefix, module in _hashed_modules(pipe):
        for name, tensor in module.state_dict().items():
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{prefix}.{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
            # Through uint8 so bfloat16 (which numpy lacks) hashes the same way.
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _clone_weights(module: torch.nn.Module) -> None:
    # from_pretrained leaves parameters as views into safetensors buffers, some unaligned;
    # kernels reading those gave different bits than on aligned copies (measured:
    # docs/checkpoints.md, "What resumable denoising needs").
    for sub in module.modules():
        for param in sub.parameters(recurse=False):
            param.data = param.data.clone()
        for name, buf in list(sub.named_buffers(recurse=False)):
            if buf is not None:
                sub._buffers[name] = buf.clone()


def load_pipeline(spec: ModelSpec, device: str, placement: Placement | None = None) -> LoadedModel:
    """Load the spec's pipeline from its directory onto `device` (parts the `placement` keeps
    in host memory excepted), weights cloned, models in eval().

    dtypes: transformer and text encoder in bfloat16 on CUDA (float32 on the CPU, where
    bfloat16 is slow) and the VAE always in float32, as the Wan model card recommends for
    decoding quality. Wan2.1 directories (one transformer), Wan2.2 two-expert ones
    (`transformer_2` with a `boundary_ratio`) and expanded-timestep ones (Wan2.2 TI2V) are
    supported. The built-in model loads exactly as any other directory.
    """
    started = time.perf_counter()
    if spec.path is None:
        raise ValueError(f"model {spec.name!r} has no directory to load")
    model_dir.check(spec)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    # Progress bars of a load that takes well under a second are noise in a worker's log.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    # fork_rng: loading must neither use nor disturb the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        # `dtype`, not `torch_dtype`: the latter is deprecated in diffusers 0.42.
        vae = AutoencoderKLWan.from_pretrained(spec.path, subfolder="vae", dtype=torch.float32)
        pipe = WanPipeline.from_pretrained(spec.path, vae=vae, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    for _, module in _hashed_modules(pipe):
        _clone_weights(module)
        module.eval()
    # Hash on the host before the move: same bytes, no device-to-host copies.
    digest = weights_hash(pipe)
    placed = Placed(dict(_hashed_modules(pipe)), device, placement or Placement())
    return LoadedModel(
        pipe=pipe,
        spec=spec,
        device=device,
        weights_hash=digest,
        load_seconds=time.perf_counter() - started,
        placed=placed,
    )


def check_params(
    spec: ModelSpec, params: GenerationParams, size_multiple: int = SIZE_MULTIPLE
) -> None:
    """Reject parameters the model cannot run, naming the field and what is allowed;
    `size_multiple` is the loaded model's (`LoadedModel.size_multiple`) where there is one."""
    if not isinstance(params.prompt, str) or not params.prompt.strip():
        raise ValueError("prompt: must be a non-empty string")
    if not isinstance(params.negative_prompt, str):
        raise ValueError("negative_prompt: must be a string (may be empty)")
    for name in ("width", "height"):
        value = getattr(params, name)
        if not isinstance(value, int) or value <= 0 or value % size_multiple:
            raise ValueError(
                f"{name}: must be a positive multiple of {size_multiple} for {spec.name}, "
                f"got {value!r}"
            )
    frames = params.num_frames
    if not isinstance(frames, int) or frames < 1 or (frames - 1) % FRAME_STRIDE:
        raise ValueError(
            f"num_frames: must be of the form {FRAME_STRIDE}k+1 (1, 5, 9, ...), got {frames!r}"
        )
    steps = params.num_inference_steps
    if not isinstance(steps, int) or not 1 <= steps <= spec.max_steps:
        raise ValueError(f"num_inference_steps: must be in 1..{spec.max_steps}, got {steps!r}")
    _check_scale("guidance_scale", params.guidance_scale)
    if params.guidance_scale_2 is not None:
        _check_scale("guidance_scale_2", params.guidance_scale_2)
    seed = params.seed
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed: must be an integer in 0..{MAX_SEED}, got {seed!r}")


def _check_scale(name: str, scale: object) -> None:
    if not isinstance(scale, int | float) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"{name}: must be a finite number >= 0, got {scale!r}")


def prepare(model: LoadedModel, params: GenerationParams) -> DenoiseState:
    """Encode the prompt, draw the seeded latents, set up a private scheduler: step 0."""
    if params.guidance_scale_2 is not None and model.boundary_timestep is None:
        raise ValueError(f"guidance_scale_2: {model.spec.name} has one transformer; leave it unset")
    pipe = model.pipe
    device = torch.device(model.device)
    do_cfg = params.do_classifier_free_guidance
    # no_grad rather than inference_mode: inference tensors refuse in-place updates outside
    # inference mode, and restoring a checkpoint writes into this state.
    with torch.no_grad(), model.placed.text_encoder_in_use() as encode_on:
        # 1. Prompt embeddings, cast to the transformer's dtype as WanPipeline does (and moved
        #    to the device where the encoder ran elsewhere).
        prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            do_classifier_free_guidance=do_cfg,
            num_videos_per_prompt=1,
            max_sequence_length=model.spec.max_sequence_length,
            device=encode_on,
        )
        prompt_embeds = prompt_embeds.to(device, model.transformer_dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device, model.transformer_dtype)
    with torch.no_grad():
        # 2. Timesteps on a copy: the pipeline's scheduler instance is shared by every run.
        scheduler = job_scheduler(model, params)
        scheduler.set_timesteps(params.num_inference_steps, device=device)
        scheduler.set_begin_index(0)

        # 3. Latents: WanPipeline.prepare_latents' shape, float32, from our own generator.
        generator = torch.Generator(device=device).manual_seed(params.seed)
        num_latent_frames = (params.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        shape = (
            1,
            pipe.transformer.config.in_channels,
            num_latent_frames,
            params.height // pipe.vae_scale_factor_spatial,
            params.width // pipe.vae_scale_factor_spatial,
        )
        latents = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)

    return DenoiseState(
        params=params,
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_prompt_embeds,
        latents=latents,
        timesteps=scheduler.timesteps,
        scheduler=scheduler,
        generator=generator,
        next_step=0,
        total_steps=len(scheduler.timesteps),
    )


def job_scheduler(model: LoadedModel, params: GenerationParams) -> SchedulerMixin:
    """A private scheduler for one job, before set_timesteps: the pipeline's, with the job's
    flow shift where it has one of its own (a copy either way: the pipeline's instance is
    shared by every run)."""
    shared = model.pipe.scheduler
    if params.flow_shift is None or params.flow_shift == shared.config.get("flow_shift"):
        return copy.deepcopy(shared)
    if "flow_shift" not in shared.config:
        raise ValueError(
            f"flow_shift: {type(shared).__name__} of {model.spec.name} has no flow shift"
        )
    return type(shared).from_config(shared.config, flow_shift=params.flow_shift)


def _check_finite(tensor: torch.Tensor, step: int, what: str) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise PoisonedStateError(step, what)


def denoise_step(model: LoadedModel, state: DenoiseState) -> None:
    """Run step `state.next_step` and advance the state; the state is untouched on error."""
    if state.done:
        raise ValueError(f"all {state.total_steps} steps are done; decode instead")
    i = state.next_step
    t = state.timesteps[i]
    expert = model.expert(t)
    model.placed.activate_expert(expert.value)
    transformer = getattr(model.pipe, expert.value)
    scheduler = state.scheduler
    with torch.no_grad():
        # 1. Inputs exactly as WanPipeline builds them.
        latent_model_input = state.latents.to(model.transformer_dtype)
        timestep = _timestep_input(model, state.latents, t)
        cache_kwargs = {
            "step_index": i,
            "sigma": float(scheduler.sigmas[i]),
            "num_inference_steps": state.total_steps,
        }

        # 2. Conditional pass.
        with transformer.cache_context("cond", **cache_kwargs):
            noise_pred = transformer(
                hidden_states=latent_model_input,
                timestep=timestep,
                encoder_hidden_states=state.prompt_embeds,
                return_dict=False,
            )[0]

        # 3. Unconditional pass and guidance: a separate forward, because batching both
        #    passes into one call changes the result's bits.
        if state.negative_prompt_embeds is not None:
            with transformer.cache_context("uncond", **cache_kwargs):
                noise_uncond = transformer(
                    hidden_states=latent_model_input,
                    timestep=timestep,
                    encoder_hidden_states=state.negative_prompt_embeds,
                    return_dict=False,
                )[0]
            scale = state.params.guidance_for(expert)
            noise_pred = noise_uncond + scale * (noise_pred - noise_uncond)
        _check_finite(noise_pred, i, "noise prediction")

        # 4. Scheduler update, on a scratch copy so that a poisoned step leaves the state as
        #    it was. Stochastic schedulers get the run's generator instead of the global RNG.
        scratch = copy.deepcopy(scheduler)
        extra = {"generator": state.generator} if _accepts_generator(scratch) else {}
        latents = scratch.step(noise_pred, t, state.latents, return_dict=False, **extra)[0]
        _check_finite(latents, i, "latents")

    # 5. Commit.
    state.scheduler = scratch
    state.latents = latents
    state.next_step = i + 1


def _timestep_input(model: LoadedModel, latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One timestep per sample, or (expand_timesteps) one per latent token, built exactly as
    WanPipeline builds it: a ones mask over the latents, every second row and column."""
    if not model.pipe.config.expand_timesteps:
        return t.expand(latents.shape[0])
    mask = torch.ones(latents.shape, dtype=torch.float32, device=latents.device)
    per_token = (mask[0][0][:, ::2, ::2] * t).flatten()
    return per_token.unsqueeze(0).expand(latents.shape[0], -1)


def _accepts_generator(scheduler: SchedulerMixin) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters


def decode_float(model: LoadedModel, state: DenoiseState) -> np.ndarray:
    """VAE-decode the final latents as WanPipeline does: float32 (T, H, W, 3) in [0, 1]."""
    if not state.done:
        raise ValueError(f"decode after all steps: {state.next_step}/{state.total_steps} done")
    pipe = model.pipe
    vae = pipe.vae
    # Set for every decode: the VAE is shared by every job of the worker.
    if state.params.vae_tiling:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    with torch.no_grad():
        latents = state.latents.to(vae.device, dtype=vae.dtype)
        z_dim = vae.config.z_dim
        latents_mean = (
            torch.tensor(vae.config.latents_mean)
            .view(1, z_dim, 1, 1, 1)
            .to(latents.device, latents.dtype)
        )
        latents_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(
            latents.device, latents.dtype
        )
        latents = latents / latents_std + latents_mean
        video = vae.decode(latents, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")
    return frames[0]


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 with one fixed rounding rule (round half to even)."""
    return (frames * 255).round().clip(0, 255).astype(np.uint8)


def decode(model: LoadedModel, state: DenoiseState) -> np.ndarray:
    """Final frames as uint8, shape (T, H, W, 3)."""
    return to_uint8(decode_float(model, state))


def generate(
    model: LoadedModel,
    params: GenerationParams,
    on_step: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Whole generation without checkpoints. `on_step(done, total)` may raise to abort."""
    check_params(model.spec, params, model.size_multiple)
    state = prepare(model, params)
    while not state.done:
        denoise_step(model, state)
        if on_step is not None:
            on_step(state.next_step, state.total_steps)
    return decode(model, state)
