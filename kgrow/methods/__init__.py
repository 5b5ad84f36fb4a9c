"""Paper methods built on the kgrow engine, one package per method.

* `variance_transfer`: Yuan, Savarese, Maire (NeurIPS 2023): fan-in-aware
  parameterization, paired width growth with variance transfer, and
  per-stage learning-rate adaptation.

Each package has a functional form (pure functions), a Keras callback and
bench methods registered lazily with `kgrow.bench`; its method card is
`docs/methods/<name>.md`.
"""
