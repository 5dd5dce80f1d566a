"""What a running stage can reach: the config, the registry, the device and the models
(built once, on first use).

`run.device` is the device of every component that takes one: `create` passes it to a
factory with a `device` parameter, unless the component's own params table sets `device`."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from synfiqa.config import component_params
from synfiqa.models import resolve_device
from synfiqa.registry import Registry

_MODEL_CONFIG_KEYS = {"detector": "detector", "embedder": "embedder", "pose": "pose",
                      "vision-language": "vision_language", "fiqa": "fiqa"}


def takes_device(factory) -> bool:
    """Whether a component factory has a `device` parameter."""
    try:
        return "device" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def create_on_device(registry: Registry, kind: str, name: str, device: str, params: dict | None = None):
    """`registry.create(kind, name, **params)`, with `device` passed when the factory takes one
    and `params` does not set it."""
    params = dict(params or {})
    if "device" not in params and takes_device(registry.get(kind, name).factory):
        params["device"] = device
    return registry.create(kind, name, **params)


@dataclass
class RunContext:
    config: dict
    registry: Registry
    _models: dict = field(default_factory=dict)

    @property
    def device(self):
        """run.device resolved ("auto" -> cuda when visible, else cpu); a device this machine
        lacks is a ConfigError."""
        return resolve_device(self.config["run"]["device"])

    def create(self, kind: str, name: str, params: dict | None = None):
        """A component on run.device (its params table may still set `device`)."""
        return create_on_device(self.registry, kind, name, str(self.device), params)

    def model_name(self, kind: str) -> str:
        return self.config["models"][_MODEL_CONFIG_KEYS[kind]]

    def model(self, kind: str):
        if kind not in self._models:
            name = self.model_name(kind)
            self._models[kind] = self.create(kind, name, component_params(self.config, "models", name))
        return self._models[kind]
