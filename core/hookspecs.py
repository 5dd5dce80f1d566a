"""The hooks a synfiqa plugin can implement: the whole public plugin contract.

A plugin is a module with hook implementations, announced by an entry point in the
``synfiqa`` group. Built-ins are found the same way and use the same hooks, with no other
privilege than winning a name clash. Every registration hook receives a ``register``
callback, in the style of simonw/llm and datasette: the plugin calls it once per thing it
offers::

    from synfiqa import hookimpl

    @hookimpl
    def register_degradations(register):
        register("vignette", Vignette, summary="darkens the corners")

The component hooks (generators, filters, Stage-2 backends, degradations, annotators, models) pass::

    register(name, factory, *, summary="", defaults=None)          # register_models: also kind=

* ``name``: unique within the kind; a built-in's name is kept by the built-in.
* ``factory``: any callable; ``factory(**params)`` builds the component, ``params`` being
  the config's ``<section>.params.<name>`` table over the defaults.
* ``summary``: one line for ``synfiqa plugins list`` (default: the factory's docstring's
  first line).
* ``defaults``: the parameters the component takes when the config says nothing. By
  default they are the factory's own: every keyword parameter of its signature that has a
  default value. ``defaults`` overrides or adds to them (a factory taking ``**params``, or
  one class registered twice under two names with different settings).

The kind is the hook's: ``register_degradations`` registers degradations only, and a
``kind=`` naming another kind makes the plugin fail. ``register_models`` says the role of
each model with ``kind=`` (or the factory's ``kind`` attribute): ``detector``,
``embedder``, ``pose``, ``vision-language`` or ``fiqa``. Options go by keyword; a
summary passed as the third positional argument is refused with a message saying so.

``register_model_assets`` declares model weights for the offline lookup of
synfiqa.weights; ``register_commands`` adds click commands. What each component must
offer is in synfiqa.protocols; the conformance kit that checks it is synfiqa.testing;
docs/plugins.md documents every hook.

A plugin that implements a hook this module does not define (a misspelt name) is named
and skipped with a PluginWarning, as is one whose hook raises (synfiqa.plugins).

Each example below runs as a doctest (tests/test_plugin_contract.py), with
``print_register`` standing in for synfiqa's ``register``: it prints what the plugin
passed, and is a quick way to try a hook implementation by hand.
"""
import pluggy

hookspec = pluggy.HookspecMarker("synfiqa")
hookimpl = pluggy.HookimplMarker("synfiqa")


def print_register(name, factory=None, **options) -> None:
    """A stand-in for ``register``: prints the name, the factory's name and the options.

    >>> print_register("vignette", dict, summary="darkens the corners")
    vignette dict {'summary': 'darkens the corners'}
    """
    print(name, getattr(factory, "__name__", ""), options)


@hookspec
def register_generators(register):
    """Register identity generators (synfiqa.protocols.Generator).

    A generator lists identities, each with one or more source photos:
    ``identities(limit, seed) -> list[synfiqa.generation.Identity]``. A generative model
    also offers ``count``, ``generate_indices``, ``identity_name`` and ``metadata`` (see
    synfiqa.protocols.BaseGenerator), and a build then samples it index by index,
    resumably.

    >>> class Mirror:
    ...     '''identities of a folder, mirrored'''
    ...     def __init__(self, path: str = "", flip: bool = True):
    ...         self.path, self.flip = path, flip
    ...     def identities(self, limit=None, seed=0):
    ...         return []
    >>> @hookimpl
    ... def register_generators(register):
    ...     register("mirror", Mirror)
    >>> register_generators(print_register)
    mirror Mirror {}
    """


@hookspec
def register_filters(register):
    """Register identity filters (synfiqa.protocols.Filter), which keep or remove an
    identity and record why: ``judge(subjects, context) -> list[synfiqa.filtering.Decision]``,
    one decision per ``FaceSubject``.

    >>> class LargeFaces:
    ...     def __init__(self, min_size: float = 60.0):
    ...         self.min_size = min_size
    ...     def judge(self, subjects, context):
    ...         return []
    >>> @hookimpl
    ... def register_filters(register):
    ...     register("large-faces", LargeFaces, summary="keep faces at least min_size pixels wide")
    >>> register_filters(print_register)
    large-faces LargeFaces {'summary': 'keep faces at least min_size pixels wide'}
    """


@hookspec
def register_stage2_backends(register):
    """Register Stage-2 backends (synfiqa.protocols.Stage2Backend), which turn an identity
    and its plan into face images: ``render(identity, plan, context)`` yields one
    ``synfiqa.synthesis.Rendered`` per image (a reference, or a degraded sample before its
    degradation). The core detects, aligns, degrades and records what it yields; the
    contract, and the public helpers a backend needs, are in synfiqa.synthesis.

    >>> from synfiqa.synthesis import Rendered
    >>> class Mirror:
    ...     '''every planned image is the identity's first photo, mirrored'''
    ...     def render(self, identity, plan, context):
    ...         photo = identity.photos[0]
    ...         for spec in plan:
    ...             yield Rendered(spec.role, spec.index, photo.image[:, ::-1].copy(), source=photo.key)
    >>> @hookimpl
    ... def register_stage2_backends(register):
    ...     register("mirror", Mirror)
    >>> register_stage2_backends(print_register)
    mirror Mirror {}
    """


@hookspec
def register_degradations(register):
    """Register degradations (synfiqa.protocols.Degradation): pure seeded
    ``sample_params(n, generator)``, deterministic ``apply(images, params, landmarks=None)``
    and declared ``severity_axes``. Validate the input with the public checks of
    synfiqa.degradation (``check_count``, ``check_images``, ``check_params``,
    ``check_landmarks``) and run the kit, synfiqa.testing.DegradationConformance.

    >>> class Vignette:
    ...     severity_axes = ("strength",)
    ...     def __init__(self, max_strength: float = 0.8):
    ...         self.max_strength = max_strength
    >>> @hookimpl
    ... def register_degradations(register):
    ...     register("vignette", Vignette, summary="darkens the corners")
    ...     register("vignette-strong", Vignette, summary="darkens the corners more",
    ...              defaults={"max_strength": 1.0})
    >>> register_degradations(print_register)
    vignette Vignette {'summary': 'darkens the corners'}
    vignette-strong Vignette {'summary': 'darkens the corners more', 'defaults': {'max_strength': 1.0}}
    """


@hookspec
def register_annotators(register):
    """Register quality annotators (synfiqa.protocols.Annotator), which score degraded
    samples: ``scope`` ("identity" or "dataset"), ``provides`` (the score names) and
    ``annotate_identity`` or ``annotate_dataset``; optional ``requires``, ``prepare``,
    ``missing_domains`` and ``include_yaw`` (synfiqa.protocols.BaseAnnotator).

    >>> from synfiqa.protocols import BaseAnnotator
    >>> class Sharpness(BaseAnnotator):
    ...     scope, provides = "identity", ("sharpness",)
    ...     def annotate_identity(self, samples, references, context):
    ...         return {"sharpness": samples.float().std(dim=(1, 2, 3))}
    >>> @hookimpl
    ... def register_annotators(register):
    ...     register("sharpness", Sharpness)
    >>> register_annotators(print_register)
    sharpness Sharpness {}
    """


@hookspec
def register_models(register):
    """Register face models. ``kind=`` (or the factory's ``kind`` attribute) says which role
    each fills: ``detector``, ``embedder``, ``pose``, ``vision-language`` or ``fiqa``
    (synfiqa.protocols.Detector, Embedder, PoseEstimator, VisionLanguage, FIQAScorer).
    A factory with a ``device`` parameter is given ``run.device``. Find weights with
    ``synfiqa.weights.locate(asset)``, the asset declared with ``register_model_assets``.

    >>> class TinyQuality:
    ...     kind = "fiqa"
    ...     def score(self, crops):
    ...         return crops.float().mean(dim=(1, 2, 3))
    >>> @hookimpl
    ... def register_models(register):
    ...     register("tiny-quality", TinyQuality)
    ...     register("tiny-embedder", TinyQuality, kind="embedder", summary="means as features")
    >>> register_models(print_register)
    tiny-quality TinyQuality {}
    tiny-embedder TinyQuality {'kind': 'embedder', 'summary': 'means as features'}
    """


@hookspec
def register_model_assets(register):
    """Declare model assets: weight files that synfiqa.weights.locate finds offline, in the
    same places and with the same checks as the built-ins' (a config path,
    ``$SYNFIQA_WEIGHTS/<asset>/``, ``~/.cache/synfiqa/weights/<asset>/``, the package that
    ships them, other tools' caches, the torch and Hugging Face caches), and that
    ``synfiqa models list`` shows. Nothing is downloaded.

    ``register(name, *, files, license, source, summary="", package=None, hf_repo=None,
    cache_dirs=())``: ``files`` is a file name, a list of file names or of
    ``{"path": ..., "sha256": ..., "size": ...}`` tables (sha256 and size optional, checked
    when given), or a mapping from file name to sha256 (or None); ``source`` says where to
    get the files (the not-found error prints it). The built-ins declare theirs in
    registry.toml's ``[[asset]]`` tables, which reach this same ``register``.

    >>> @hookimpl
    ... def register_model_assets(register):
    ...     register("tiny-quality", files={"tiny.pth": None}, license="MIT",
    ...              source="https://example.org/tiny.pth", summary="the tiny quality model")
    >>> register_model_assets(print_register)
    tiny-quality  {'files': {'tiny.pth': None}, 'license': 'MIT', 'source': 'https://example.org/tiny.pth', 'summary': 'the tiny quality model'}
    """


@hookspec
def register_commands(cli):
    """Add click commands or groups to the ``synfiqa`` command line: ``cli`` is the
    top-level click group. A plugin whose hook raises is skipped and the commands it added
    are taken out again.

    >>> import click
    >>> from click.testing import CliRunner
    >>> @click.group()
    ... def cli():
    ...     pass
    >>> @hookimpl
    ... def register_commands(cli):
    ...     @cli.command("hello")
    ...     def hello():
    ...         '''Say hello.'''
    ...         click.echo("hello from a plugin")
    >>> register_commands(cli)
    >>> CliRunner().invoke(cli, ["hello"]).output
    'hello from a plugin\\n'
    """
