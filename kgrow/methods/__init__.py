"""Paper methods built on the kgrow engine, one package per method.

* `network_expansion`: Network Expansion (Ding et al., CVPR 2023): CNN width
  expansion with orthogonal new filters, ViT depth expansion from an EMA.
* `variance_transfer`: Yuan, Savarese, Maire (NeurIPS 2023): fan-in-aware
  parameterization, paired width growth with variance transfer, and
  per-stage learning-rate adaptation.
* `autoprog`: AutoProg (Li et al., CVPR 2022): progressive patches and depth
  for ViTs (manual schedule Prog, growth operators with MoGrow, adaptive
  regularization); its search lives in the same package.

Each package has a functional form (pure functions returning a
`kgrow.surgery.GrowthResult` or plain numbers), a Keras callback (re-exported
from `kgrow.callbacks`) and bench methods registered lazily with
`kgrow.bench`. Its method card is `docs/methods/<name>.md`.
"""
