"""Training with the paper's protocol (architectures.md, "Training protocol") on PyTorch Lightning.

``train(config) -> RunResult`` (run.py) is the entry point; ``TrainConfig`` (config.py) holds every
option with the paper's defaults per model. Lightning is imported lazily by the modules that need it.
"""
