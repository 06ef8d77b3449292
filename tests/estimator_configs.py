"""Small, quick configurations of every registered estimator, shared by the estimator tests."""

from ppl_mixtures import registry

#: A small, quick configuration of each family (the registry's names).
SMALL = {
    "gmm": dict(n_components=3),
    "mfa": dict(n_components=3, n_factors=1),
    "dgmm": dict(n_components=(2, 2), n_factors=(2, 1), max_iter=10),
    "gmvae": dict(n_components=3, max_iter=1, batch_size=60),
    "bgmm": dict(n_components=3),
}
#: Quiet, CPU, seeded.
COMMON = dict(progress=False, device="cpu", random_state=0)


def make_small(name: str, **extra):
    """The estimator of family ``name`` in its small configuration, ``extra`` overriding."""
    return registry.estimator_class(name)(**{**SMALL[name], **COMMON, **extra})
