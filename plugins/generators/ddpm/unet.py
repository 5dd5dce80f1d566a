"""Ancestral DDPM sampling as guided-diffusion (ADM) does it: a beta schedule over the
training steps, respaced to fewer sampling steps, a learned-range (or fixed) variance,
and the x0 prediction clipped to [-1, 1] before the posterior mean is formed.

Every coefficient is computed in float64 from the betas, then used in float32, so the
respaced chain is exactly the one the original sampler walks (docs/method.md#11-generation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from synfiqa.errors import ConfigError

VARIANCE_TYPES = ("learned_range", "fixed_small", "fixed_large")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """Ho et al.'s linear schedule; guided-diffusion stretches the end points by 1000/num_steps
    so that a schedule of another length keeps the same total noise."""
    scale = 1000.0 / num_steps
    return np.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=np.float64)


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal's cosine schedule (diffusers calls it squaredcos_cap_v2)."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), max_beta)
                     for i in range(num_steps)], dtype=np.float64)


def respaced_timesteps(num_steps: int, spacing: str | int) -> list[int]:
    """The training timesteps a respaced sampler visits, ascending.

    `spacing` follows guided-diffusion: "ddimN" takes every (num_steps // N)-th step from 0;
    otherwise a comma-separated list of counts splits the chain into equal sections and
    takes that many evenly spaced steps (both ends included) from each. "100" over 1000
    steps gives round(i * 999 / 99) for i = 0..99."""
    text = str(spacing).strip()
    if text.startswith("ddim"):
        try:
            wanted = int(text[len("ddim"):])
        except ValueError:
            raise ConfigError(f"respacing {text!r} must look like ddimN or N[,N...]") from None
        for stride in range(1, num_steps):
            if len(range(0, num_steps, stride)) == wanted:
                return list(range(0, num_steps, stride))
        raise ConfigError(f"respacing {text!r}: no integer stride gives exactly {wanted} of {num_steps} steps")
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"respacing {text!r} must look like ddimN or N[,N...]") from None
    section = num_steps // len(counts)
    extra = num_steps % len(counts)
    steps: list[int] = []
    start = 0
    for number, count in enumerate(counts):
        size = section + (1 if number < extra else 0)
        if count < 1 or count > size:
            raise ConfigError(f"respacing {text!r}: cannot take {count} steps from a section of {size}")
        stride = (size - 1) / (count - 1) if count > 1 else 1.0
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += size
    return sorted(set(steps))


@dataclass(frozen=True)
class ScheduleConfig:
    """What a model directory's scheduler_config.json says, in diffusers' vocabulary."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    variance_type: str = "learned_range"
    prediction_type: str = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0

    @classmethod
    def from_diffusers(cls, config: dict, default_variance: str) -> "ScheduleConfig":
        variance = str(config.get("variance_type") or default_variance)
        # diffusers' *_log variants differ only in how the log is taken, not in the chain
        variance = {"fixed_small_log": "fixed_small", "fixed_large_log": "fixed_large"}.get(variance, variance)
        return cls(
            num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
            beta_schedule=str(config.get("beta_schedule", "linear")),
            beta_start=float(config.get("beta_start", 1e-4)),
            beta_end=float(config.get("beta_end", 0.02)),
            variance_type=variance,
            prediction_type=str(config.get("prediction_type", "epsilon")),
            clip_sample=bool(config.get("clip_sample", True)),
            clip_sample_range=float(config.get("clip_sample_range", 1.0)),
        )

    def betas(self) -> np.ndarray:
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            return linear_betas(n, self.beta_start * n / 1000.0, self.beta_end * n / 1000.0)
        if self.beta_schedule == "scaled_linear":  # linear in sqrt(beta), as latent diffusion uses
            return np.linspace(self.beta_start ** 0.5, self.beta_end ** 0.5, n, dtype=np.float64) ** 2
        if self.beta_schedule in ("squaredcos_cap_v2", "cosine"):
            return cosine_betas(n)
        raise ConfigError(f"beta schedule {self.beta_schedule!r} is not supported "
                          "(linear, scaled_linear, squaredcos_cap_v2)")


class RespacedSchedule:
    """The respaced chain: per sampling step k (0 = last), the training timestep the model
    is called with and the posterior coefficients of guided-diffusion's SpacedDiffusion."""

    def __init__(self, config: ScheduleConfig, spacing: str | int = "100"):
        if config.variance_type not in VARIANCE_TYPES:
            raise ConfigError(f"variance type {config.variance_type!r} is not supported ({', '.join(VARIANCE_TYPES)})")
        if config.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"prediction type {config.prediction_type!r} is not supported "
                              f"({', '.join(PREDICTION_TYPES)})")
        self.config = config
        base_alphas_cumprod = np.cumprod(1.0 - config.betas())
        self.timesteps = respaced_timesteps(config.num_train_timesteps, spacing)
        # the respaced betas keep the cumulative products at the visited steps
        previous, betas = 1.0, []
        for step in self.timesteps:
            betas.append(1.0 - base_alphas_cumprod[step] / previous)
            previous = base_alphas_cumprod[step]
        betas = np.array(betas, dtype=np.float64)
        alphas_cumprod = np.cumprod(1.0 - betas)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # the posterior variance is 0 at the first step; its log borrows the second step's value
        clipped = np.append(posterior_variance[1], posterior_variance[1:]) if len(betas) > 1 else posterior_variance
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / alphas_cumprod - 1.0)
        self.posterior_mean_coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod)
        self.posterior_log_variance_clipped = np.log(np.maximum(clipped, 1e-300))
        if config.variance_type == "fixed_large":
            large = np.append(posterior_variance[1], betas[1:]) if len(betas) > 1 else betas
            self.fixed_log_variance = np.log(large)
        else:
            self.fixed_log_variance = self.posterior_log_variance_clipped

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def learned_variance(self) -> bool:
        return self.config.variance_type == "learned_range"

    def predict_x0(self, model_output: torch.Tensor, k: int, x: torch.Tensor) -> torch.Tensor:
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0 = self.sqrt_recip_alphas_cumprod[k] * x - self.sqrt_recipm1_alphas_cumprod[k] * model_output
        elif kind == "sample":
            x0 = model_output
        else:  # v = sqrt(a) * eps - sqrt(1 - a) * x0
            a = self.alphas_cumprod[k]
            x0 = math.sqrt(a) * x - math.sqrt(1.0 - a) * model_output
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        return x0

    def step(self, model_output: torch.Tensor, k: int, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One ancestral step from respaced index k to k-1. `model_output` has x's channels,
        plus as many again holding the variance interpolation when the variance is learned."""
        model_output = model_output.to(torch.float32)
        channels = x.shape[1]
        if self.learned_variance:
            if model_output.shape[1] != 2 * channels:
                raise ConfigError(f"a learned-range variance needs {2 * channels} output channels, "
                                  f"the model gives {model_output.shape[1]}")
            model_output, variance_values = model_output[:, :channels], model_output[:, channels:]
            # variance_values in [-1, 1] interpolate log-variance between the posterior's and beta's
            fraction = (variance_values + 1.0) / 2.0
            log_variance = (fraction * math.log(self.betas[k])
                            + (1.0 - fraction) * float(self.posterior_log_variance_clipped[k]))
        else:
            model_output = model_output[:, :channels]
            log_variance = torch.full_like(x, float(self.fixed_log_variance[k]))
        x0 = self.predict_x0(model_output, k, x)
        mean = float(self.posterior_mean_coef1[k]) * x0 + float(self.posterior_mean_coef2[k]) * x
        if k == 0:
            return mean
        return mean + torch.exp(0.5 * log_variance) * noise


def sample(denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: RespacedSchedule,
           initial: torch.Tensor, step_noise: Callable[[int], torch.Tensor],
           on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Walk the respaced chain from pure noise `initial` (x_T) to x_0.

    `denoiser(x, timesteps)` is the network called with training timesteps; `step_noise(k)`
    gives the fresh noise of step k (the caller draws it per image, so an image does not
    depend on which others share its batch)."""
    x = initial
    for k in reversed(range(schedule.num_steps)):
        timesteps = torch.full((x.shape[0],), schedule.timesteps[k], dtype=torch.long, device=x.device)
        with torch.no_grad():
            output = denoiser(x, timesteps)
        x = schedule.step(output, k, x, step_noise(k) if k > 0 else torch.zeros_like(x))
        if on_step is not None:
            on_step(k)
    return x


def to_uint8(images: torch.Tensor, minmax_per_image: bool = False) -> np.ndarray:
    """[-1, 1] NCHW -> NHWC uint8. `minmax_per_image` stretches each image to its own
    min..max first, as the original's stage-1 script saves (a quirk, off by default): its
    torchvision `save_image(normalize=True)` of one image, (x - min) / max(max - min, 1e-5), then
    x * 255 + 0.5 truncated (halves round up, where the default rounds half to even)."""
    images = images.detach().to(torch.float32).cpu()
    if minmax_per_image:
        low = images.amin(dim=(1, 2, 3), keepdim=True)
        high = images.amax(dim=(1, 2, 3), keepdim=True)
        unit = (images - low) / (high - low).clamp_min(1e-5)
        return (unit * 255.0 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    unit = (images.clamp(-1.0, 1.0) + 1.0) / 2.0
    return (unit * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()

