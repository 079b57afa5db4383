"""Zero-shot (shots = 0) with BiomedCLIP's text tower (PubMedBERT through open_clip), on a planted snapshot: the
published image tower, a one-layer BERT text tower and a small WordPiece tokenizer under the hub layout
(tests/library_fixtures.py). The tokenizer settings pinned in the spec against open_clip's own tokenizer, the text
embedding against open_clip's ``encode_text``, and zero-shot scores that rank a planted separable case."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import module_folder
import library_fixtures as lf
from featpipe.backbones.libs_openclip import BIOMEDCLIP
from featpipe.backbones.registry import get
from featpipe.backbones.text import embed_prompts, load_text_model, tokenize
from featpipe.backbones.weights import resolve
from featpipe.cli.main import main
from featpipe.core.errors import CacheError, WeightsError
from featpipe.params.config import load_params
from featpipe.results.stages import zeroshot
from test_calibration import with_counts
from test_fit import write_cache, write_fixture

PROMPTS = """
sets:
  - normal: {positive: ["a chest x-ray of healthy lungs", "normal lungs"], negative: ["pneumonia"]}
    pneumonia: {positive: ["a chest x-ray showing pneumonia opacities"], negative: ["normal lungs"]}
  - normal: {positive: ["clear lungs"]}
    pneumonia: {positive: ["an opacity of pneumonia", "pneumonia"]}
"""
WEIGHTS_ID = f"hf:{BIOMEDCLIP}@{lf.COMMIT}"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    with module_folder(tmp_path_factory, "biomedclip") as h:  # ~340 MB of full-size random weights
        lf.plant_biomedclip(h)
        yield h


@pytest.fixture
def planted(home, monkeypatch):
    lf.use(monkeypatch, home)
    return home


def test_the_biomedclip_tokenizer_settings_are_pinned(planted):
    import open_clip

    spec = get("biomedclip")
    assert spec.text.tokenizer_kwargs() == {"padding": "max_length", "max_length": 256, "truncation": True}
    assert (spec.text.library, spec.text.image_features, spec.text.clean) == ("open_clip", "image_embeds", "whitespace")
    model, tok = load_text_model(spec, resolve(spec))
    prompt = "A chest  X-ray showing pneumonia opacities"
    ids = tokenize(spec, tok, [prompt])["input_ids"]
    w = lf.BERT_WORDS
    # uncased WordPiece: [CLS] a chest x - ray showing pneumonia opacit ##ies [SEP], then [PAD] to 256
    want = [w.index(t) for t in ("[CLS]", "a", "chest", "x", "-", "ray", "showing", "pneumonia", "opacit", "##ies",
                                 "[SEP]")]
    assert ids.shape == (1, 256) and ids[0, :11].tolist() == want and (ids[0, 11:] == w.index("[PAD]")).all()
    long = tokenize(spec, tok, [" ".join(["lungs"] * 300)])["input_ids"]
    assert long.shape == (1, 256) and long[0, -1] == w.index("[SEP]")  # truncated, the [SEP] kept
    # what open_clip's own tokenizer (HFTokenizer of the repository's config) gives for the same prompts
    reference = open_clip.get_tokenizer("local-dir:" + str(lf.biomedclip_local_dir(planted)))
    prompts = [prompt, " ".join(["lungs"] * 300), "normal lungs"]
    assert torch.equal(tokenize(spec, tok, prompts)["input_ids"], reference(prompts))
    # and open_clip's own model gives featpipe's text embedding (normalised) and logit scale
    ref_model = open_clip.create_model("local-dir:" + str(lf.biomedclip_local_dir(planted))).eval()
    te = embed_prompts("biomedclip", prompts)
    with torch.inference_mode():
        theirs = torch.nn.functional.normalize(ref_model.encode_text(reference(prompts)), dim=-1).double().numpy()
    np.testing.assert_allclose(te.embeddings, theirs, atol=1e-5)
    assert te.embeddings.shape == (3, 512) and te.weights_id == WEIGHTS_ID
    assert te.logit_scale == pytest.approx(float(ref_model.logit_scale.exp())) and te.logit_bias == 0.0


def test_a_config_with_another_context_length_is_refused(planted, tmp_path, monkeypatch):
    snap = lf.plant_biomedclip(planted)
    other = tmp_path / "hf"
    shutil.copytree(planted / "hf", other, symlinks=True)
    cfg_path = other / "hub" / snap.relative_to(planted / "hf" / "hub") / "open_clip_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model_cfg"]["text_cfg"]["context_length"] = 77
    cfg_path.write_text(json.dumps(cfg))
    monkeypatch.setenv("HF_HOME", str(other))
    spec = get("biomedclip")
    with pytest.raises(WeightsError, match="context_length 77, featpipe pins 256"):
        load_text_model(spec, resolve(spec))


def test_biomedclip_zeroshot_scores_rank_a_planted_separable_case(planted, tmp_path):
    fx = with_counts(tmp_path, write_fixture(tmp_path, n_train=10, n_val=30, n_test=60, seeds=(0,), shots=(2,)))
    (tmp_path / "prompts.yaml").write_text(PROMPTS)
    # image embeddings (image_embeds, 512) planted near each class's first-set positive centre, plus noise
    te = embed_prompts("biomedclip", ["a chest x-ray of healthy lungs", "normal lungs",
                                      "a chest x-ray showing pneumonia opacities"])
    centres = np.stack([te.embeddings[:2].mean(0), te.embeddings[2]])
    rng = np.random.default_rng(0)
    X = 3.0 * (centres[fx["y"]] + 0.02 * rng.standard_normal((len(fx["y"]), 512)))  # unnormalised, as encode_image
    write_cache(tmp_path / "cache/toyset/biomedclip.h5", fx["ids"], X, fx["y"], backbone="biomedclip",
                weights=BIOMEDCLIP, weights_id=WEIGHTS_ID, features="image_embeds")
    (tmp_path / "p.yaml").write_text("fit:\n  bootstrap: 0\n  n_jobs: 1\n")
    args = ["zeroshot", "--splits", str(tmp_path / "data/splits.json"), "--cache-dir", str(tmp_path / "cache"),
            "--results", str(tmp_path / "results"), "--backbones", "biomedclip", "--prompts",
            str(tmp_path / "prompts.yaml"), "--params", str(tmp_path / "p.yaml")]
    assert main(args) == 0
    runs = pd.read_csv(tmp_path / "results/runs.csv")
    assert len(runs) == 2 and set(runs["shots"]) == {0} and sorted(runs["seed"]) == [0, 1]  # one run per prompt set
    assert set(runs["backbone"]) == {"biomedclip"} and set(runs["features"]) == {"image_embeds"}
    assert runs.loc[runs["seed"] == 0, "auroc"].iloc[0] > 0.95  # separable by its prompts
    # the classes swapped in the prompts: the same scores rank the wrong way
    swapped = PROMPTS.replace("normal:", "tmp:").replace("pneumonia:", "normal:").replace("tmp:", "pneumonia:")
    (tmp_path / "swapped.yaml").write_text(swapped)
    assert main(args[:-3] + [str(tmp_path / "swapped.yaml"), "--params", str(tmp_path / "p.yaml"),
                             "--results", str(tmp_path / "swapped")]) == 0
    assert pd.read_csv(tmp_path / "swapped/runs.csv").set_index("seed").loc[0, "auroc"] < 0.05
    prov = [json.loads(str(np.load(f)["provenance"])) for f in (tmp_path / "cache/text").glob("biomedclip-*.npz")]
    assert prov and all(p["tokenizer"] == {"padding": "max_length", "max_length": 256, "truncation": True,
                                           "clean": "whitespace"} and p["model_class"] == "open_clip" for p in prov)

    # a cache of the 768-d trunk output (biomedclip#pooler) is not in the text's space: one line saying so
    write_cache(tmp_path / "cache/toyset/biomedclip_pooler.h5", fx["ids"], np.ones((len(fx["y"]), 768)), fx["y"],
                backbone="biomedclip#pooler", weights=BIOMEDCLIP, weights_id=WEIGHTS_ID, features="pooler")
    with pytest.raises(CacheError, match="image_embeds features"):
        zeroshot(tmp_path / "data/splits.json", params=load_params(tmp_path / "p.yaml"),
                 cache_dir=tmp_path / "cache", results_dir=tmp_path / "r2", backbones=["biomedclip#pooler"],
                 prompts=tmp_path / "prompts.yaml")
