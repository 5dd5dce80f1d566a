"""What a running stage can reach: the config, the registry, the device and the models
(built once, on first use)."""
from __future__ import annotations

from dataclasses import dataclass, field

from synfiqa.config import component_params
from synfiqa.models import resolve_device
from synfiqa.registry import Registry

_MODEL_CONFIG_KEYS = {"detector": "detector", "embedder": "embedder", "pose": "pose",
                      "vision-language": "vision_language", "fiqa": "fiqa"}


@dataclass
class RunContext:
    config: dict
    registry: Registry
    _models: dict = field(default_factory=dict)

    @property
    def device(self):
        return resolve_device(self.config["run"]["device"])

    def model_name(self, kind: str) -> str:
        return self.config["models"][_MODEL_CONFIG_KEYS[kind]]

    def model(self, kind: str):
        if kind not in self._models:
            name = self.model_name(kind)
            params = component_params(self.config, "models", name)
            self._models[kind] = self.registry.create(kind, name, **params)
        return self._models[kind]
