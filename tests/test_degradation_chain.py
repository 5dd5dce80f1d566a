"""A build whose degrade.chain runs every built-in degradation: each step's params reach
the manifest exactly as the seeded chain draws them, and every declared severity axis
takes part in the spatial-domain (sd) score."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.stats import rankdata

from synfiqa.config import load_config
from synfiqa.degradation import ChainStep, DegradationChain
from synfiqa.stages.build import build
from synfiqa.registry import Registry

CHAIN = ["blur-downscale", "jpeg", "sensor-noise", "motion-blur", "defocus-blur", "illumination", "occlusion"]
DEGRADED = 6
SEED = 5


@pytest.fixture(scope="module")
def chain_build(tmp_path_factory):
    from conftest import FACES

    photos = tmp_path_factory.mktemp("photos")
    shutil.copy(FACES / "obama_1.jpg", photos / "obama.jpg")
    shutil.copy(FACES / "sunak_1.jpg", photos / "sunak.jpg")
    out = tmp_path_factory.mktemp("chain") / "out"
    chain = "[" + ",".join(f'"{name}"' for name in CHAIN) + "]"
    config = load_config(None, [f"run.degraded={DEGRADED}", f"run.seed={SEED}", f"degrade.chain={chain}",
                                f'generate.params.folder.path="{photos}"',
                                # the reference twin of blur-downscale: no compile inside a test
                                'degrade.params.blur-downscale.mode="reference"'])
    summary = build(config, out, echo=lambda *_: None)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return summary, [row for row in rows if row["role"] == "degraded"]


def builtin_chain() -> DegradationChain:
    registry = Registry()
    return DegradationChain([ChainStep(name, registry.create("degradation", name)) for name in CHAIN])


def test_every_step_and_axis_is_announced(chain_build):
    summary, rows = chain_build
    chain = builtin_chain()
    assert summary["degraded"] == 2 * DEGRADED and len(rows) == 2 * DEGRADED
    assert summary["severity_axes"] == ["pose.abs_yaw", *chain.severity_axes]
    # each degradation declares at least one axis, so each step is ranked
    assert {axis.split(".")[0] for axis in chain.severity_axes} == set(CHAIN)
    assert {"jpeg.jpeg_loss", "motion-blur.length", "defocus-blur.radius", "occlusion.coverage",
            "sensor-noise.read_sigma", "sensor-noise.shot_sigma"} <= set(chain.severity_axes)
    for row in rows:
        assert all(name in row["plugins"]["degradations"] for name in CHAIN)


def test_manifest_records_every_steps_params_as_drawn(chain_build):
    _, rows = chain_build
    chain = builtin_chain()
    for row in rows:
        sampled = chain.sample(SEED, row["identity"], [row["index"]])
        expected = chain.records(sampled, 1)[0]
        # every step contributes its 1-D params, prefixed by the step's name
        assert {key.split(".")[0] for key in expected} == set(CHAIN)
        recorded = {key: value for key, value in row["params"].items() if key != "pose.abs_yaw"}
        assert recorded == expected
        assert row["params"]["jpeg.jpeg_loss"] == 100 - row["params"]["jpeg.quality"]


def test_every_severity_axis_reaches_the_sd_score(chain_build):
    summary, rows = chain_build
    axes = summary["severity_axes"]
    n = len(rows)
    sd = np.array([row["scores"]["sd"] for row in rows])
    ranks = {axis: (n - rankdata([row["params"][axis] for row in rows])) / n for axis in axes}
    # sd is the minimum of the rank scores over all axes ...
    np.testing.assert_allclose(sd, np.min(np.stack(list(ranks.values())), axis=0))
    # ... and no degradation axis is left out: the worst sample on each gets sd = 0
    # (|yaw| is the photo's, shared by all samples of an identity, so it has ties)
    for axis in axes[1:]:
        values = np.array([row["params"][axis] for row in rows])
        assert np.sum(values == values.max()) == 1, f"{axis}: tied maximum, the check needs a unique worst"
        assert sd[values.argmax()] == 0.0, f"the worst sample on {axis} does not get sd = 0"

