"""BLIP image-text retrieval (ViT-B, retrieval-COCO) through transformers, loaded offline.

The ITC similarity of ALGORITHMS.md section 5: cosine of the projected, normalised image
and text CLS features, no temperature. Images: 384x384 bicubic, CLIP mean/std.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from synfiqa import hookimpl
from synfiqa.models import resolve_device

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HF_REPO = "Salesforce/blip-itm-base-coco"


def find_model_dir(path: str = ""):
    """An explicit folder, then the synfiqa weights folders, then the Hugging Face cache."""
    from synfiqa.weights import locate

    return locate("blip-itm-base-coco", explicit=path or None).files["config.json"].parent


class BlipITC:
    kind = "vision-language"

    def __init__(self, path: str = "", device: str = "auto", image_size: int = 0, batch_size: int = 32):
        model_dir = find_model_dir(path)
        from transformers import AutoTokenizer, BlipForImageTextRetrieval

        from synfiqa.errors import WeightsNotFoundError

        self.model_dir = model_dir
        self.device = resolve_device(device)
        self.model = BlipForImageTextRetrieval.from_pretrained(model_dir, local_files_only=True).to(self.device).eval()
        # transformers builds an empty tokenizer from a folder without one, silently
        if not any((model_dir / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
            raise WeightsNotFoundError(
                f"model asset 'blip-itm-base-coco': no tokenizer in {model_dir} (the repo's vocab.txt or "
                f"tokenizer.json, with tokenizer_config.json, are needed besides the weights)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as error:
            raise WeightsNotFoundError(f"model asset 'blip-itm-base-coco': cannot load the tokenizer in {model_dir}: {error}") from None
        # 384 for the released model: the size its position embeddings were trained at
        self.image_size = int(image_size) or int(self.model.config.vision_config.image_size)
        self.batch_size = int(batch_size)

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
