"""The model families: one entry per estimator, read by the command line and the diagnostics.

A family says, declaratively, what the code around an estimator needs to treat it generically:
where its class lives, how ``ppl-mixtures fit NAME`` offers it (help, inference paths,
``--distributed`` and ``--resume``, its own options, the default data) and how its fitted
results are drawn (a plot label, whether ``covariances_`` must be expanded to full matrices).
Adding a model means its model file, its EM steps, its estimator and one entry here.

Classes are named by import strings (``"module:attribute"``) and imported on first use, so
importing this module imports neither torch nor Pyro.

Examples
--------
>>> from ppl_mixtures.registry import FAMILIES, get_family
>>> sorted(FAMILIES)
['bgmm', 'dgmm', 'gmm', 'gmvae', 'mfa']
>>> get_family("mfa").inference
('em', 'svi', 'nuts')
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FAMILIES",
    "OPTION_TYPES",
    "Family",
    "Option",
    "estimator_class",
    "family_of",
    "get_family",
]

#: Value types of :class:`Option`: an integer >= 1, comma-separated integers >= 1, a number
#: > 0, a number >= 0, one of ``Option.choices``, or a boolean (``true``/``false``, passed as
#: True/False; ``Option.choices`` lists other words it also takes, e.g. ``("auto",)``).
OPTION_TYPES = ("count", "counts", "positive", "nonnegative", "choice", "boolean")

#: ``ppl_mixtures.models.gmm.COVARIANCE_TYPES``, repeated so that this module needs no torch
#: (``tests/test_cli.py`` checks that the two agree).
COVARIANCE_TYPES = ("spherical", "diag", "tied_diag", "tied", "full")
#: ``ppl_mixtures.models.gmvae.PRESETS`` by name (likewise kept in step by a test).
GMVAE_PRESETS = ("synthetic", "digits_mlp", "digits_conv", "mnist_mlp", "mnist_conv", "svhn_conv")


@dataclass(frozen=True)
class Option:
    """A family's own command-line option, passed to the estimator as one keyword argument.

    Attributes
    ----------
    flag : str
        The option, e.g. ``"--n-factors"``.
    arg : str
        The estimator's keyword argument it sets, e.g. ``"n_factors"``. An option whose
        ``arg`` is ``"n_components"`` replaces ``--n-components`` for its family.
    type : str
        One of :data:`OPTION_TYPES`.
    default : Any
        The value when the option is not given; ``None`` leaves the estimator's default.
    help : str
        The ``--help`` line, stating the default.
    choices : tuple of str
        The allowed values of a ``"choice"`` option; for a ``"boolean"`` one, the words it
        takes besides ``true`` and ``false`` (passed as they are, e.g. ``"auto"``).
    metavar : str or None
        The value's name in ``--help`` (default: from the flag).
    inference : tuple of str
        The inference paths the option applies to; empty: all. ``fit`` refuses the option,
        given a value other than its default, with any other ``--inference``.
    inference_defaults : tuple of (str, Any) pairs
        The value on the command line, when the option is not given, for an inference path
        (e.g. ``(("sgd", 32),)``: 32 for ``--inference sgd``), instead of ``default``.
    """

    flag: str
    arg: str
    type: str
    default: Any = None
    help: str = ""
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    inference: tuple[str, ...] = ()
    inference_defaults: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.type not in OPTION_TYPES:
            raise ValueError(f"Option {self.flag}: type={self.type!r} is not one of "
                             f"{OPTION_TYPES}")
        if self.type == "choice" and not self.choices:
            raise ValueError(f"Option {self.flag}: type='choice' needs choices")
        if self.choices and self.type not in ("choice", "boolean"):
            raise ValueError(f"Option {self.flag}: choices go with type='choice' or "
                             "'boolean' only")
        if self.inference and any(path not in self.inference
                                  for path, _ in self.inference_defaults):
            raise ValueError(f"Option {self.flag}: inference_defaults for a path outside "
                             f"inference={self.inference}")

    @property
    def dest(self) -> str:
        """Where ``argparse`` stores the value (apart from the common options' names)."""
        return "option_" + self.arg

    def applies_to(self, inference: str) -> bool:
        """Whether the option has an effect with ``--inference inference``."""
        return not self.inference or inference in self.inference

    def default_for(self, inference: str) -> Any:
        """The value when the option is not given, with ``--inference inference``."""
        return dict(self.inference_defaults).get(inference, self.default)


@dataclass(frozen=True)
class Family:
    """One model family: its estimator and how the command line and diagnostics treat it.

    Attributes
    ----------
    name : str
        The ``fit`` sub-command and the key in :data:`FAMILIES`.
    estimator : str
        The estimator class as ``"module:Class"``, imported by :meth:`estimator_class`.
    help : str
        One line for ``ppl-mixtures fit --help``.
    description : str
        The paragraph of ``ppl-mixtures fit NAME --help``.
    label : str
        Short plot label, a :meth:`str.format` template of the fitted estimator ``est``,
        e.g. ``"MFA (r={est.n_factors}, {est.inference})"``.
    inference : tuple of str
        The estimator's ``inference`` paths the command line offers; the first is the
        default. With one path, ``fit NAME`` has no ``--inference`` option.
    options : tuple of Option
        The family's own options.
    dataset : str
        The built-in data set that ``--data`` defaults to; one the family's defaults fit.
    distributed : tuple of str
        The inference paths that run under ``--distributed`` (torchrun); empty: no option.
    resume : tuple of str
        The inference paths that write a checkpoint and continue from it with ``--resume``.
    expand_covariances : str or None
        ``"module:function"`` mapping the estimator's ``params_`` to the (K, D, D) covariance
        matrices when ``covariances_`` is not already full (a GMM's per-type shapes);
        ``None`` when it is (or when there is none: no ellipses are drawn).
    outputs : str
        What ``fit`` writes besides the model: ``"mixture"`` (summary of the mixture,
        ``clusters.png``, ``history.png``) or ``"latent"`` (a deep latent model:
        ``history.png``, ``latent.png`` and, for square images, ``samples.png``).
    tractable_likelihood : bool
        Whether the estimator has an exact likelihood and global parameters (weights,
        means, covariances): what ``diagnose`` needs for the log-likelihood, BIC, WAIC, LOO
        and ArviZ data. False (a GMVAE): ``diagnose`` reports the ELBO and the clusters.
    n_init : bool
        Whether the estimator takes ``n_init`` (restarts): ``fit`` offers ``--n-init``.
    max_iter_help : str
        What ``--max-iter`` counts for the family, with its defaults, for ``--help``.
    scale : tuple of (str, str) pairs
        The ``--scale`` of an inference path when ``--scale`` is not given (otherwise
        ``"none"``), e.g. ``(("sgd", "standard"),)``: the max-component SGD's step sizes
        assume features of unit scale. ``fit`` prints the scaling it applied.
    """

    name: str
    estimator: str
    help: str
    description: str
    label: str
    inference: tuple[str, ...]
    options: tuple[Option, ...] = ()
    dataset: str = "gmm"
    distributed: tuple[str, ...] = ()
    resume: tuple[str, ...] = ("svi",)
    expand_covariances: str | None = None
    outputs: str = "mixture"
    tractable_likelihood: bool = True
    n_init: bool = True
    max_iter_help: str = ("EM iterations or SVI steps (default: the estimator's, e.g. 100 for "
                          "EM, 1000 for SVI)")
    scale: tuple[tuple[str, str], ...] = ()

    @property
    def components_option(self) -> Option | None:
        """The option that gives ``n_components`` instead of ``--n-components``, if any."""
        return next((option for option in self.options if option.arg == "n_components"), None)

    def estimator_class(self) -> type:
        """The estimator class (imported on first use)."""
        return _resolve(self.estimator)

    def default_scale(self, inference: str) -> str:
        """The ``--scale`` of ``inference`` when ``--scale`` is not given."""
        return dict(self.scale).get(inference, "none")

    def plot_label(self, est: Any) -> str:
        """The short label of the fitted estimator ``est`` for plot titles."""
        return self.label.format(est=est)

    def full_covariances(self, est: Any) -> Any:
        """(K, D, D) covariance matrices of the fitted ``est`` as an ndarray, or ``None``."""
        if self.expand_covariances is None:
            return getattr(est, "covariances_", None)
        return _resolve(self.expand_covariances)(est.params_).detach().cpu().numpy()


#: ``--missing``: the families whose estimators integrate missing (NaN) entries out.
_MISSING_HELP = ("error: a missing cell of --data (empty, NA, nan) is refused; marginalize: "
                 "missing cells are integrated out exactly, the summary counts them and "
                 "imputed.csv holds the data with their conditional means (default: error)")


def _missing_option(inference: tuple[str, ...] = ()) -> Option:
    """``--missing`` for the inference paths ``inference`` (empty: all of the family's)."""
    only = f"{' or '.join(path.upper() for path in inference)} only: " if inference else ""
    return Option("--missing", "missing", "choice", None, only + _MISSING_HELP,
                  choices=("error", "marginalize"), inference=inference)


#: The options of every family that offers ``--inference nuts``.
_NUTS_OPTIONS = (
    Option("--num-warmup", "num_warmup", "count", None,
           "NUTS only: warm-up steps per chain (default: 200)", metavar="W",
           inference=("nuts",)),
    Option("--num-chains", "num_chains", "count", None, "NUTS only: chains; r_hat needs 2 or "
           "more (default: 1)", metavar="C", inference=("nuts",)),
    Option("--chain-method", "chain_method", "choice", None, "NUTS only: chains in parallel "
           "processes or one after the other; auto: parallel when more cores than chains are "
           "free (default: auto)", choices=("auto", "parallel", "sequential"),
           inference=("nuts",)),
)

FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family(
        "gmm", "ppl_mixtures.estimators:GaussianMixture",
        "Gaussian mixture (EM, SVI, SGD or NUTS)",
        "Fit a Gaussian mixture by EM, by SVI (MAP or mean-field guide), by the max-component "
        "SGD of Gepperth & Pfuelb (2021) (on standardised features unless --scale says "
        "otherwise) or by NUTS, over the same Pyro model.",
        "GMM ({est.covariance_type}, {est.inference})", ("em", "svi", "sgd", "nuts"),
        options=(
            Option("--covariance-type", "covariance_type", "choice", "full",
                   "covariance constraint (default: full)", choices=COVARIANCE_TYPES),
            Option("--guide", "guide", "choice", None, "SVI only: point estimates (map) or "
                   "independent Normals whose draws diagnose turns into WAIC and LOO "
                   "(mean_field) (default: map)", choices=("map", "mean_field"),
                   inference=("svi",)),
            Option("--batch-size", "batch_size", "count", None, "SVI/SGD minibatch size "
                   "(default: full batch for SVI; 32 for SGD here, where the Python "
                   "estimator's default is 1)", metavar="B", inference=("svi", "sgd"),
                   inference_defaults=(("sgd", 32),)),
            Option("--lr", "lr", "positive", None,
                   "learning rate (default: 0.05 for SVI, 0.011 for SGD)",
                   inference=("svi", "sgd")),
            _missing_option(),
            *_NUTS_OPTIONS,
        ),
        distributed=("em", "svi"),
        expand_covariances="ppl_mixtures.models.gmm:covariance_matrices",
        max_iter_help="EM iterations (default: 100), SVI steps (1000), SGD epochs (20) or "
        "NUTS draws per chain (200)",
        scale=(("sgd", "standard"),),
    ),
    Family(
        "mfa", "ppl_mixtures.estimators:MixtureOfFactorAnalyzers",
        "mixture of factor analysers (EM, SVI or NUTS)",
        "Fit a mixture of factor analysers (x = eta_g + Lambda_g z + u) by EM, by SVI or by "
        "NUTS over the same (collapsed) Pyro model.",
        "MFA (r={est.n_factors}, {est.inference})", ("em", "svi", "nuts"),
        options=(
            Option("--n-factors", "n_factors", "count", 2, "latent factors per component, "
                   "< number of features (default: 2)", metavar="R"),
            Option("--batch-size", "batch_size", "count", None,
                   "SVI minibatch size (default: full batch)", metavar="B",
                   inference=("svi",)),
            Option("--lr", "lr", "positive", None, "SVI learning rate (default: 0.05)",
                   inference=("svi",)),
            _missing_option(),
            *_NUTS_OPTIONS,
        ),
        dataset="wine",
        distributed=("em",),
        max_iter_help="EM iterations (default: 200), SVI steps (1000) or NUTS draws per "
        "chain (200)",
    ),
    Family(
        "dgmm", "ppl_mixtures.estimators:DeepGaussianMixture",
        "deep Gaussian mixture (EM or SVI)",
        "Fit a deep Gaussian mixture (stacked mixtures of factor analysers; Viroli & McLachlan "
        "2019, Selosse et al. 2020) by exact EM or by SVI; clusters are the paths through the "
        "layers.",
        "DGMM (G={est.n_components}, r={est.n_factors}, {est.inference})", ("em", "svi"),
        options=(
            Option("--layers", "n_components", "counts", (3, 3, 2), "components per layer "
                   "(default: 3,3,2; replaces --n-components)", metavar="G1,G2,..."),
            Option("--n-factors", "n_factors", "counts", (11, 6, 2), "factor dimension per "
                   "layer, strictly decreasing and below the number of features (default: "
                   "11,6,2)", metavar="R1,R2,..."),
            Option("--batch-size", "batch_size", "count", None,
                   "SVI minibatch size (default: full batch)", metavar="B",
                   inference=("svi",)),
            Option("--lr", "lr", "positive", None, "SVI learning rate (default: 0.01)",
                   inference=("svi",)),
            Option("--anneal-start", "anneal_start", "positive", 1.0, "EM only: deterministic "
                   "annealing from temperature T0 > 1 before EM (default: 1, off)",
                   metavar="T0", inference=("em",)),
            Option("--start", "start", "choice", "auto", "gmm: the data's own Gaussian "
                   "mixture mapped onto the tree of paths, then accelerated EM; layerwise: "
                   "the paper's start and plain EM; auto (default): gmm when there are at "
                   "least 4 rows per path and parameter of a covariance row, else layerwise "
                   "(still accelerated)", choices=("auto", "gmm", "layerwise")),
        ),
        dataset="dgmm",
        distributed=("em",),
        max_iter_help="EM iterations (default: 500) or SVI steps (2000)",
    ),
    Family(
        "gmvae", "ppl_mixtures.estimators:GMVAE", "Gaussian-mixture VAE (SVI)",
        "Train a Gaussian-mixture VAE (Dilokthanakul et al. 2016) by SVI; --max-iter counts "
        "epochs. Writes model.safetensors, summary.json, history.png, latent.png (the clustered latent x, "
        "coloured by cluster) and, for square images (e.g. --data digits), samples.png (one "
        "row of generated images per component).",
        "GMVAE (K={est.n_components}, {est.preset_})", ("svi",),
        options=(
            Option("--preset", "preset", "choice", "auto", "network sizes; auto: synthetic up "
                   "to 16 features, digits_mlp above (default: auto)",
                   choices=("auto", *GMVAE_PRESETS)),
            Option("--likelihood", "likelihood", "choice", "gaussian",
                   "p(y | x); bernoulli needs features in [0, 1], e.g. --scale minmax "
                   "(default: gaussian)", choices=("gaussian", "bernoulli")),
            Option("--observation-variance", "observation_variance", "positive", 0.01,
                   "fixed Gaussian variance, a fraction of the data's (default: 0.01)",
                   metavar="V"),
            Option("--z-inference", "z_inference", "choice", "enumerate", "z summed out, or "
                   "the closed-form term of Dilokthanakul et al. (2016) with free bits "
                   "(default: enumerate)",
                   choices=("enumerate", "closed_form")),
            Option("--free-bits", "free_bits", "nonnegative", 0.0,
                   "lambda of the closed-form z term (default: 0)", metavar="L"),
            Option("--num-particles", "num_particles", "count", 1,
                   "samples of (x, w) per data point (default: 1)", metavar="M"),
            Option("--batch-size", "batch_size", "count", 128, "minibatch size (default: 128)",
                   metavar="B"),
            Option("--lr", "lr", "positive", 1e-3, "Adam learning rate (default: 0.001)"),
            Option("--init", "init", "choice", "auto", "start of the mixture: gmm (a GMM "
                   "fitted in a pre-trained autoencoder's latent space), random (the "
                   "networks' own), auto (gmm when the data have more features than the "
                   "latent; default: auto)", choices=("auto", "gmm", "random")),
            Option("--pretrain-epochs", "pretrain_epochs", "count", 100,
                   "autoencoder epochs before the gmm start (default: 100)", metavar="E"),
            Option("--init-restarts", "init_restarts", "count", 90,
                   "restarts of the latent GMM of the gmm start, the most likely kept; each "
                   "costs a small GMM fit (default: 90)", metavar="R"),
            Option("--init-equal-weights", "init_equal_weights", "boolean", True,
                   "fit the latent GMM of the gmm start with its weights fixed at 1/K (the "
                   "GMVAE's uniform prior over z) and rank its restarts by that likelihood "
                   "(default: true)"),
            Option("--init-select", "init_select", "choice", "auto",
                   "which restart of the gmm start is kept: balance (the most even cluster "
                   "sizes, the GMVAE's uniform prior over z), penalised (likelihood less the "
                   "sizes' divergence from 1/K), likelihood (the most likely; for clusters "
                   "of very unequal sizes); auto: balance with --init-equal-weights true, "
                   "else likelihood (default: auto)",
                   choices=("auto", "balance", "penalised", "likelihood")),
            Option("--init-factor-fit", "init_factor_fit", "choice", "ml",
                   "how each latent covariance of the gmm start becomes a factor analyser "
                   "over w: ml (maximum likelihood) or pca (leading axes) (default: ml)",
                   choices=("ml", "pca")),
            Option("--init-rotate", "init_rotate", "boolean", True,
                   "turn the latent space of the gmm start to the common principal axes of "
                   "its covariances before carrying them over as factor analysers "
                   "(default: true)"),
            Option("--freeze-prior", "freeze_prior", "boolean", "auto",
                   "keep the conditional prior network at its start during SVI; auto: after "
                   "the gmm start only (default: auto)", choices=("auto",)),
            Option("--init-w-encoder", "init_w_encoder", "boolean", False,
                   "start the encoder's w head at the factor analysers' posterior of w in the "
                   "gmm start (default: false)"),
            Option("--init-factor-scale", "init_factor_scale", "positive", 0.01,
                   "slope of the prior network's units that carry w in the gmm start "
                   "(default: 0.01)", metavar="S"),
            Option("--predict-w", "predict_w", "choice", "marginal",
                   "how predict treats w: marginal (integrated over its prior) or mean (at "
                   "q(w | y)'s mean; default: marginal)", choices=("marginal", "mean")),
            Option("--predict-w-draws", "predict_w_draws", "count", 256,
                   "fixed draws of w for --predict-w marginal (default: 256)", metavar="N"),
            Option("--latent-dim", "latent_dim", "count", None,
                   "dimension of the clustered latent x (default: the preset's)",
                   metavar="DX"),
            Option("--w-dim", "w_dim", "count", None,
                   "dimension of w (default: the preset's)", metavar="DW"),
            Option("--hidden-dims", "hidden_dims", "counts", None,
                   "hidden widths of the encoder and the decoder (default: the preset's)",
                   metavar="H1,H2,..."),
            Option("--prior-hidden-dims", "prior_hidden_dims", "counts", None,
                   "hidden widths of the conditional prior network (default: the preset's)",
                   metavar="H1,..."),
            Option("--z-prior-weight", "z_prior_weight", "nonnegative", 1.0,
                   "weight of the closed-form z term, with --z-inference closed_form "
                   "(default: 1)", metavar="W"),
        ),
        dataset="pinwheel", distributed=("svi",), outputs="latent",
        tractable_likelihood=False, n_init=False,
        max_iter_help="epochs: passes over the data, each of ceil(N / batch size) SVI steps "
        "(default: 100)",
    ),
    Family(
        "bgmm", "ppl_mixtures.estimators:BayesianGaussianMixture",
        "Bayesian Gaussian mixture (CAVI or SVI)",
        "Fit a variational Bayesian Gaussian mixture (scikit-learn's BayesianGaussianMixture) "
        "with a Dirichlet-process or Dirichlet prior on the weights, by coordinate-ascent VI "
        "or by SVI over the same Pyro model; unused components get weights near zero.",
        "BGMM ({est.covariance_type}, {est.inference})", ("cavi", "svi"),
        options=(
            Option("--covariance-type", "covariance_type", "choice", "full",
                   "covariance constraint (default: full)",
                   choices=("spherical", "diag", "tied", "full")),
            Option("--weight-prior", "weight_concentration_prior_type", "choice",
                   "dirichlet_process", "prior of the weights (default: dirichlet_process)",
                   choices=("dirichlet_process", "dirichlet_distribution")),
            Option("--lr", "lr", "positive", None, "SVI learning rate (default: 0.05)",
                   inference=("svi",)),
        ),
        expand_covariances="ppl_mixtures.models.bayesian_gmm:covariance_matrices",
        max_iter_help="CAVI iterations (default: 100) or SVI steps (2000)",
    ),
)}


@functools.cache
def _resolve(reference: str) -> Any:
    """The object named by ``"module:attribute"``."""
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def get_family(name: str) -> Family:
    """The family called ``name``.

    Raises
    ------
    ValueError
        If there is none; the message lists the names.
    """
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model family {name!r}; expected one of "
                         f"{', '.join(FAMILIES)}") from None


def estimator_class(name: str) -> type:
    """The estimator class of the family called ``name`` (see :func:`get_family`)."""
    return get_family(name).estimator_class()


def family_of(estimator: Any) -> Family:
    """The family of an estimator instance or class (a subclass belongs to its parent's).

    Raises
    ------
    ValueError
        If neither the class nor any of its bases is a registered estimator.
    """
    cls = estimator if isinstance(estimator, type) else type(estimator)
    by_class = {family.estimator_class(): family for family in FAMILIES.values()}
    for base in cls.__mro__:
        if base in by_class:
            return by_class[base]
    raise ValueError(f"{cls.__name__} is not the estimator of a registered model family "
                     f"({', '.join(FAMILIES)}); add it to ppl_mixtures.registry.FAMILIES")
