"""The config is validated as a whole before anything is written (issue 10): ranges, lists,
component names, the crop size and the device; every problem in one message; run.device
and `synfiqa score --device` are what the models get. Each case failed before the fix."""
from __future__ import annotations

import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from synfiqa.config import config_problems, default_config, load_config, validate_config
from synfiqa.errors import ConfigError
from synfiqa_cli.main import cli

FACES = Path(__file__).parent / "data" / "faces"


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def builds_nothing(tmp_path, *sets) -> str:
    """`synfiqa build` with these --set values: exit 2, and the --out folder never made."""
    out = tmp_path / "out"
    args = ["build", "--out", out, "--no-progress"]
    for value in sets:
        args += ["--set", value]
    code, output = run(*args)
    assert code == 2, output
    assert not out.exists(), sorted(p.name for p in out.iterdir())
    return output


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine that says it has one CUDA device (nothing here moves a tensor to it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


# ------------------------------------------------------------ one bad value: exit 2, nothing written

@pytest.mark.parametrize("setting, named", [
    # before: every reference and sample stored as a 1 KB block mosaic
    ("run.jpeg_quality=0", "run.jpeg_quality must be an integer from 1 to 100"),
    ("run.jpeg_quality=101", "run.jpeg_quality must be an integer from 1 to 100"),
    # before: ValueError('need at least one array to stack') after config.toml and the marker
    # were written, so the corrected rerun needed --overwrite
    ("run.degraded=0", "run.degraded must be an integer >= 1"),
    ("run.references=0", "run.references must be an integer >= 1"),
    ("run.batch_size=0", "run.batch_size must be an integer >= 1"),
    ("run.seed=-1", "run.seed must be an integer >= 0"),
    # before: the default embedder refused the crops (or alignment was singular at 0) mid-build
    ("run.image_size=0", "run.image_size must be 112 while annotate.chain holds 'fr', 'vl'"),
    ("run.image_size=113", "run.image_size must be 112 while annotate.chain holds 'fr', 'vl'"),
    ("run.image_size=128", "run.image_size must be 112"),
    # before: never read, the build ran on whatever the models chose
    ("run.device=tpu", "run.device must be one of auto (CUDA when visible, else CPU), cpu, cuda, cuda:N"),
    ("run.device=cuda:x", "run.device must be one of"),
    ("run.device=mps", "run.device must be one of"),
    ('degrade.chain=["jpeg","jpeg"]', "degrade.chain names 'jpeg' more than once"),
    ('filter.chain=["yaw",3]', "filter.chain must be a list of filter names (strings)"),
    ('annotate.chain=["fr","sd","fr","mr"]', "annotate.chain names 'fr' more than once"),
    ("generate.generator=foldr", "generate.generator: no generator named 'foldr'. Did you mean 'folder'?"),
    ('degrade.chain=["blur-downscal"]', "degrade.chain: no degradation named 'blur-downscal'. Did you mean "
                                       "'blur-downscale'?"),
    ('filter.chain=["yew"]', "filter.chain: no filter named 'yew'. Did you mean 'yaw'?"),
    ('annotate.optional=["lv"]', "annotate.optional: no annotator named 'lv'. Did you mean 'vl'?"),
    ("models.embedder=sfac", "models.embedder: no embedder named 'sfac'. Did you mean 'sface'?"),
    ("models.detector=mtcn", "models.detector: no detector named 'mtcn'"),
    ("degrade.params.blur-downscale.kernel=9", "degrade.params.blur-downscale: bad parameters for degradation "
                                               "'blur-downscale': got an unexpected keyword argument 'kernel'"),
    ("degrade.params.jpg.quality=[5,9]", "degrade.params.jpg: no degradation named 'jpg'. Did you mean 'jpeg'?"),
    ("degrade.params.jpeg=5", "degrade.params.jpeg must be a table of jpeg's parameters"),
    ("models.params.mtcnn.device=gpu", "models.params.mtcnn.device must be one of"),
])
def test_a_bad_value_stops_the_build_before_anything_is_written(tmp_path, no_cuda, setting, named):
    output = builds_nothing(tmp_path, setting)
    assert named in output
    assert output.startswith("Error: ") and output.count("\n") == 1  # one line, no traceback


def test_cuda_without_a_cuda_device_is_a_config_error(tmp_path, no_cuda):
    output = builds_nothing(tmp_path, "run.device=cuda")
    assert "run.device is 'cuda' but no CUDA device is visible" in output


def test_every_problem_is_named_in_one_message(tmp_path, no_cuda):
    output = builds_nothing(tmp_path, "run.degraded=0", "run.jpeg_quality=0", "run.device=tpu",
                            "run.degradd=3", "models.embedder=sfac", 'degrade.chain=["jpeg","jpeg"]')
    assert output.startswith("Error: the config has 6 problems:\n")
    for named in ("run.degraded must be", "run.jpeg_quality must be", "run.device must be",
                  "unknown config key 'run.degradd'; did you mean 'degraded'?", "models.embedder: no embedder",
                  "degrade.chain names 'jpeg' more than once"):
        assert output.count(named) == 1, (named, output)


def test_every_problem_of_a_config_file_is_named(tmp_path, no_cuda):
    path = tmp_path / "build.toml"
    path.write_text('[run]\ndegraded = 0\nseeds = 2\nbatch_size = "64"\n[run.device]\nx = 1\n'
                    '[degrade]\nchain = ["jpeg", "jpeg"]\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith("the config has 5 problems:")
    for named in ("unknown config key 'run.seeds'; did you mean 'seed'?", "'run.batch_size' must be a int",
                  "'run.device' is a value, not a table", "run.degraded must be an integer >= 1",
                  "degrade.chain names 'jpeg' more than once"):
        assert named in message


def test_config_show_shows_the_problems(no_cuda):
    code, output = run("config", "show", "--set", "run.degraded=0", "--set", "generate.generator=foldr")
    assert code == 2
    assert "run.degraded must be an integer >= 1" in output and "no generator named 'foldr'" in output


def test_low_jpeg_quality_is_allowed_with_a_warning():
    code, output = run("config", "show", "--set", "run.jpeg_quality=40")
    assert code == 0
    assert "warning: run.jpeg_quality = 40 stores every reference and degraded sample with heavy JPEG loss" in output
    code, output = run("config", "show", "--set", "run.jpeg_quality=75")
    assert code == 0 and "warning" not in output


def test_the_shipped_default_and_the_papers_settings_are_valid():
    validate_config(default_config())
    validate_config(load_config(None, ["run.degraded=100", "run.jpeg_quality=100", "run.device=cpu",
                                       'filter.chain=["yaw","glasses","expression","uniqueness"]']))


# ------------------------------------------------------------ the crop size

def test_image_size_rule():
    # identity-scope annotators (fr, vl) take 112x112 crops; without them 16..1024 builds
    assert config_problems(load_config(None, ["run.image_size=112"])) == []
    sd_only = ['annotate.chain=["sd"]', "annotate.optional=[]"]
    for size in (16, 96, 113, 128, 1024):
        assert config_problems(load_config(None, sd_only + [f"run.image_size={size}"])) == []
    for size in (0, 10, 15, 1025):
        with pytest.raises(ConfigError, match=r"run.image_size must be an integer from 16 to 1024"):
            load_config(None, sd_only + [f"run.image_size={size}"])
    with pytest.raises(ConfigError, match=r"run.image_size must be 112 while annotate.chain holds 'vl'"):
        load_config(None, ['annotate.chain=["sd", "vl"]', "run.image_size=128"])


CROP_PLUGIN = """
from synfiqa import hookimpl

class Sharpness:
    scope = "identity"
    provides = ("sharp",)
    def annotate_identity(self, samples, references, context):
        return {"sharp": samples.float().mean((1, 2, 3))}

@hookimpl
def register_annotators(register):
    register("sharpness", Sharpness)
"""


def plugin_registry(name: str, source: str):
    from synfiqa.plugins import SynfiqaPluginManager
    from synfiqa.registry import Registry

    module = types.ModuleType(name)
    exec(textwrap.dedent(source), module.__dict__)
    manager = SynfiqaPluginManager()
    manager.register_module(module, "test-plugins", "1.0")
    manager.load_missing_builtins()
    return Registry(manager), module


def test_a_plugins_identity_scope_annotator_also_needs_112():
    registry, _ = plugin_registry("crop_plugin", CROP_PLUGIN)
    config = load_config(None, ['annotate.chain=["sd", "sharpness"]', "annotate.optional=[]", "run.image_size=96"])
    with pytest.raises(ConfigError, match="run.image_size must be 112 while annotate.chain holds 'sharpness'"):
        validate_config(config, registry)


@pytest.mark.slow
def test_an_allowed_size_other_than_112_really_builds(tmp_path):
    code, output = run("build", "--out", tmp_path / "out", "--no-progress", "--set", "run.degraded=2",
                       "--set", "run.references=1", "--set", 'annotate.chain=["sd"]', "--set", "annotate.optional=[]",
                       "--set", "run.image_size=96")
    assert code == 0, output
    for path in (tmp_path / "out" / "data").rglob("*.jpg"):
        with Image.open(path) as image:
            assert image.size == (96, 96)


# ------------------------------------------------------------ the config file itself

def test_a_config_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    # before: UnicodeDecodeError with a traceback
    path = tmp_path / "latin1.toml"
    path.write_bytes("[run]\nseed = 1  # café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"config file '.*latin1.toml' is not UTF-8 text \(byte 0xe9 on line 2\)"):
        load_config(path)
    code, output = run("build", "--out", tmp_path / "out", "--config", path)
    assert code == 2 and output.count("\n") == 1 and "latin1.toml' is not UTF-8 text" in output
    assert not (tmp_path / "out").exists()


def test_a_utf8_byte_order_mark_is_tolerated(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[run]\nseed = 4\n")
    assert load_config(path)["run"]["seed"] == 4


def test_a_config_path_that_is_a_folder_or_unreadable(tmp_path, monkeypatch):
    # before: a folder was "does not exist"
    with pytest.raises(ConfigError, match=r"config file '.*' is a folder, not a TOML file"):
        load_config(tmp_path)
    path = tmp_path / "secret.toml"
    path.write_text("[run]\nseed = 1\n")

    def unreadable(self):  # a mode-000 file, as a non-root user meets it
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    with pytest.raises(ConfigError, match=r"config file '.*secret.toml' cannot be read: Permission denied"):
        load_config(path)


# ------------------------------------------------------------ the device reaches the models

FAKE_MODELS = """
from synfiqa import hookimpl

CREATED = []

class OnDevice:
    kind = "detector"
    def __init__(self, device: str = "auto", min_face_size: int = 20):
        CREATED.append(("fake-detector", device))
    def detect(self, image):
        return []

class Anywhere:
    kind = "embedder"
    def __init__(self, width: int = 4):
        CREATED.append(("fake-embedder", None))
    def embed(self, crops):
        import torch
        return torch.zeros(len(crops), 4)

class Scorer:
    kind = "fiqa"
    def __init__(self, device: str = "auto"):
        CREATED.append(("fake-fiqa", device))
    def score(self, crops):
        import torch
        return torch.zeros(len(crops))

@hookimpl
def register_models(register):
    register("fake-detector", OnDevice)
    register("fake-embedder", Anywhere)
    register("fake-fiqa", Scorer)
"""


@pytest.fixture
def fake_models(monkeypatch):
    import synfiqa.registry

    registry, module = plugin_registry("fake_models", FAKE_MODELS)
    monkeypatch.setattr(synfiqa.registry, "_default_registry", registry)
    return registry, module.CREATED


@pytest.mark.parametrize("device, expected", [("cpu", "cpu"), ("auto", "cuda"), ("cuda", "cuda"), ("cuda:0", "cuda:0")])
def test_run_device_is_what_a_model_that_takes_a_device_gets(fake_models, fake_cuda, device, expected):
    from synfiqa.context import RunContext

    registry, created = fake_models
    config = load_config(None, ["models.detector=fake-detector", "models.embedder=fake-embedder",
                                f"run.device={device}"])
    context = RunContext(config, registry)
    context.model("detector")
    context.model("embedder")  # no device parameter: created without one
    assert created == [("fake-detector", expected), ("fake-embedder", None)]


def test_a_params_table_still_sets_one_models_device(fake_models, fake_cuda):
    from synfiqa.context import RunContext

    registry, created = fake_models
    config = load_config(None, ["models.detector=fake-detector", "run.device=cuda",
                                'models.params.fake-detector.device="cpu"'])
    validate_config(config, registry)
    RunContext(config, registry).model("detector")
    assert created == [("fake-detector", "cpu")]


def test_run_device_auto_without_cuda_is_cpu(fake_models, no_cuda):
    from synfiqa.context import RunContext

    registry, created = fake_models
    config = load_config(None, ["models.detector=fake-detector"])
    RunContext(config, registry).model("detector")
    assert created == [("fake-detector", "cpu")]


def test_a_cuda_device_this_machine_lacks(fake_cuda):
    with pytest.raises(ConfigError, match=r"run.device is 'cuda:1' but only 1 CUDA device\(s\) are visible"):
        load_config(None, ["run.device=cuda:1"])
    assert load_config(None, ["run.device=cuda:0"])["run"]["device"] == "cuda:0"


def test_resolve_device_refuses_what_the_config_refuses(no_cuda):
    from synfiqa.models import resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device must be one of"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        resolve_device("cuda")


# ------------------------------------------------------------ synfiqa score --device

def one_photo(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir(parents=True)
    (folder / "obama_1.jpg").write_bytes((FACES / "obama_1.jpg").read_bytes())
    return folder


@pytest.mark.parametrize("device, message", [
    ("tpu", "--device must be one of auto (CUDA when visible, else CPU), cpu, cuda, cuda:N"),
    ("cuda", "--device is 'cuda' but no CUDA device is visible"),
])
def test_score_refuses_a_device_it_cannot_use(tmp_path, no_cuda, device, message):
    for model in ("cr-fiqa", "mr"):
        code, output = run("score", one_photo(tmp_path / model), "--model", model, "--device", device)
        assert code == 2 and message in output and output.count("\n") == 1, output


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_score_device_reaches_the_detector_and_the_fiqa_model(tmp_path, fake_models, fake_cuda, device):
    # before: the detector was built without it (on CUDA whenever one was visible)
    _, created = fake_models
    code, output = run("score", one_photo(tmp_path), "--model", "fake-fiqa", "--detector", "fake-detector",
                       "--device", device, "--no-progress")
    assert code == 0, output
    assert sorted(created) == [("fake-detector", device), ("fake-fiqa", device)]


def test_score_device_cpu_scores(tmp_path, no_cuda):
    from synfiqa_plugins.models.iresnet import CRFIQANet

    torch.manual_seed(0)
    network = CRFIQANet((1, 1, 1, 1), "linear").eval()
    checkpoint = tmp_path / "crfiqa_random.pth"
    torch.save({"module." + k: v for k, v in network.state_dict().items()}, checkpoint)
    crops = tmp_path / "crops"
    crops.mkdir()
    Image.fromarray(np.full((112, 112, 3), 128, np.uint8)).save(crops / "grey.png")
    code, output = run("score", crops, "--model", checkpoint, "--aligned", "--device", "cpu")
    assert code == 0, output
    assert "scored 1 of 1 images" in output


def test_every_stage_command_checks_the_config_and_the_device(tmp_path, no_cuda):
    # generate and filter read the config with the same whole-config check as build
    code, output = run("generate", "-n", "1", "--out", str(tmp_path / "gen"), "--set", "run.degraded=0")
    assert code == 2 and "run.degraded" in output and not (tmp_path / "gen").exists()
    code, output = run("filter", str(tmp_path), "--set", "models.embeder=sface")
    assert code == 2 and "embedder" in output
    # evaluate refuses a device this machine lacks before reading any file
    code, output = run("evaluate", "--pairs", str(tmp_path / "none.csv"), "--embedder", "sface",
                       "--scorer", "mr", "--device", "cuda")
    assert code == 2 and "no CUDA device" in output
