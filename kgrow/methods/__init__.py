"""Paper methods built on the kgrow engine, one package per method.

* `network_expansion`: Network Expansion (Ding et al., CVPR 2023): CNN width
  expansion with orthogonal new filters, ViT depth expansion from an EMA.
* `variance_transfer`: Yuan, Savarese, Maire (NeurIPS 2023): fan-in-aware
  parameterization, paired width growth with variance transfer, and
  per-stage learning-rate adaptation.
* `progressive_freezing`: SpFDE's progressive layer freezing (Yuan et al.,
  NeurIPS 2022): blocks frozen front to back for a training-FLOPs target,
  per-block cosine learning rates.
* `sparse_training`: MEST dynamic sparse training (EM, EM&S; the sparse part
  of SpFDE) and magnitude pruning schedules on the controller's masks.

Each package has a functional form (pure functions returning a
`kgrow.surgery.GrowthResult` or plain numbers), a Keras callback (re-exported
from `kgrow.callbacks`) and bench methods registered lazily with
`kgrow.bench`. Its method card is `docs/methods/<name>.md`.
"""
