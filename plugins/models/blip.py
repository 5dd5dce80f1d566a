"""BLIP image-text retrieval (ViT-B, retrieval-COCO) through transformers, loaded offline.

The ITC similarity of docs/method.md#53-vl: cosine of the projected, normalised image
and text CLS features, no temperature. Images: 384x384 bicubic, CLIP mean/std.

Two ways in:
* a transformers folder (`BlipForImageTextRetrieval`, e.g. Salesforce/blip-itm-base-coco):
  an explicit path, the synfiqa weights folders or the Hugging Face cache (local files only);
* the original BLIP checkpoint the MR-FIQA code uses (`model_base_retrieval_coco.pth`,
  salesforce/BLIP's key names under "model"), converted on load or once with
  `synfiqa convert blip`. Its text side needs the BERT (bert-base-uncased) vocabulary, to
  which BLIP adds [DEC] and [ENC], as the original's init_tokenizer does.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from synfiqa import hookimpl
from synfiqa.errors import CheckpointError, WeightsNotFoundError
from synfiqa.models import resolve_device

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HF_REPO = "Salesforce/blip-itm-base-coco"
ORIGINAL_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def find_model_dir(path: str = ""):
    """An explicit folder, then the synfiqa weights folders, then the Hugging Face cache."""
    from synfiqa.weights import locate

    return locate("blip-itm-base-coco", explicit=path or None).files["config.json"].parent


# ---------------------------------------------------------------- the original checkpoint

# Training-only state of the original BLIP_Retrieval: momentum encoders and projections,
# the feature queues, the learned temperature (ITC as defined here uses none), and BERT's
# position_ids buffer (transformers rebuilds it).
ORIGINAL_TRAINING_ONLY = re.compile(
    r"(visual_encoder_m|text_encoder_m|vision_proj_m|text_proj_m)\..*"
    r"|image_queue|text_queue|idx_queue|ptr_queue|temp|text_encoder\.embeddings\.position_ids")

# original name (regular expression) -> transformers name; the first match wins
ORIGINAL_TO_TRANSFORMERS = [
    (r"visual_encoder\.cls_token", "vision_model.embeddings.class_embedding"),
    (r"visual_encoder\.pos_embed", "vision_model.embeddings.position_embedding"),
    (r"visual_encoder\.patch_embed\.proj\.(weight|bias)", r"vision_model.embeddings.patch_embedding.\1"),
    (r"visual_encoder\.blocks\.(\d+)\.norm1\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm1.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.norm2\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm2.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"vision_model.encoder.layers.\1.self_attn.qkv.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"vision_model.encoder.layers.\1.self_attn.projection.\2"),
    (r"visual_encoder\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
    (r"visual_encoder\.norm\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    # the text encoder (BLIP's BERT with cross-attention), projections and ITM head keep their names
    (r"(text_encoder\.(embeddings|encoder)\..*)", r"\1"),
    (r"((vision_proj|text_proj|itm_head)\.(weight|bias))", r"\1"),
]


def rename_original_key(key: str) -> str | None:
    """The transformers name of an original BLIP key; None for a key the mapping does not know."""
    for pattern, replacement in ORIGINAL_TO_TRANSFORMERS:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def convert_original_state_dict(state_dict: dict, source: str = "checkpoint") -> dict:
    """Original BLIP_Retrieval names -> BlipForImageTextRetrieval names. Training-only keys
    are dropped; a key of neither kind is an error that names it."""
    from synfiqa.checkpoints import listing

    converted, unknown = {}, []
    for key, value in state_dict.items():
        if ORIGINAL_TRAINING_ONLY.fullmatch(key):
            continue
        new = rename_original_key(key)
        if new is None:
            unknown.append(key)
        else:
            converted[new] = value
    if unknown:
        raise CheckpointError(f"{source}: keys that are not BLIP retrieval keys: {listing(unknown)}")
    if not any(k.startswith("vision_model.") for k in converted) or "vision_proj.weight" not in converted:
        raise CheckpointError(f"{source}: not an original BLIP retrieval checkpoint "
                              f"(no visual_encoder / vision_proj keys; first keys: {', '.join(list(state_dict)[:5])})")
    return converted


def _heads(hidden: int, given: int | None, side: str) -> int:
    # not in the weights: BLIP's ViT-B and BERT-base use 64 channels per head (12 heads of 768)
    if given:
        return int(given)
    if hidden % 64:
        raise CheckpointError(f"{side} width {hidden} is not a multiple of 64; give num_attention_heads")
    return hidden // 64


def config_from_original(state_dict: dict, vision_heads: int | None = None, text_heads: int | None = None):
    """A BlipConfig read from the (converted) weights' shapes: widths, depths, patch and
    image size, vocabulary, positions, projection size."""
    from transformers import BlipConfig

    def count(prefix: str) -> int:
        return 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(prefix + r"(\d+)\.", k)))

    class_embedding = state_dict["vision_model.embeddings.class_embedding"]
    patch = state_dict["vision_model.embeddings.patch_embedding.weight"]
    positions = state_dict["vision_model.embeddings.position_embedding"].shape[1] - 1
    side = int(round(positions ** 0.5))
    if side * side != positions:
        raise CheckpointError(f"position embedding for {positions} patches: not a square grid")
    vision_hidden = int(class_embedding.shape[-1])
    words = state_dict["text_encoder.embeddings.word_embeddings.weight"]
    text_hidden = int(words.shape[1])
    vision = dict(
        hidden_size=vision_hidden, num_hidden_layers=count("vision_model.encoder.layers."),
        intermediate_size=int(state_dict["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_attention_heads=_heads(vision_hidden, vision_heads, "vision"),
        patch_size=int(patch.shape[-1]), image_size=side * int(patch.shape[-1]),
        layer_norm_eps=1e-6,   # BLIP's ViT (LayerNorm eps 1e-6), not transformers' default 1e-5
    )
    text = dict(
        vocab_size=int(words.shape[0]), hidden_size=text_hidden,
        num_hidden_layers=count("text_encoder.encoder.layer."),
        intermediate_size=int(state_dict["text_encoder.encoder.layer.0.intermediate.dense.weight"].shape[0]),
        num_attention_heads=_heads(text_hidden, text_heads, "text"),
        max_position_embeddings=int(state_dict["text_encoder.embeddings.position_embeddings.weight"].shape[0]),
        encoder_hidden_size=int(state_dict.get("text_encoder.encoder.layer.0.crossattention.self.key.weight",
                                               torch.zeros(0, vision_hidden)).shape[1]),
    )
    return BlipConfig(vision_config=vision, text_config=text,
                      image_text_hidden_size=int(state_dict["vision_proj.weight"].shape[0]))


def find_tokenizer_dir(tokenizer: str = "") -> Path:
    """A folder with the BERT vocabulary: the one given, else the bert-base-uncased asset
    (synfiqa weights folders, Hugging Face cache)."""
    from synfiqa.weights import locate

    if tokenizer:
        folder = Path(tokenizer).expanduser()
        folder = folder if folder.is_dir() else folder.parent
        if not any((folder / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
            raise WeightsNotFoundError(f"no tokenizer (vocab.txt or tokenizer.json) in {folder}")
        return folder
    return locate("bert-base-uncased", explicit=None).files["vocab.txt"].parent


def blip_tokenizer(folder: Path, vocab_size: int):
    """BERT's tokenizer with BLIP's [DEC] (bos) and [ENC] tokens, as the original adds them."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise WeightsNotFoundError(f"cannot load the tokenizer in {folder}: {error}") from None
    if len(tokenizer) + 2 == vocab_size:   # a plain BERT vocabulary: add BLIP's two tokens
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    if len(tokenizer) > vocab_size:
        raise CheckpointError(f"the tokenizer in {folder} has {len(tokenizer)} tokens but the checkpoint's "
                              f"text encoder only {vocab_size} embeddings")
    return tokenizer


def load_original_checkpoint(checkpoint: str | Path, vision_heads: int | None = None, text_heads: int | None = None):
    """An original BLIP retrieval checkpoint -> (BlipForImageTextRetrieval in eval mode, its config)."""
    from transformers import BlipForImageTextRetrieval

    from synfiqa.checkpoints import find_state_dict, read_payload
    from synfiqa.checkpoints import load_state_dict_strictly

    source = str(checkpoint)
    original = find_state_dict(read_payload(checkpoint, "blip-retrieval-coco"), checkpoint, wrappers=("model", "state_dict"))
    converted = convert_original_state_dict(original, source)
    config = config_from_original(converted, vision_heads, text_heads)
    model = BlipForImageTextRetrieval(config)
    load_state_dict_strictly(model, converted, source)
    return model.eval(), config


def convert_original_checkpoint(checkpoint: str | Path, output_dir: str | Path, tokenizer: str = "",
                                vision_heads: int | None = None, text_heads: int | None = None) -> Path:
    """Writes a transformers folder (config.json, model.safetensors, the tokenizer) that
    BlipITC (and BlipForImageTextRetrieval.from_pretrained) loads."""
    model, config = load_original_checkpoint(checkpoint, vision_heads, text_heads)
    words = blip_tokenizer(find_tokenizer_dir(tokenizer), config.text_config.vocab_size)
    for name in ("pad_token_id", "sep_token_id", "bos_token_id"):
        value = getattr(words, name, None)
        if value is not None:
            setattr(config.text_config, name, int(value))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    words.save_pretrained(output_dir)
    return output_dir


def check_loading_info(info: dict, model_dir: Path) -> None:
    """transformers fills missing weights with random ones and only logs it; a folder of
    another BLIP head (captioning, VQA) would then score with a random text encoder."""
    from synfiqa.checkpoints import listing

    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(item[0]) if isinstance(item, (tuple, list)) else str(item)
                        for item in info.get("mismatched_keys") or ())
    if missing or mismatched:
        unexpected = sorted(info.get("unexpected_keys") or ())
        parts = [f"missing keys: {listing(missing)}"] if missing else []
        parts += [f"wrong shapes: {listing(mismatched)}"] if mismatched else []
        parts += [f"unexpected keys: {listing(unexpected)}"] if unexpected else []
        raise CheckpointError(f"{model_dir} is not a BlipForImageTextRetrieval model (e.g. "
                              f"{HF_REPO}): " + "; ".join(parts))


class BlipITC:
    kind = "vision-language"

    def __init__(self, path: str = "", device: str = "auto", image_size: int = 0, batch_size: int = 32,
                 tokenizer: str = ""):
        self.device = resolve_device(device)
        original = self._original_checkpoint(path)
        if original is not None:
            # the original BLIP checkpoint, converted in memory
            self.model_dir = None
            self.checkpoint = original
            model, config = load_original_checkpoint(original)
            self.model = model.to(self.device)
            self.tokenizer = blip_tokenizer(find_tokenizer_dir(tokenizer), config.text_config.vocab_size)
        else:
            self._load_folder(find_model_dir(path))
        # 384 for the released model: the size its position embeddings were trained at
        self.image_size = int(image_size) or int(self.model.config.vision_config.image_size)
        self.batch_size = int(batch_size)

    @staticmethod
    def _original_checkpoint(path: str) -> Path | None:
        """The original checkpoint to convert: the file given, or, when no transformers folder
        is found anywhere, the blip-retrieval-coco asset. None: load a transformers folder."""
        from synfiqa.weights import locate

        if path:
            given = Path(path).expanduser()
            return given if given.is_file() and given.suffix in ORIGINAL_SUFFIXES else None
        try:
            find_model_dir()
            return None
        except WeightsNotFoundError as folder_missing:
            try:
                return next(iter(locate("blip-retrieval-coco").files.values()))
            except WeightsNotFoundError as original_missing:
                raise WeightsNotFoundError(
                    f"{folder_missing}\n\nNor the original BLIP checkpoint, which synfiqa converts on load:\n"
                    f"{original_missing}") from None

    def _load_folder(self, model_dir: Path):
        from transformers import AutoTokenizer, BlipForImageTextRetrieval

        self.model_dir = model_dir
        self.checkpoint = None
        model, info = BlipForImageTextRetrieval.from_pretrained(model_dir, local_files_only=True, output_loading_info=True)
        check_loading_info(info, model_dir)
        self.model = model.to(self.device).eval()
        # transformers builds an empty tokenizer from a folder without one, silently
        if not any((model_dir / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
            raise WeightsNotFoundError(
                f"model asset 'blip-itm-base-coco': no tokenizer in {model_dir} (the repo's vocab.txt or "
                f"tokenizer.json, with tokenizer_config.json, are needed besides the weights)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as error:
            raise WeightsNotFoundError(f"model asset 'blip-itm-base-coco': cannot load the tokenizer in {model_dir}: {error}") from None

    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.to(self.device, torch.float32) / 255.0
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=self.device)[:, None, None]
        std = torch.tensor(CLIP_STD, device=self.device)[:, None, None]
        return (x - mean) / std

    @torch.no_grad()
    def image_features(self, crops: torch.Tensor) -> torch.Tensor:
        """Normalised projected image CLS features [N, D] (uint8 RGB crops of any size)."""
        out = []
        for i in range(0, crops.shape[0], self.batch_size):
            hidden = self.model.vision_model(pixel_values=self.preprocess(crops[i:i + self.batch_size]))[0]
            out.append(F.normalize(self.model.vision_proj(hidden[:, 0, :]), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Normalised projected text CLS features [T, D] (text-only encoder, as BLIP's ITC)."""
        tokens = self.tokenizer(list(texts), padding=True, return_tensors="pt").to(self.device)
        hidden = self.model.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])[0]
        return F.normalize(self.model.text_proj(hidden[:, 0, :]), dim=-1)

    def image_text_similarity(self, crops: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """ITC of crop i with texts[i] (or with the one text given): the cosine of the
        projected, normalised CLS features, no temperature. Each distinct text is encoded once."""
        texts = list(texts)
        if len(texts) == 1:
            texts = texts * crops.shape[0]
        if len(texts) != crops.shape[0]:
            raise ValueError(f"{crops.shape[0]} crops but {len(texts)} texts")
        if crops.shape[0] == 0:
            return torch.zeros(0, dtype=torch.float64)
        distinct = list(dict.fromkeys(texts))
        text = self.text_features(distinct)[[distinct.index(t) for t in texts]]
        return (self.image_features(crops) * text).sum(dim=1).to(torch.float64).cpu()


@hookimpl
def register_models(register):
    register("blip-itc", BlipITC)


def _blip_command():
    import click

    @click.command("blip")
    @click.argument("checkpoint", type=click.Path(dir_okay=False))
    @click.option("--out", required=True, type=click.Path(file_okay=False),
                  help="The transformers folder to write (config.json, model.safetensors, tokenizer).")
    @click.option("--tokenizer", default="", help="A folder with the bert-base-uncased vocabulary "
                  "(default: the bert-base-uncased asset: synfiqa weights folders, Hugging Face cache).")
    @click.option("--vision-heads", type=int, default=None, help="Attention heads of the ViT (default: width / 64).")
    @click.option("--text-heads", type=int, default=None, help="Attention heads of the text encoder (default: width / 64).")
    def blip(checkpoint, out, tokenizer, vision_heads, text_heads):
        """The original BLIP retrieval checkpoint (model_base_retrieval_coco.pth, salesforce/BLIP
        key names) -> a BlipForImageTextRetrieval folder that the blip-itc model loads."""
        from pathlib import Path

        from synfiqa.errors import OutputConflictError
        from synfiqa_plugins.models.blip import convert_original_checkpoint

        target = Path(out)
        if target.exists() and any(target.iterdir()):
            raise OutputConflictError(f"{out} is not empty; choose a new folder for the converted model")
        written = convert_original_checkpoint(checkpoint, target, tokenizer, vision_heads, text_heads)
        click.echo(f"wrote {written} (transformers BlipForImageTextRetrieval + tokenizer); "
                   f"use it with: --set models.params.blip-itc.path={written}")

    return blip


@hookimpl
def register_commands(cli):
    """`synfiqa convert blip`: the original BLIP retrieval checkpoint -> the transformers folder blip-itc loads."""
    convert = cli.commands.get("convert")
    if convert is not None:
        convert.add_command(_blip_command())
