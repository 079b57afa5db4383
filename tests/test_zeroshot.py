"""Zero-shot (shots = 0) with MedSigLIP's text tower, on a planted full snapshot (vision + text, one layer each,
real widths, a small tokenizer under the hub layout): the pinned tokenizer settings, the cached text embeddings
and zero-shot scores that rank a planted separable case."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import module_folder
import pretrained_fixtures as pf
from featpipe.backbones.registry import get
from featpipe.backbones.text import embed_prompts, load_text_model, tokenize
from featpipe.backbones.weights import resolve
from featpipe.cli.main import main
from featpipe.core.errors import ConfigError
from featpipe.features.textcache import cached_text_embeddings
from featpipe.fewshot.zeroshot import read_prompts
from featpipe.heads.io import load_head
from featpipe.results.unpaired import PAIRING
from test_calibration import with_counts
from test_fit import fit_cli, write_cache, write_fixture

PROMPTS = """
sets:
  - normal: {positive: ["a chest x-ray of healthy lungs", "normal lungs"], negative: ["pneumonia"]}
    pneumonia: {positive: ["a chest x-ray showing pneumonia"], negative: ["normal lungs"]}
  - normal: {positive: ["clear lungs"]}
    pneumonia: {positive: ["an opacity of pneumonia", "pneumonia"]}
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with module_folder(tmp_path_factory, "medsiglip-full") as h:  # ~190 MB of full-size random weights
        pf.plant_medsiglip_full(h)
        yield h


@pytest.fixture
def planted(home, monkeypatch):
    pf.use_home(monkeypatch, home)
    return home


def test_the_siglip_tokenizer_settings_are_pinned(planted):
    spec = get("medsiglip")
    assert spec.text.tokenizer_kwargs() == {"padding": "max_length", "max_length": 64, "truncation": True}
    model, tok = load_text_model(spec, resolve(spec))
    ids = tokenize(spec, tok, ["a chest x-ray showing pneumonia"])["input_ids"]
    words = pf.TOKENIZER_WORDS
    want = [words.index(w) for w in ("a", "chest", "x-ray", "showing", "pneumonia")]
    assert ids.shape == (1, 64) and ids[0, :5].tolist() == want and (ids[0, 5:] == words.index("<pad>")).all()
    assert tokenize(spec, tok, [" ".join(["lungs"] * 100)])["input_ids"].shape == (1, 64)  # truncated
    # why it is pinned: SigLIP pools the last position, so the same prompt padded to its own length embeds otherwise
    with torch.inference_mode():
        full = model.get_text_features(input_ids=ids)
        short = model.get_text_features(input_ids=tok(["a chest x-ray showing pneumonia"], return_tensors="pt")["input_ids"])
    full, short = (getattr(t, "pooler_output", t) for t in (full, short))
    assert not torch.allclose(full, short, atol=1e-3)


def test_text_embeddings_are_cached_with_their_prompts(planted, tmp_path):
    prompts = ["normal lungs", "pneumonia"]
    te, path, hit = cached_text_embeddings(tmp_path, "medsiglip", prompts)
    assert not hit and te.embeddings.shape == (2, 1152)
    np.testing.assert_allclose(np.linalg.norm(te.embeddings, axis=1), 1.0)
    with np.load(path) as z:
        prov = json.loads(str(z["provenance"]))
    assert prov["prompts"] == prompts and prov["tokenizer"]["max_length"] == 64
    assert prov["weights_id"] == f"hf:google/medsiglip-448@{pf.COMMIT}"
    again, path2, hit2 = cached_text_embeddings(tmp_path, "medsiglip", prompts)
    assert hit2 and path2 == path and np.array_equal(again.embeddings, te.embeddings)
    other, path3, _ = cached_text_embeddings(tmp_path, "medsiglip", prompts[::-1])
    assert path3 != path and np.allclose(other.embeddings, te.embeddings[::-1])


def test_zeroshot_scores_rank_a_planted_separable_case(planted, tmp_path, capsys):
    fx = with_counts(tmp_path, write_fixture(tmp_path, n_train=10, n_val=30, n_test=60, seeds=(0, 1), shots=(2,)))
    (tmp_path / "prompts.yaml").write_text(PROMPTS)
    # image embeddings planted near each class's text: class c = its first set's positive centre + noise
    te = embed_prompts("medsiglip", ["a chest x-ray of healthy lungs", "normal lungs", "a chest x-ray showing pneumonia"])
    centres = np.stack([te.embeddings[:2].mean(0), te.embeddings[2]])
    rng = np.random.default_rng(0)
    X = centres[fx["y"]] + 0.02 * rng.standard_normal((len(fx["y"]), 1152))
    write_cache(tmp_path / "cache/toyset/medsiglip.h5", fx["ids"], X, fx["y"], backbone="medsiglip",
                weights="google/medsiglip-448", weights_id=f"hf:google/medsiglip-448@{pf.COMMIT}", features="pooler")
    (tmp_path / "p.yaml").write_text("fit:\n  bootstrap: 0\n  n_jobs: 1\n")
    (tmp_path / "none.yaml").write_text("fit:\n  bootstrap: 0\n  n_jobs: 1\n")
    assert main(["zeroshot", "--splits", str(tmp_path / "data/splits.json"), "--cache-dir", str(tmp_path / "cache"),
                 "--results", str(tmp_path / "results"), "--backbones", "medsiglip", "--prompts",
                 str(tmp_path / "prompts.yaml"), "--params", str(tmp_path / "p.yaml")]) == 0
    runs = pd.read_csv(tmp_path / "results/runs.csv")
    assert len(runs) == 2 and set(runs["shots"]) == {0} and sorted(runs["seed"]) == [0, 1]  # one run per prompt set
    assert set(runs["head"]) == {"zeroshot"} and (runs["n_train"] == 0).all() and (runs["val_policy"] == "full").all()
    assert runs.loc[runs["seed"] == 0, "auroc"].iloc[0] > 0.95  # the planted case is separable by its prompts
    assert runs["brier"].isna().all() and not runs["calibrated"].any()  # scores, not probabilities
    assert json.loads(runs["prompts"].iloc[0])["pneumonia"]["negative"] == ["normal lungs"]
    assert list((tmp_path / "cache/text").glob("medsiglip-*.npz"))

    # the text-initialised logistic head on the same cache: its prior is the zero-shot classifier of these prompts
    prompts = str(tmp_path / "prompts.yaml")
    for head in ("textlogistic", "logistic"):
        assert fit_cli(tmp_path, "--head", head, "--shots", "2", "--seeds", "0", "1", "--backbone", "medsiglip",
                       "-S", f"zeroshot.prompts={prompts}") == 0
    runs = pd.read_csv(tmp_path / "results/runs.csv")
    text = runs[runs["head"] == "textlogistic"].set_index("seed")
    plain = runs[runs["head"] == "logistic"].set_index("seed")
    assert len(text) == 2 and (text["n_train"] == 4).all()
    # the planted text is right (images sit at their class's prompts), so its prior helps on every seed
    assert (text["auroc"] > plain["auroc"]).all()
    clf = load_head(text["model_path"].iloc[0]).pipeline[-1]
    assert clf.prior.shape == (2, 1152) and np.abs(clf.prior).sum() > 0
    assert fit_cli(tmp_path, "--head", "textlogistic", "--shots", "2", "--seeds", "0", "--backbone", "medsiglip",
                   "-S", f"zeroshot.prompts={prompts}", "-S", "heads.scaler=kshot") != 0  # its prior needs a fixed scaler

    # beside a trained head in one report: the learning curves start at k = 0
    write_cache(tmp_path / "cache/toyset/toy.h5", fx["ids"], fx["X"], fx["y"])
    assert fit_cli(tmp_path, "--head", "logistic", "--shots", "2", "--seeds", "0", "1") == 0
    # ... and in compare: zero-shot against the trained heads at k = 2, unpaired (prompt sets are not seeds)
    capsys.readouterr()
    assert main(["compare", "--results", str(tmp_path / "results"), "--splits", str(tmp_path / "data/splits.json"),
                 "--manifest", str(tmp_path / "data/manifest.csv"), "--params", str(tmp_path / "p.yaml")]) == 0
    assert "against trained heads UNPAIRED: its runs are prompt sets" in capsys.readouterr().out
    comp = pd.read_csv(tmp_path / "results/comparisons.csv")
    loose = comp[comp["pairing"] == PAIRING]
    assert len(loose) and set(loose["shots"]) == {2} and loose["config_b"].str.endswith("zeroshot").all()
    assert (loose["n_b"] == 2).all() and (loose["n_seeds"] == 2).all()
    # the shared test-sampling variance (same test images) widens the Welch interval, never narrows it
    both = loose.dropna(subset=["ci_low", "seed_ci_low"])
    assert len(both) and (both["ci_low"] <= both["seed_ci_low"] + 1e-12).all()
    assert set(comp.loc[comp["shots"] == 0, "pairing"]) <= {"seeds"}  # zero-shot among themselves: by prompt set
    out = tmp_path / "report.html"
    assert main(["report", "--manifest", str(tmp_path / "data/manifest.csv"), "--splits", str(tmp_path / "data/splits.json"),
                 "--results", str(tmp_path / "results"), "--out", str(out), "--params", str(tmp_path / "p.yaml")]) == 0
    html = out.read_text()
    assert "zeroshot" in html and (tmp_path / "plots/learning_curve.png").is_file()
    assert "its interval is over prompt sets, not seeds" in html and "<td>2 prompt sets</td>" in html  # k = 0
    # the comparisons table says which rows are unpaired and against how many prompt sets
    assert "<td>2 vs 2 prompt sets (unpaired)</td>" in html and "<td>2 paired</td>" in html
    # the text prior beside the plain logistic head on the same backbone, paired by seed
    prior = html.split("<h2>Text prior against the plain logistic head</h2>", 1)[1].split("</section>", 1)[0]
    metric = "macro_f1"  # report.metric's default
    diff = (text[metric] - plain[metric]).mean()
    assert f"<td>{text[metric].mean():.3f}</td><td>{plain[metric].mean():.3f}</td><td>{diff:+.3f}</td>" in prior
    assert "<td>2</td>" in prior and "Paired by seed" in prior
    curve = pd.read_csv(tmp_path / "plots/learning_curve.csv")
    assert set(curve.loc[curve["config"].str.contains("zeroshot"), "shots"]) == {0}


def test_bad_prompts_files_are_one_line_errors(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("sets:\n  - normal: {positive: [a]}\n")
    with pytest.raises(ConfigError, match="must name exactly the classes"):
        read_prompts(f, ["normal", "pneumonia"])
    f.write_text("sets:\n  - normal: {negative: [a]}\n    pneumonia: {positive: [b]}\n")
    with pytest.raises(ConfigError, match="give 'positive'"):
        read_prompts(f, ["normal", "pneumonia"])
    with pytest.raises(ConfigError, match="not found"):
        read_prompts(tmp_path / "none.yaml", ["normal"])


def test_the_text_only_sweep_of_a_backbone_without_a_text_tower_writes_why(tmp_path, capsys):
    write_fixture(tmp_path, seeds=(0,), shots=(2,))
    (tmp_path / "p.yaml").write_text("fit:\n  n_jobs: 1\n")
    out = tmp_path / "results/fit/text-tiny_cnn"
    assert main(["sweep", "--text-only", "--backbones", "tiny_cnn", "--heads", "textlogistic", "--splits",
                 str(tmp_path / "data/splits.json"), "--cache-dir", str(tmp_path / "cache"), "--results", str(out),
                 "--models", str(tmp_path / "models/fit/text-tiny_cnn"), "--params", str(tmp_path / "p.yaml")]) == 0
    assert (out / "TEXT.txt").read_text() == "no text-initialised runs: tiny_cnn has no text tower\n"
    assert (tmp_path / "models/fit/text-tiny_cnn").is_dir() and not (out / "runs.csv").exists()
    assert "no runs (no backbone with a text tower)" in capsys.readouterr().out
