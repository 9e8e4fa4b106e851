"""Methods that turn data into split plans: :mod:`~neuronsplit.methods.hesse` (supervised,
Hesse et al. 2025, from a scan's class statistics) and :mod:`~neuronsplit.methods.elude`
(unsupervised, ELUDe: clusters of input contributions, whole layers).
"""
