"""avarnet: AVAR-Net audio-visual anomaly recognition.

The library is pure PyTorch, numpy, decord, timm and transformers. It never imports
ray, mlflow or fastapi; those live in ``workflows/``, ``tune/`` and ``serve/``.
Nothing happens at import time.
"""

__version__ = "0.1.0"
