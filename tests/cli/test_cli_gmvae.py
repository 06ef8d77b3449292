"""``ppl-mixtures fit gmvae``: its own options reach the GMVAE estimator."""

import inspect
import json
from pathlib import Path

import pytest

from ppl_mixtures.cli import build_parser, main
from ppl_mixtures.cli.fit import build_estimator
from ppl_mixtures.registry import get_family

GMVAE_OPTIONS = [
    "--init-restarts", "2", "--init-factor-scale", "0.3", "--predict-w", "mean",
    "--predict-w-draws", "16", "--latent-dim", "3", "--w-dim", "2", "--hidden-dims", "16,8",
    "--prior-hidden-dims", "12", "--z-inference", "closed_form", "--z-prior-weight", "0.5",
    "--pretrain-epochs", "1", "--init-equal-weights", "false", "--freeze-prior", "true",
    "--init-w-encoder", "yes", "--init-select", "likelihood", "--init-factor-fit", "ml",
]
EXPECTED = {
    "init_restarts": 2, "init_factor_scale": 0.3, "predict_w": "mean", "predict_w_draws": 16,
    "latent_dim": 3, "w_dim": 2, "hidden_dims": (16, 8), "prior_hidden_dims": (12,),
    "z_inference": "closed_form", "z_prior_weight": 0.5, "pretrain_epochs": 1,
    "init_equal_weights": False, "freeze_prior": True, "init_w_encoder": True,
    "init_select": "likelihood", "init_factor_fit": "ml",
}


def _estimator(*options):
    args = build_parser().parse_args(["fit", "gmvae", *options])
    return build_estimator(get_family("gmvae"), args, 3, Path("unused"))


def test_every_gmvae_option_sets_its_argument():
    params = _estimator(*GMVAE_OPTIONS).get_params()
    assert {name: params[name] for name in EXPECTED} == EXPECTED


def test_gmvae_option_defaults_are_the_estimator_defaults():
    """Not giving an option leaves the estimator's default (None: the preset's)."""
    family = get_family("gmvae")
    defaults = {name: parameter.default for name, parameter in
                inspect.signature(family.estimator_class()).parameters.items()}
    params = _estimator().get_params()
    for option in family.options:
        assert params[option.arg] == defaults[option.arg], option.flag
        assert option.default in (None, defaults[option.arg]), option.flag


def test_gmvae_help_names_the_start_and_prediction_options(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "gmvae", "--help"])
    text = capsys.readouterr().out
    for flag in ("--init-restarts", "--init-factor-scale", "--predict-w", "--predict-w-draws",
                 "--latent-dim", "--w-dim", "--hidden-dims", "--prior-hidden-dims",
                 "--z-prior-weight", "--init-equal-weights", "--freeze-prior {auto,true,false}",
                 "--init-w-encoder", "--init-select", "--init-factor-fit"):
        assert flag in text, flag


def test_fit_gmvae_with_the_options_runs_them(tmp_path, capsys):
    """A tiny fit (one pre-training epoch, two restarts, one epoch): the saved model was
    built with the options (its latent width, its prediction)."""
    from ppl_mixtures.estimators import load_estimator

    assert main(["fit", "gmvae", "--data", "pinwheel", "--max-iter", "1", "--batch-size",
                 "500", "--init", "gmm", *GMVAE_OPTIONS, "--out", str(tmp_path),
                 "--no-progress", "--device", "cpu", "-k", "3"]) == 0
    capsys.readouterr()
    est = load_estimator(tmp_path / "model.safetensors", device="cpu")
    assert est.networks_.x_dim == 3 and est.networks_.w_dim == 2
    assert est.init_ == "gmm" and est.predict_w == "mean" and est.init_restarts == 2
    assert est.freeze_prior is True and est.model_.freeze_prior
    assert est.init_equal_weights is False and est.init_w_encoder is True
    assert json.loads((tmp_path / "summary.json").read_text())["n_components"] == 3


def test_init_select_takes_the_rankings_and_refuses_others(capsys):
    for word in ("auto", "balance", "penalised", "likelihood"):
        assert _estimator("--init-select", word).init_select == word
    with pytest.raises(SystemExit):
        _estimator("--init-select", "entropy")
    assert "--init-select" in capsys.readouterr().err


def test_freeze_prior_takes_auto_true_and_false():
    for word, value in (("auto", "auto"), ("TRUE", True), ("no", False), ("0", False)):
        assert _estimator("--freeze-prior", word).freeze_prior == value


def test_gmvae_options_refuse_bad_values(capsys):
    for options in (["--init-restarts", "0"], ["--predict-w", "median"],
                    ["--hidden-dims", "16,0"], ["--init-factor-scale", "0"],
                    ["--freeze-prior", "sometimes"], ["--init-equal-weights", "auto"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["fit", "gmvae", *options])
        assert options[0] in capsys.readouterr().err
