"""tunewise: tune timm image classifiers with Optuna, phase by phase."""

__version__ = "0.1.0"
