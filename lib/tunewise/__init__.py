"""tunewise: tune timm image classifiers with Optuna, phase by phase."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `tunewise.predict(...)`: the public shortcut to phases/predict.py, looked up on first
    # use so `import tunewise` stays light (no torch, no timm). importlib, not an import
    # statement: the package's top is the lowest layer, this façade is its one way up.
    if name == "predict":
        import importlib

        return importlib.import_module("tunewise.phases.predict").predict
    raise AttributeError(f"module 'tunewise' has no attribute {name!r}")
