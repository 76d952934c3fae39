"""Integration with real federated-learning frameworks.

- :mod:`gradleak.fl.task` — the demo's federated task (data partitions, the client's round with
  gradleak's defenses and label augmentations), pure torch;
- :mod:`gradleak.fl.capture` — the on-disk store of captured rounds (Observations) and the
  audit-as-you-go hook, pure torch;
- :mod:`gradleak.fl.flower` — Flower (``pip install gradleak[flower]``): the capturing ``FedAvg``
  strategy, the ClientApp/ServerApp and the simulation used by ``gradleak fl-demo``.

Importing this package imports nothing heavy; Flower is imported only by :mod:`gradleak.fl.flower`.
"""
