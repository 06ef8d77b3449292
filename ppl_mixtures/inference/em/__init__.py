"""Expectation-maximisation: pure per-model steps under one shared loop."""

from ppl_mixtures.inference.em.loop import EMResult, LikelihoodDecreaseWarning, run_em

__all__ = ["EMResult", "LikelihoodDecreaseWarning", "run_em"]
