"""synfiqa: build synthetic face-image-quality datasets and score and evaluate FIQA (MR-FIQA).

The import is cheap on purpose: heavy libraries (diffusers, transformers, dlib,
the compiled ops) load only when a component that needs them is built.
"""
from synfiqa.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["hookimpl", "__version__"]
