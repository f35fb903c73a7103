"""Reproducing published tables: the registry of published results (:mod:`.published`), sweeps
over GPUs / CPU workers / SLURM (:mod:`.sweep`), the two evaluation protocols
(:mod:`.protocols`), ``ssmis reproduce`` (:mod:`.runner`, :mod:`.commands`) and its report
(:mod:`.report`)."""
