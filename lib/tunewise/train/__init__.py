"""One trial's training: the hyperparameters and their checks, timm models, the training
loop with per-epoch macro-F1, and the Optuna objective that ties them to a search space.

Builds on `tunewise.data`; knows nothing of studies, storages or notebooks."""
