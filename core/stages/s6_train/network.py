"""How `synfiqa train` obtains the network it trains: through the registry's `fiqa`
components, so that a third-party backbone plugin is trained the same way as the built-in.

A `fiqa` component is trainable when its factory offers the optional member
`training_network(arch, head, embedding_size, dropout) -> nn.Module`
(synfiqa.protocols.BaseFIQAScorer.training_network, read through
`synfiqa.protocols.training_network`): a classmethod or staticmethod, as it is called before
any checkpoint exists. The module takes float [N, 3, 112, 112] crops in [-1, 1] and returns
(embedding [N, F], quality [N, 1]); its `state_dict()` saved with torch.save is a file that
the same component loads with `factory(path=FILE)`, so `synfiqa score` then scores with the
trained network (docs/train.md).
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from synfiqa.errors import ConfigError, PluginError
from synfiqa.protocols import training_network

NetworkBuilder = Callable[..., nn.Module]


def network_builder(registry, name: str) -> NetworkBuilder:
    """The builder of the `fiqa` component `name`: its factory's `training_network`. A
    component without one is a ConfigError naming the trainable ones."""
    builder = training_network(registry.get("fiqa", name).factory)
    if builder is not None:
        return builder
    trainable = sorted(c.name for c in registry.components("fiqa") if training_network(c.factory) is not None)
    raise ConfigError(f"fiqa model {name!r} cannot be trained: its factory offers no "
                      f"training_network(arch, head, embedding_size, dropout); trainable: {', '.join(trainable) or 'none'}")


def build_network(builder: NetworkBuilder, arch: str, head: str, embedding_size: int, dropout: float) -> nn.Module:
    try:
        network = builder(arch=arch, head=head, embedding_size=embedding_size, dropout=dropout)
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"cannot build the network ({arch}, {head} head): {error}") from None
    if not isinstance(network, nn.Module):
        raise PluginError(f"training_network returned {type(network).__name__}, not a torch.nn.Module")
    return network
