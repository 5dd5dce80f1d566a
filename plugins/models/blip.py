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

    def __init__(self, path: str = "", device: str = "auto", image_size: int = 384):
        model_dir = find_model_dir(path)
        from transformers import AutoTokenizer, BlipForImageTextRetrieval

        self.device = resolve_device(device)
        self.model = BlipForImageTextRetrieval.from_pretrained(model_dir, local_files_only=True).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.image_size = image_size

    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.to(self.device, torch.float32) / 255.0
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=self.device)[:, None, None]
        std = torch.tensor(CLIP_STD, device=self.device)[:, None, None]
        return (x - mean) / std

    @torch.no_grad()
    def image_text_similarity(self, crops: torch.Tensor, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
        output = self.model(
            pixel_values=self.preprocess(crops), input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"], use_itm_head=False,
        )
        similarity = output[0] if isinstance(output, tuple) else output.itm_score
        return similarity.diagonal().to(torch.float64).cpu()


@hookimpl
def register_models(register):
    register("blip-itc", BlipITC)
