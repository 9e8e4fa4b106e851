"""Methods that turn statistics into split plans: :mod:`~neuronsplit.methods.hesse` (supervised,
Hesse et al. 2025); the unsupervised ELUDe method will live next to it.
"""
