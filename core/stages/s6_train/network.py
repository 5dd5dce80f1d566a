"""How `synfiqa train` obtains the network it trains: through the registry's `fiqa`
components, so that a third-party backbone plugin is trained the same way as the built-in.

A `fiqa` component is trainable when its factory offers

    training_network(arch: str, head: str, embedding_size: int, dropout: float) -> nn.Module

(a classmethod or staticmethod: it is called before any checkpoint exists). The module
takes float [N, 3, 112, 112] crops in [-1, 1] and returns (embedding [N, F], quality
[N, 1]); its `state_dict()` saved with torch.save is a file that the same component loads
with `factory(path=FILE)`: `synfiqa score --model NAME` (or `--model FILE` for `cr-fiqa`)
then scores with the trained network. The protocol is TrainableFIQA below.

The built-in `cr-fiqa` scorer does not offer it yet: the command line hands its builder in
(`synfiqa_cli.train`), until `synfiqa_plugins.models.cr_fiqa.CRFIQAScorer` gains a
`training_network` classmethod (docs/train.md).
"""
from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from torch import nn

from synfiqa.errors import ConfigError, PluginError

NetworkBuilder = Callable[..., nn.Module]


@runtime_checkable
class TrainableFIQA(Protocol):
    """A `fiqa` factory that can build its network untrained."""

    def training_network(self, arch: str, head: str, embedding_size: int, dropout: float) -> nn.Module: ...


def network_builder(registry, name: str, builtin: dict[str, NetworkBuilder] | None = None) -> NetworkBuilder:
    """The builder of the `fiqa` component `name`: its factory's `training_network`, or the
    one `builtin` hands in for a built-in that lacks it. A component that offers neither is
    a ConfigError naming the trainable ones."""
    component = registry.get("fiqa", name)
    if isinstance(component.factory, TrainableFIQA):
        return component.factory.training_network
    if builtin and name in builtin:
        return builtin[name]
    trainable = sorted(c.name for c in registry.components("fiqa")
                       if isinstance(c.factory, TrainableFIQA) or (builtin and c.name in builtin))
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
