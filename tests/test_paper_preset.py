"""`--preset paper`: the MR-FIQA paper's configuration as a TOML layer under --config and --set.
Its values against the paper's settings written out here; without the weights, one one-line
error naming every missing asset; with tiny stand-in weights in the real formats (made as the
model tests make them), a build that runs every paper component."""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synfiqa.config import load_config
from synfiqa.errors import ConfigError, WeightsNotFoundError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

sys.path.insert(0, str(Path(__file__).parent))   # the model tests' stand-in writers

# The paper's settings (docs/method.md sections 1-5 and 11), written out independently of paper.toml.
PAPER = {
    "run.degraded": 100, "run.references": 10, "run.jpeg_quality": 75, "run.jpeg_subsampling": "4:2:0",
    "run.alignment": "template-to-landmarks",
    "filter.chain": ["yaw", "glasses", "expression", "uniqueness"],
    "filter.params.glasses.eyes": "dlib", "filter.params.expression.model": "deepface-emotion",
    "filter.params.uniqueness.embedder": "adaface-ir18",
    "stage2.faithful": True,
    "models.detector": "retinaface-resnet50", "models.embedder": "facenet-vggface2", "models.pose": "6drepnet360",
    "models.vision_language": "blip-itc",
    "models.params.facenet-vggface2.input_size": 160, "models.params.facenet-vggface2.paper_input_quirk": True,
    "degrade.chain": ["blur-downscale"], "degrade.params.blur-downscale.mode": "faithful",
    "generate.params.ddpm.minmax_per_image": True,
    "annotate.chain": ["fr", "sd", "vl", "mr"], "annotate.optional": [], "annotate.params.mr.lam": 0.5,
    "annotate.label_order": "original-bug",
}
PAPER_MODELS = {("detector", "retinaface-resnet50"), ("filter", "expression")}


def value(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def test_the_preset_is_the_papers_configuration_under_config_and_set(tmp_path):
    config = load_config(preset="paper")
    assert {key: value(config, key) for key in PAPER} == PAPER
    assert config["generate"]["generator"] == "folder" and config["stage2"]["backend"] == "folder"   # inputs: the user's
    # a --config file and --set both win over the preset
    (tmp_path / "mine.toml").write_text('[run]\ndegraded = 7\njpeg_quality = 90\n')
    mine = load_config(tmp_path / "mine.toml", ["run.degraded=3", "run.references=3"], preset="paper")
    assert (mine["run"]["degraded"], mine["run"]["jpeg_quality"], mine["run"]["jpeg_subsampling"]) == (3, 90, "4:2:0")
    # the defaults stay synfiqa's own
    default = load_config()
    assert (default["run"]["jpeg_quality"], default["run"]["jpeg_subsampling"], default["run"]["alignment"],
            default["annotate"]["label_order"]) == (95, "4:4:4", "landmarks-to-template", "by-path")
    with pytest.raises(ConfigError, match=r"unknown preset 'papper'; did you mean 'paper'\?"):
        load_config(preset="papper")
    # the original's prompt lists need R <= D: fewer samples than references is one config line
    with pytest.raises(ConfigError, match=r"needs run.references <= run.degraded; got 10 references and 3"):
        load_config(preset="paper", overrides=["run.degraded=3"])


def paper_plugins_or_skip():
    from synfiqa.registry import get_registry

    registry = get_registry()
    if "retinaface-resnet50" not in registry.names("detector"):
        pytest.skip("the retinaface-resnet50 detector is not registered yet")
    import inspect

    if "model" not in inspect.signature(registry.get("filter", "expression").factory).parameters:
        pytest.skip("the expression filter has no model choice (deepface-emotion) yet")
    return registry


def test_without_weights_one_line_names_every_missing_asset(isolated, tmp_path):
    from synfiqa.stages.build import build

    registry = paper_plugins_or_skip()
    config = load_config(preset="paper", registry=registry)
    with pytest.raises(WeightsNotFoundError) as caught:
        build(config, tmp_path / "out", echo=lambda *_: None, registry=registry)
    message = str(caught.value)
    assert "\n" not in message
    for asset in ("retinaface-resnet50", "facenet-vggface2", "6drepnet360", "blip-itm-base-coco", "adaface-ir18",
                  "deepface-emotion"):
        assert f"'{asset}'" in message, asset
    assert message.startswith("6 model asset(s) missing")
    assert not (tmp_path / "out").exists()   # nothing written


def test_filter_with_the_preset_names_every_missing_asset_of_its_chain(isolated, tmp_path):
    """`synfiqa filter --preset paper`: the detector, the yaw filter's pose model (the run's
    models.pose), the expression model and the uniqueness embedder in one line, before any judging."""
    from click.testing import CliRunner

    from synfiqa_cli.main import cli

    paper_plugins_or_skip()
    faces = Path(__file__).parent / "data" / "faces"
    result = CliRunner().invoke(cli, ["filter", str(faces), "--preset", "paper"])
    assert result.exit_code == 2, result.output
    (line,) = [text for text in result.output.splitlines() if text.startswith("Error:")]
    assert line.startswith("Error: 4 model asset(s) missing:"), line
    for asset, needed_by in (("retinaface-resnet50", "models.detector"), ("6drepnet360", "filter 'yaw' through models.pose"),
                             ("deepface-emotion", "filter 'expression'"),
                             ("adaface-ir18", "filter.params.uniqueness.embedder")):
        assert f"'{asset}' (for {needed_by})" in line, (asset, line)


# ---------------------------------------------------------------- stand-in weights in the real formats


def retinaface_file(path: Path) -> None:
    """A RetinaFace in the published key layout whose heads say, for every picture: a face at each
    stride-32 anchor of size 256, its five landmarks laid out as the ArcFace template's around
    the anchor centre (so alignment has a face-shaped fit)."""
    from synfiqa.align import ARCFACE_TEMPLATE_112
    from synfiqa_plugins.models.retinaface import RetinaFaceNet

    torch.manual_seed(0)
    state = RetinaFaceNet().state_dict()
    for head in ("ClassHead", "BboxHead", "LandmarkHead"):
        for level in range(3):
            state[f"{head}.{level}.conv1x1.weight"].zero_()
            state[f"{head}.{level}.conv1x1.bias"].zero_()
            if head == "ClassHead":
                state[f"{head}.{level}.conv1x1.bias"] = torch.tensor([5.0, -5.0, 5.0, -5.0])
    state["ClassHead.2.conv1x1.bias"] = torch.tensor([-5.0, 5.0, 5.0, -5.0])
    offsets = (ARCFACE_TEMPLATE_112 - [56.0, 72.0]) / 112.0 / 0.1   # decoded: centre + offset * 0.1 * anchor size
    state["LandmarkHead.2.conv1x1.bias"] = torch.tensor(np.concatenate([offsets.ravel(), np.zeros(10)]),
                                                        dtype=torch.float32)
    torch.save(state, path)


def stand_in_weights(root: Path) -> None:
    import torchvision
    from facenet_pytorch import InceptionResnetV1
    from test_deepface_emotion import neutral_weights, write_keras_h5
    from test_models_adaface import lightning_checkpoint, official_state_dict

    def folder(asset):
        (root / asset).mkdir(parents=True, exist_ok=True)
        return root / asset

    retinaface_file(folder("retinaface-resnet50") / "Retinaface_Resnet50.pth")
    torch.manual_seed(0)
    torch.save(InceptionResnetV1(pretrained=None, classify=False).state_dict(),
               folder("facenet-vggface2") / "20180402-114759-vggface2.pt")
    body = torchvision.models.resnet50(weights=None)
    pose = {k: v for k, v in body.state_dict().items() if not k.startswith("fc.")}
    pose["linear_reg.weight"] = torch.randn(6, 2048) * 0.01
    pose["linear_reg.bias"] = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])   # about the identity rotation
    torch.save(pose, folder("6drepnet360") / "Pose-LP.pth")
    torch.save(lightning_checkpoint(official_state_dict()), folder("adaface-ir18") / "adaface_ir18_webface4m.ckpt")
    write_keras_h5(folder("deepface-emotion") / "facial_expression_model_weights.h5", neutral_weights(0.5))

    blip_folder(folder("blip-itm-base-coco"))


def blip_folder(folder: Path) -> None:
    """A tiny random BLIP retrieval model whose vocabulary holds the reference prompt's words."""
    from tests.test_blip import write_tiny_blip

    words = ("a high-resolution clear frontal face image with natural expression under good lighting condition "
             "without any occlusion").replace("-", " - ").split()
    write_tiny_blip(folder, ["-"] + sorted(set(words) - {"-"}))


@pytest.mark.slow
def test_with_stand_in_weights_a_build_runs_every_paper_component(isolated, tmp_path):
    from PIL import JpegImagePlugin

    from synfiqa.stages.build import build

    registry = paper_plugins_or_skip()
    stand_in_weights(isolated / "weights")
    photos = tmp_path / "photos"   # the test photos at most 240 px: dlib's detector upsamples them twice
    photos.mkdir()
    for path in sorted((Path(__file__).parent / "data" / "faces").glob("*.jpg")):
        image = Image.open(path)
        image.thumbnail((240, 240), Image.BICUBIC)
        image.save(photos / path.name, quality=95)
    # random networks measure nothing real: the filters' thresholds let every identity through
    # (each filter still runs its model), and the sample count stays small
    config = load_config(preset="paper", registry=registry, overrides=[
        "run.degraded=2", "run.references=2", "filter.params.yaw.max_abs_yaw=180", "filter.params.glasses.threshold=1.0",
        "filter.params.uniqueness.threshold=1.0", f"generate.params.folder.path={json.dumps(str(photos))}"])
    lines = []
    out = tmp_path / "out"
    summary = build(config, out, echo=lines.append, registry=registry)

    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    degraded = [r for r in rows if r["role"] == "degraded" and r["status"] == "ok"]
    assert degraded and summary["degraded"] == len(degraded)
    plugins = degraded[0]["plugins"]
    assert plugins["detector"].startswith("retinaface-resnet50") and plugins["embedder"].startswith("facenet-vggface2")
    assert plugins["pose"].startswith("6drepnet360")
    # vl is in every label: nothing partial, BLIP ran
    assert summary["missing_domains"] == {} and all("partial" not in r for r in degraded)
    assert all(set(r["scores"]) >= {"fr", "sd", "vl", "mr"} for r in degraded)
    written = load_config(out / "config.toml")
    assert {key: value(written, key) for key in PAPER if key not in ("run.degraded", "run.references")} == \
        {key: v for key, v in PAPER.items() if key not in ("run.degraded", "run.references")}
    # every filter judged every identity, each with its paper model
    verdicts = json.loads((out / ".synfiqa" / "filter.json").read_text())["verdicts"]
    assert [v["identity"] for v in verdicts] == ["ardern", "macron", "obama", "sunak"]
    for verdict in verdicts:
        values = verdict["values"]
        assert isinstance(values["yaw"], float)
        assert values["expression"] == pytest.approx(0.5, abs=1e-5)   # DeepFace's model (the stand-in says 0.5)
        assert values["glasses"] is None or 0 <= values["glasses"] <= 1   # None: dlib found no face, kept
    assert [v["values"]["uniqueness"] is None for v in verdicts] == [True, False, False, False]   # AdaFace cosines
    # the label order switch is loud; the identities' names are in natural order already, so nothing moved
    assert summary["label_order"] == "original-bug" and summary["labels_moved"] == 0
    assert any(line.startswith("WARNING: annotate.label_order") for line in lines)
    # stored as the original stores: quality 75, 4:2:0, the bytes of Pillow's default save
    image = next((out / "data").rglob("*.jpg"))
    stored = Image.open(image)
    assert JpegImagePlugin.get_sampling(stored) == 2
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(buffer, format="JPEG")
    assert stored.quantization == Image.open(buffer).quantization
    assert json.loads(json.dumps(summary["severity_axes"])) == ["pose.abs_yaw", "blur-downscale.low_scale",
                                                                 "blur-downscale.blur_level"]


# ---------------------------------------------------------------- the command line


def test_config_show_and_build_take_the_preset(isolated, tmp_path):
    import tomllib

    from click.testing import CliRunner

    from synfiqa_cli.main import cli

    paper_plugins_or_skip()
    runner = CliRunner()
    shown = runner.invoke(cli, ["config", "show", "--preset", "paper", "--set", "run.degraded=50"])
    assert shown.exit_code == 0, shown.output
    config = tomllib.loads(shown.output)
    assert {key: value(config, key) for key in PAPER} == {**PAPER, "run.degraded": 50}

    unknown = runner.invoke(cli, ["config", "show", "--preset", "papers"])
    assert unknown.exit_code == 2 and "unknown preset 'papers'; did you mean 'paper'?" in unknown.output
    assert runner.invoke(cli, ["config", "show", "--schema", "--preset", "paper"]).exit_code == 2

    built = runner.invoke(cli, ["build", "--preset", "paper", "--out", str(tmp_path / "out"), "--no-progress"])
    assert built.exit_code == 2
    errors = [line for line in built.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0].startswith("Error: 6 model asset(s) missing:"), built.output
    assert not (tmp_path / "out").exists()


def test_annotate_takes_the_preset_over_the_builds_own_config(tmp_path):
    from click.testing import CliRunner

    from synfiqa.stages.build import build
    from synfiqa_cli.main import cli

    out = tmp_path / "out"
    build(load_config(None, ["run.degraded=2"]), out, echo=lambda *_: None)
    offline = ["--set", "models.detector=mtcnn", "--set", "models.embedder=sface", "--set", "models.pose=dlib68-pnp",
               "--set", 'annotate.optional=["vl"]']
    result = CliRunner().invoke(cli, ["annotate", str(out), "--no-progress", "--preset", "paper", *offline])
    assert result.exit_code == 0, result.output
    assert "models and annotators from" not in result.output   # the build's config.toml was not read
    summary = json.loads((out / "annotation-summary.json").read_text())
    assert (summary["label_order"], summary["labels_moved"], summary["labels"]) == ("original-bug", 0, 8)
    assert "WARNING: annotate.label_order" in result.output
