"""Analytic and provable reconstructions (PAPERS.md §3): no optimisation, the algebra of the network.

- :mod:`.fc` — exact input recovery through a fully connected first layer with bias
  (``x = ∂L/∂W_n / ∂L/∂b_n``), for B=1 and for batches through rows only one sample activates.
- :mod:`.layerwise` — R-GAP (Zhu & Blaschko, ICLR 2021) and the layer-wise reconstruction of
  Chen & Campbell (2021/2022): backward from the head, one linear system per layer.
- :mod:`.spear` — SPEAR (Dimitrov et al., NeurIPS 2024): exact recovery of whole batches through a first
  linear layer followed by a ReLU, from the gradient's low rank and the ReLU's zeros.
- :mod:`.tensor` — the tensor-decomposition reconstruction of Wang, Lee & Lei (AISTATS 2023) for
  two-layer networks at random Gaussian parameters, with its own single-query scenario.
- :mod:`.trap` — recovery through trap weights a malicious server planted in the first fully connected layer
  (Boenisch et al., EuroS&P 2023; the server is :mod:`gradleak.servers.trap`).
- :mod:`.cocktail` — the Cocktail Party Attack (Kariyappa et al., ICML 2023): ICA separates a batch (or an
  aggregate of several clients) from the mixture that a fully connected first layer's gradient is.
- :mod:`.cocktail_spear` — ``cocktail-spear``, gradleak's own combination of the two above: ICA estimates propose
  each sample's ReLU zeros, which SPEAR turns into an exact direction, so batches far beyond SPEAR's random
  sampling are recovered exactly.

- :mod:`.trace` — tracing a model into a chain of layers; :mod:`.linalg` — the linear algebra of one
  layer (operators, ranks, solving for its input), shared with the per-layer rank analysis these
  methods rest on (:mod:`gradleak.analyze`).
"""
