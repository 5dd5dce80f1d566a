"""The hooks a synfiqa plugin can implement.

Every registration hook receives a ``register`` callback, in the style of
simonw/llm and datasette: a plugin calls it once per component it offers::

    from synfiqa import hookimpl

    @hookimpl
    def register_degradations(register):
        register("vignette", Vignette, summary="darkens the corners")

``register(name, factory, summary="", defaults=None)``: ``factory(**params)``
builds the component; ``defaults`` are the parameters it takes when the config
says nothing.
"""
import pluggy

hookspec = pluggy.HookspecMarker("synfiqa")
hookimpl = pluggy.HookimplMarker("synfiqa")


@hookspec
def register_generators(register):
    """Register identity generators: ``generate(n, seed, conditioning) -> images + metadata``."""


@hookspec
def register_filters(register):
    """Register identity filters, which keep or remove an identity and record why."""


@hookspec
def register_degradations(register):
    """Register degradations: pure seeded ``sample_params`` and deterministic ``apply``,
    with declared severity axes (see ``synfiqa.degradation.Degradation``)."""


@hookspec
def register_annotators(register):
    """Register quality annotators, which score degraded samples (see ``synfiqa.annotation``)."""


@hookspec
def register_models(register):
    """Register face models. The factory's ``kind`` attribute (or the ``kind=`` keyword of
    ``register``) says which role it fills: ``detector``, ``embedder``, ``pose``,
    ``vision-language`` or ``fiqa``."""


@hookspec
def register_commands(cli):
    """Add click commands or groups to the ``synfiqa`` command line."""
