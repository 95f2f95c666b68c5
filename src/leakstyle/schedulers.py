"""Scheduler names in the A1111/diffusers vocabulary, built from a pipeline's own scheduler config."""

from __future__ import annotations

import inspect

from .errors import LeakstyleError

# name -> (diffusers class name, config overrides); the classes are imported when a scheduler is built, so that
# `import leakstyle` does not import diffusers.
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": False}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "lcm": ("LCMScheduler", {}),
}
SPACINGS = ("leading", "trailing", "linspace")


def make_scheduler(name: str, config, timestep_spacing: str | None = None):
    """A scheduler called `name` with the noise schedule of `config` (the model's own scheduler config).

    A config that does not say `clip_sample` (Euler's, say) would give DDIM and DDPM their default, True, which
    clamps the predicted x0 to [-1, 1]: right for pixel models, whose configs say so, but it greys the colours
    of latent models. Such a config gets clip_sample False."""
    if name not in SCHEDULERS:
        raise LeakstyleError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    cls = getattr(diffusers, class_name)
    if timestep_spacing is not None:
        if timestep_spacing not in SPACINGS:
            raise LeakstyleError(f"unknown timestep spacing {timestep_spacing!r}; choose one of {', '.join(SPACINGS)}")
        overrides = {**overrides, "timestep_spacing": timestep_spacing}
    if "clip_sample" not in config and "clip_sample" in inspect.signature(cls.__init__).parameters:
        overrides = {**overrides, "clip_sample": False}
    return cls.from_config(config, **overrides)


def respace(scheduler, timestep_spacing: str):
    """A scheduler of the same class and config as `scheduler`, with other timestep spacing."""
    if timestep_spacing not in SPACINGS:
        raise LeakstyleError(f"unknown timestep spacing {timestep_spacing!r}; choose one of {', '.join(SPACINGS)}")
    return type(scheduler).from_config(scheduler.config, timestep_spacing=timestep_spacing)


def choose_scheduler(own, name: str | None = None, timestep_spacing: str | None = None):
    """The scheduler a call asks for: the one called `name` (None: `own`'s class) with `own`'s noise schedule and
    `timestep_spacing` (None: the config's). `own` itself when both are None."""
    if name is not None:
        return make_scheduler(name, own.config, timestep_spacing=timestep_spacing)
    return respace(own, timestep_spacing) if timestep_spacing is not None else own


def scheduler_name(scheduler) -> str:
    """The vocabulary name of a scheduler object (its class name when it has none)."""
    for name, (class_name, overrides) in SCHEDULERS.items():
        if type(scheduler).__name__ == class_name and all(scheduler.config.get(k) == v for k, v in overrides.items()):
            return name
    return type(scheduler).__name__
