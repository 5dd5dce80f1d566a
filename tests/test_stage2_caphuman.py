"""CapHuman's sampler (synfiqa_plugins.stage2.caphuman.network) on tiny random networks of the
real architectures, checked against a plain re-statement of the original's sampler written
here: two ControlNet evaluations per step (one per guidance half), the mask applied with
torchvision's resize, DDIM (eta 0) from LDM's formulas and schedule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from synfiqa.seeding import torch_generator
from synfiqa_plugins.stage2.caphuman.network import (Networks, decode, denoise, gate, initial_noise, resize_mask)
from synfiqa_plugins.stage2.caphuman.random_init import random_networks

N, STEPS, TOKENS, WORDS = 3, 4, 6, 7


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def nets(one_torch_thread) -> Networks:
    networks = random_networks("tiny")
    with torch.no_grad():   # a mask head whose hard mask is partial on random hints
        head = networks.controlface.mask_head[0]
        torch.manual_seed(3)
        head.weight.normal_(0, 0.5)
        head.bias.zero_()
    return networks


@pytest.fixture(scope="module")
def inputs(nets):
    torch.manual_seed(11)
    hint = torch.rand(N, 9, 64, 64)
    hint[:, :, :, :24] = 0          # a background, as a render has
    context = nets.controlface.context(torch.randn(N, TOKENS - 1, 24), torch.randn(N, 512))
    text, negative = torch.randn(N, WORDS, 32), torch.randn(N, WORDS, 32)
    noise = initial_noise([torch_generator(0, "alice", k, "stage2/degraded") for k in range(N)], (4, 8, 8))
    with torch.no_grad():   # centre the mask head on these hints, so that its hard mask is partial
        head = nets.controlface.mask_head[0]
        logits = F.conv2d(nets.controlface.controlnet.controlnet_cond_embedding(hint), head.weight, padding=1)
        head.bias.fill_(-logits.median().item())
    return noise, hint, context, text, negative


# ------------------------------------------------------------------ the reference (plain) sampler

def ldm_schedule(steps):
    """LDM: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2; DDIM's uniform timesteps
    range(0, 1000, 1000 // steps) + 1; the previous alpha of the first of them is alphas_cumprod[0]."""
    betas = torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    timesteps = [t + 1 for t in range(0, 1000, 1000 // steps)]
    previous = [alphas[0].item()] + [alphas[t].item() for t in timesteps[:-1]]
    return list(reversed(timesteps)), alphas, list(reversed(previous))


def hand_mask(nets, hint):
    face = nets.controlface
    embedding = face.controlnet.controlnet_cond_embedding(hint)
    conv = face.mask_head[0]
    return torch.sigmoid(F.conv2d(embedding, conv.weight, conv.bias, padding=1))


def hand_control(nets, x, t, context, hint, soft_mask):
    down, mid = nets.controlface.controlnet(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
    gated = []
    for r in [*down, mid]:
        hard = (TF.resize(soft_mask, list(r.shape[-2:]), antialias=True) > 0.5).float()
        gated.append(r * hard)
    return gated[:-1], gated[-1]


@torch.no_grad()
def plain_sampler(nets, noise, hint, context, text, negative, steps=STEPS, scale=7.0, control=True):
    timesteps, alphas, previous = ldm_schedule(steps)
    soft = hand_mask(nets, hint)
    x = noise.double()
    for t, a_prev in zip(timesteps, previous):
        xf = x.float()

        def eps(words):
            if control:
                down, mid = hand_control(nets, xf, t, context, hint, soft)   # evaluated for each half
            else:
                down, mid = None, None
            return nets.unet(xf, t, encoder_hidden_states=words, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid).sample.double()

        e_cond, e_uncond = eps(text), eps(negative)
        e = e_uncond + scale * (e_cond - e_uncond)
        a_t = alphas[t].item()
        x0 = (x - math.sqrt(1 - a_t) * e) / math.sqrt(a_t)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * e
    return x.float()


# ------------------------------------------------------------------ tests

def test_the_schedule_is_ddim_hacked_s():
    nets = Networks(None, None, None, dict(__import__("synfiqa_plugins.stage2.caphuman.network",
                                                      fromlist=["SCHEDULER_CONFIG"]).SCHEDULER_CONFIG))
    scheduler = nets.scheduler()
    scheduler.set_timesteps(20)
    assert scheduler.timesteps.tolist() == list(range(951, 0, -50))
    reference = torch.cumprod(1 - torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=torch.float64) ** 2, 0)
    assert torch.allclose(scheduler.alphas_cumprod.double(), reference, rtol=1e-5)


def test_the_mask_is_partial_on_these_inputs(nets, inputs):
    """Otherwise the tests below would not see the gate."""
    hard = (hand_mask(nets, inputs[1]) > 0.5).float()
    assert 0.2 < hard.mean().item() < 0.8


def test_the_sampler_equals_plain_cfg_with_two_controlnet_evaluations(nets, inputs):
    expected = plain_sampler(nets, *inputs)
    reused = denoise(nets, *inputs, steps=STEPS, reuse_control=True)
    doubled = denoise(nets, *inputs, steps=STEPS, reuse_control=False)
    scale = expected.abs().max().item()
    assert torch.allclose(reused, expected, atol=2e-4 * scale), (reused - expected).abs().max()
    assert torch.allclose(doubled, expected, atol=2e-4 * scale), (doubled - expected).abs().max()


def test_the_mask_gates_the_residuals(nets, inputs):
    noise, hint, context, text, negative = inputs
    head = nets.controlface.mask_head[0]
    saved = head.bias.detach().clone()
    try:
        with torch.no_grad():
            head.bias.fill_(-1e4)          # mask 0 everywhere: no control at all
        closed = denoise(nets, *inputs, steps=STEPS)
        without = plain_sampler(nets, *inputs, control=False)
        assert torch.allclose(closed, without, atol=2e-4 * without.abs().max().item())
        with torch.no_grad():
            head.bias.fill_(1e4)           # mask 1: the residuals pass unchanged
        opened = denoise(nets, *inputs, steps=STEPS)
    finally:
        with torch.no_grad():
            head.bias.copy_(saved)
    partial = denoise(nets, *inputs, steps=STEPS)
    # the three differ: the gate changes the result, and the partial gate is neither extreme
    assert (opened - closed).abs().max() > 1e-3
    assert (partial - closed).abs().max() > 1e-3 and (partial - opened).abs().max() > 1e-3


def test_gate_resizes_the_soft_mask_then_thresholds():
    soft = torch.tensor([[[[0.9, 0.9, 0.2, 0.2]] * 4]])         # (1, 1, 4, 4): left half open
    residuals = [torch.ones(1, 2, 4, 4), torch.ones(1, 3, 2, 2), torch.ones(1, 1, 1, 1)]
    out = gate(residuals, soft)
    assert out[0][0, :, :, :2].eq(1).all() and out[0][0, :, :, 2:].eq(0).all()
    assert out[1][0, :, :, 0].eq(1).all() and out[1][0, :, :, 1].eq(0).all()
    # 1x1: the antialiased mean of the mask, 0.55 > 0.5
    assert out[2].item() == 1.0
    assert resize_mask(torch.full((1, 1, 4, 4), 0.5), (2, 2)).eq(0).all()   # > 0.5 strictly


def test_a_sample_is_bitwise_the_same_in_any_batch_of_the_same_shape(nets, inputs):
    noise, hint, context, text, negative = inputs
    a = denoise(nets, *inputs, steps=STEPS)
    order = [2, 0, 1]
    b = denoise(nets, noise[order], hint[order], context[order], text[order], negative[order], steps=STEPS)
    assert torch.equal(a[order], b)
    # the same sample with other companions (the backend pads a short batch with copies)
    companions = [0, 0, 0]
    c = denoise(nets, noise[companions], hint[companions], context[companions], text[companions],
                negative[companions], steps=STEPS)
    assert torch.equal(a[0], c[0]) and torch.equal(c[1], c[0])


def test_the_noise_of_a_sample_is_its_own_seed():
    shape = (4, 8, 8)
    alone = initial_noise([torch_generator(7, "bob", 3, "stage2/degraded")], shape)
    together = initial_noise([torch_generator(7, "bob", k, "stage2/degraded") for k in (5, 3, 1)], shape)
    assert torch.equal(alone[0], together[1])
    other_role = initial_noise([torch_generator(7, "bob", 3, "stage2/reference")], shape)
    assert not torch.equal(alone, other_role)


def test_decode_truncates_as_the_original(nets):
    latents = torch.randn(2, 4, 8, 8)
    images = decode(nets, latents)
    assert images.shape == (2, 64, 64, 3) and images.dtype == torch.uint8
    raw = nets.vae.decode(latents / 0.18215).sample.detach()
    expected = np.clip(raw.permute(0, 2, 3, 1).numpy() * 127.5 + 127.5, 0, 255).astype(np.uint8)
    assert np.array_equal(images.numpy(), expected)


def test_resize_mask_is_torchvisions_resize_then_threshold():
    """The original resizes with torchvision's F.resize (bilinear, antialias): at strong
    downscales that differs from plain bilinear, and the gate follows torchvision."""
    torch.manual_seed(0)
    soft = torch.rand(64, 1, 8, 8)
    for size in [(2, 2), (3, 3), (4, 4), (8, 8)]:
        expected = (TF.resize(soft, list(size), antialias=True) > 0.5).float()
        assert torch.equal(resize_mask(soft, size), expected)
    plain = (F.interpolate(soft, size=(2, 2), mode="bilinear", align_corners=False) > 0.5).float()
    assert not torch.equal(plain, resize_mask(soft, (2, 2)))
