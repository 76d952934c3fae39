"""gradleak: audit how much private training data leaks from federated-learning updates."""
from __future__ import annotations

__version__ = "0.1.0"
