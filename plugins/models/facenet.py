"""FaceNet InceptionResnetV1 with VGGFace2 weights (facenet-pytorch), the recognition model
of the MR-FIQA paper. Never downloads: it loads the user's file, or the one facenet-pytorch
left in the torch cache (`$TORCH_HOME/checkpoints/20180402-114759-vggface2.pt`).

Input: uint8 RGB [N, 3, S, S] aligned crops, resized to `input_size` (bilinear) when that
differs, then standardised as facenet-pytorch's fixed_image_standardization: (x - 127.5) / 128.
`paper_input_quirk=True` reproduces the original MR-FIQA code, which fed the network [0, 1]
images (x / 255) without that standardisation, resized (to `input_size`, 160 in the original)
by torchvision's Resize on the PIL image: Pillow's bilinear filter, rounded to uint8, which
differs from torch's bilinear by one grey level on about a fifth of the pixels. Output: 512-d,
L2-normalised.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from synfiqa import hookimpl
from synfiqa.models import resolve_device

# keys of the released file that the embedding does not use: the VGGFace2 classifier
CLASSIFIER_KEYS = ("logits.weight", "logits.bias")


def build_facenet(path) -> torch.nn.Module:
    from facenet_pytorch import InceptionResnetV1

    from synfiqa.checkpoints import load_state_dict_strictly
    from synfiqa_plugins.models.iresnet import read_state_dict

    model = InceptionResnetV1(pretrained=None, classify=False)   # pretrained=None: no download
    load_state_dict_strictly(model, read_state_dict(path), str(path), ignore=CLASSIFIER_KEYS)
    return model.eval()


def pillow_resize(crops: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, 3, H, W] resized to size x size as the original's T.Resize on a PIL image does
    (Pillow's bilinear filter, uint8 out)."""
    import numpy as np
    from PIL import Image

    resized = [np.asarray(Image.fromarray(crop.permute(1, 2, 0).cpu().numpy()).resize((size, size), Image.BILINEAR))
               for crop in crops]
    return torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2)


class FaceNetEmbedder:
    kind = "embedder"
    dimension = 512

    def __init__(self, path: str = "", device: str = "auto", input_size: int = 112,
                 paper_input_quirk: bool = False, batch_size: int = 64):
        from synfiqa.weights import locate

        location = locate("facenet-vggface2", explicit=path or None)
        self.path = next(iter(location.files.values()))
        self.device = resolve_device(device)
        self.model = build_facenet(self.path).to(self.device)
        self.input_size = int(input_size)
        self.paper_input_quirk = bool(paper_input_quirk)
        self.batch_size = int(batch_size)

    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        resize = crops.shape[-1] != self.input_size or crops.shape[-2] != self.input_size
        if self.paper_input_quirk:
            if resize:
                crops = pillow_resize(crops, self.input_size)
            return crops.to(self.device, torch.float32) / 255.0
        x = crops.to(self.device, torch.float32)
        if resize:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return (x - 127.5) / 128.0

    @torch.no_grad()
    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.dim() != 4 or crops.shape[1] != 3 or crops.dtype != torch.uint8:
            raise ValueError(f"facenet takes uint8 [N, 3, H, W] aligned crops, got {crops.dtype} {tuple(crops.shape)}")
        out = [self.model(self.preprocess(crops[i:i + self.batch_size])).float().cpu()
               for i in range(0, crops.shape[0], self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.dimension)


@hookimpl
def register_models(register):
    register("facenet-vggface2", FaceNetEmbedder)
