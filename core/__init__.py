"""synfiqa: build synthetic face-image-quality datasets and score and evaluate FIQA (MR-FIQA).

The import is cheap on purpose: heavy libraries (diffusers, transformers, dlib,
the compiled ops) load only when a component that needs them is built.
"""
from synfiqa.hookspecs import hookimpl

__version__ = "0.1.0"

# the Python API (core/api.py), loaded on first use so that `import synfiqa` stays light
_API_NAMES = ("list_models", "create_scorer", "build", "evaluate", "report", "Scorer", "ReferenceScorer")

__all__ = ["hookimpl", "__version__", *_API_NAMES]


def __getattr__(name: str):
    if name in _API_NAMES:
        from synfiqa import api

        return getattr(api, name)
    raise AttributeError(f"module 'synfiqa' has no attribute {name!r}")
