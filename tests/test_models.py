"""Model builders and load_teacher (kdlab checkpoints, local Hugging Face folders, hub names)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlab_lib import checkpoints, datasets, metrics, models


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        assert torch.equal(sa[key].cpu(), sb[key].cpu()), key


# ------------------------------------------------------------------ builders


@pytest.mark.parametrize("hidden", [(30, 30), (800, 800), [16]])
def test_mlp_shapes(hidden):
    model = models.mlp(hidden)
    out = model(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [*hidden, 10]
    assert linears[0].in_features == 784
    n = sum((a + 1) * b for a, b in zip([784, *hidden], [*hidden, 10]))
    assert models.n_params(model) == n


def test_mlp_dropout_and_bad_hidden():
    assert any(isinstance(m, nn.Dropout) for m in models.mlp((20,), dropout=0.2))
    assert not any(isinstance(m, nn.Dropout) for m in models.mlp((20,)))
    for bad in ([], [0], [10, -3]):
        with pytest.raises(ValueError, match="hidden"):
            models.mlp(bad)


def test_cnn_shapes():
    model = models.cnn()
    model.eval()
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    small = models.cnn((4, 8), hidden=16, n_out=5)
    assert small(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    assert models.n_params(small) < models.n_params(model)


def test_build_from_a_card_config():
    torch.manual_seed(0)
    a = models.build({"arch": "mlp", "hidden": [30, 30]})
    torch.manual_seed(0)
    b = models.mlp((30, 30))
    assert_same_weights(a, b)
    c = models.build({"arch": "cnn", "channels": [4, 8], "hidden": 16})
    assert c(torch.randn(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("cfg", [{"arch": "resnet"}, {"hidden": [30]}, {}])
def test_build_rejects_an_unknown_arch(cfg):
    with pytest.raises(ValueError, match="unknown arch"):
        models.build(cfg)


# ------------------------------------------------------------- load_teacher


def test_hub_name_offline_fails_at_once_saying_how_to_go_online(monkeypatch, no_network):
    import transformers

    def forbidden(*args, **kwargs):
        raise AssertionError("load_teacher tried to reach the hub while offline")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", forbidden)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)
    for name in ("gpt2-large", "distilbert-base-uncased", "openai-community/gpt2"):
        with pytest.raises(ValueError, match=r"online=True"):
            models.load_teacher(name)
        with pytest.raises(ValueError, match=r"online=True"):
            models.load_teacher(name, online=False)


def save_small_mlp(path, dtype=None):
    torch.manual_seed(3)
    model = models.mlp((30, 30))
    checkpoints.save(model, path, {"config": {"arch": "mlp", "hidden": [30, 30]},
                                   "metrics": {"note": "test"}}, dtype=dtype)
    return model


def test_load_teacher_from_a_kdlab_directory(tmp_path, no_network):
    original = save_small_mlp(tmp_path / "small")
    original.train()
    loaded = models.load_teacher(tmp_path / "small")
    assert isinstance(loaded, nn.Sequential)
    assert not loaded.training and all(not m.training for m in loaded.modules())
    assert_same_weights(loaded, original)
    assert loaded.card["config"] == {"arch": "mlp", "hidden": [30, 30]}
    assert models.load_teacher(str(tmp_path / "small"), device="cpu") is not None  # str paths too
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(loaded.cpu()(x), original.eval()(x))


def test_load_teacher_from_an_fp16_checkpoint_gives_float32_weights(tmp_path):
    original = save_small_mlp(tmp_path / "half", dtype=torch.float16)
    loaded = models.load_teacher(tmp_path / "half", device="cpu")
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, original.state_dict()[key].half().float()), key


def test_load_teacher_refuses_weights_that_do_not_fit_the_card(tmp_path):
    torch.manual_seed(0)
    checkpoints.save(models.mlp((30, 30)), tmp_path / "wrong",
                     {"config": {"arch": "mlp", "hidden": [20]}})
    with pytest.raises(checkpoints.CorruptCheckpointError, match="kdlab prepare --only wrong"):
        models.load_teacher(tmp_path / "wrong")


def test_load_teacher_refuses_a_corrupt_kdlab_directory(tmp_path):
    save_small_mlp(tmp_path / "small")
    weights = tmp_path / "small" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(checkpoints.CorruptCheckpointError, match="kdlab prepare --only small"):
        models.load_teacher(tmp_path / "small")


def test_load_teacher_from_a_local_hugging_face_directory(tmp_path, no_network):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    original = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50,
                                          n_positions=32, bos_token_id=0, eos_token_id=0))
    original.save_pretrained(tmp_path / "gpt")
    loaded = models.load_teacher(tmp_path / "gpt")
    assert isinstance(loaded, GPT2LMHeadModel)
    assert not loaded.training
    assert_same_weights(loaded, original)
    ids = torch.tensor([[1, 2, 3, 4]])
    original.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.cpu()(ids).logits, original(ids).logits, atol=1e-6)


def test_load_teacher_on_a_directory_with_neither_card_nor_config(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing to load")
    with pytest.raises(ValueError, match="neither"):
        models.load_teacher(tmp_path / "empty")


def test_shipped_mnist_teacher_loads_and_is_accurate():
    teacher = models.load_teacher("mnist", device="cpu")
    assert not teacher.training
    assert hasattr(teacher, "card") and "sha256" in teacher.card
    test = datasets.take(datasets.load_mnist("test"), 1000, seed=0)
    logits = metrics.predict(teacher, test)
    assert logits.shape == (1000, 10)
    assert metrics.error_count(logits, test.tensors[1]) < 30  # a real teacher: < 3% error


# ------------------------------------------------------------------ student_from_teacher


def test_student_from_gpt2_teacher_copies_the_chosen_blocks():
    student_from_teacher = models.student_from_teacher
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    teacher = GPT2LMHeadModel(GPT2Config(n_layer=4, n_head=2, n_embd=16, vocab_size=50,
                                         n_positions=32, bos_token_id=0, eos_token_id=0))
    student = student_from_teacher(teacher, [0, 2])
    assert isinstance(student, GPT2LMHeadModel)
    assert len(student.transformer.h) == 2
    for s_i, t_i in enumerate([0, 2]):
        assert_same_weights(student.transformer.h[s_i], teacher.transformer.h[t_i])
    assert torch.equal(student.transformer.wte.weight, teacher.transformer.wte.weight)
    assert torch.equal(student.transformer.wpe.weight, teacher.transformer.wpe.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    assert_same_weights(student.transformer.ln_f, teacher.transformer.ln_f)


def test_student_from_bert_teacher_is_a_distilbert_with_mapped_weights():
    student_from_teacher = models.student_from_teacher
    from transformers import BertConfig, BertForMaskedLM, DistilBertForMaskedLM

    torch.manual_seed(0)
    teacher = BertForMaskedLM(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=4,
                                         num_attention_heads=2, intermediate_size=32,
                                         max_position_embeddings=32))
    student = student_from_teacher(teacher, [0, 2])
    assert isinstance(student, DistilBertForMaskedLM)
    layers = student.distilbert.transformer.layer
    assert len(layers) == 2
    for s_i, t_i in enumerate([0, 2]):
        t_layer, s_layer = teacher.bert.encoder.layer[t_i], layers[s_i]
        pairs = [(s_layer.attention.q_lin, t_layer.attention.self.query),
                 (s_layer.attention.k_lin, t_layer.attention.self.key),
                 (s_layer.attention.v_lin, t_layer.attention.self.value),
                 (s_layer.attention.out_lin, t_layer.attention.output.dense),
                 (s_layer.ffn.lin1, t_layer.intermediate.dense),
                 (s_layer.ffn.lin2, t_layer.output.dense),
                 (s_layer.sa_layer_norm, t_layer.attention.output.LayerNorm),
                 (s_layer.output_layer_norm, t_layer.output.LayerNorm)]
        for s_mod, t_mod in pairs:
            assert_same_weights(s_mod, t_mod)
    emb_s, emb_t = student.distilbert.embeddings, teacher.bert.embeddings
    assert torch.equal(emb_s.word_embeddings.weight, emb_t.word_embeddings.weight)
    # DistilBERT has no token types: BERT's type-0 vector is folded into the positions
    torch.testing.assert_close(emb_s.position_embeddings.weight,
                               emb_t.position_embeddings.weight + emb_t.token_type_embeddings.weight[0])
    assert_same_weights(emb_s.LayerNorm, emb_t.LayerNorm)
    assert torch.equal(student.vocab_projector.weight, emb_t.word_embeddings.weight)
    assert_same_weights(student.vocab_transform, teacher.cls.predictions.transform.dense)
    assert_same_weights(student.vocab_layer_norm, teacher.cls.predictions.transform.LayerNorm)


def _tiny_bert(cls_name="BertForMaskedLM", layers=4):
    import transformers
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=layers,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=32, num_labels=2)
    return getattr(transformers, cls_name)(cfg).eval()


def test_copying_every_layer_reproduces_the_teacher_exactly():
    """The strongest check of the weight mapping: all layers copied -> identical outputs."""
    from transformers import GPT2Config, GPT2LMHeadModel
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    bert = _tiny_bert()
    distil = models.student_from_teacher(bert, [0, 1, 2, 3]).eval()
    with torch.no_grad():
        torch.testing.assert_close(distil(input_ids=ids, attention_mask=mask).logits,
                                   bert(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-4)
    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(n_layer=3, n_head=2, n_embd=16, vocab_size=50, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():
        torch.testing.assert_close(models.student_from_teacher(gpt, [0, 1, 2]).eval()(ids).logits,
                                   gpt(ids).logits)


@pytest.mark.parametrize("cls_name", ["BertModel", "BertForSequenceClassification"])
def test_bert_model_students_keep_their_class_and_chosen_layers(cls_name):
    teacher = _tiny_bert(cls_name, layers=6)
    student = models.student_from_teacher(teacher, [0, 2, 4])
    assert type(student) is type(teacher) and student.config.num_hidden_layers == 3
    enc_t = (teacher if cls_name == "BertModel" else teacher.bert).encoder.layer
    enc_s = (student if cls_name == "BertModel" else student.bert).encoder.layer
    for i, j in enumerate([0, 2, 4]):
        assert_same_weights(enc_s[i], enc_t[j])
    if cls_name != "BertModel":
        assert_same_weights(student.classifier, teacher.classifier)
    assert teacher.config.num_hidden_layers == 6  # the teacher is left alone


@pytest.mark.parametrize("layers", [[], [0, 0], [4], [-1], [0, 9]])
def test_bad_layer_choices_are_refused(layers):
    with pytest.raises(ValueError, match="layer"):
        models.student_from_teacher(_tiny_bert(), layers)


def test_student_from_teacher_needs_a_transformers_model():
    with pytest.raises(ValueError, match="transformers model"):
        models.student_from_teacher(models.mlp((30, 30)), [0])


def test_transformers_models_round_trip_through_kdlab_checkpoints(tmp_path):
    teacher = _tiny_bert()
    checkpoints.save(teacher, tmp_path / "bert", {"config": models.card_config(teacher)}, dtype=torch.float16)
    loaded = models.load_teacher(tmp_path / "bert", device="cpu")
    assert type(loaded) is type(teacher) and not loaded.training
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.half().float())
    with pytest.raises(ValueError, match="not a transformers model class"):
        models.build({"arch": "hf", "hf_class": "os", "hf_config": {}})


@pytest.mark.parametrize("cls_name", ["BertForMaskedLM", "BertModel"])
def test_to_classifier_keeps_the_encoder(cls_name):
    mlm = _tiny_bert(cls_name)
    clf = models.to_classifier(mlm, num_labels=3).eval()
    assert type(clf).__name__ == "BertForSequenceClassification" and clf.config.num_labels == 3
    enc = mlm.bert if cls_name == "BertForMaskedLM" else mlm
    assert_same_weights(clf.bert.encoder, enc.encoder)
    assert_same_weights(clf.bert.embeddings, enc.embeddings)
    ids = torch.randint(0, 60, (2, 7))
    assert clf(input_ids=ids).logits.shape == (2, 3)


def test_to_classifier_from_a_distilbert_student():
    student = models.student_from_teacher(_tiny_bert(), [0, 2])
    clf = models.to_classifier(student)
    assert type(clf).__name__ == "DistilBertForSequenceClassification"
    assert_same_weights(clf.distilbert.transformer, student.distilbert.transformer)
    with pytest.raises(ValueError, match="to_classifier supports"):
        models.to_classifier(models.mlp((4,)))


def test_bert_mlm_builder_sizes():
    m = models.bert_mlm(100, layers=2, hidden=32, heads=2, intermediate=64, max_len=16)
    assert m.config.num_hidden_layers == 2 and m.config.vocab_size == 100
    assert m(input_ids=torch.randint(0, 100, (1, 16))).logits.shape == (1, 16, 100)


def test_sinusoidal_positions_formula_and_shift_property():
    p = models.sinusoidal_positions(10, 8)
    assert p.shape == (10, 8)
    i, k = 3, 1  # P[i, 2k] = sin(i / 10000^(2k/d)), P[i, 2k+1] = cos(...)
    assert torch.isclose(p[i, 2 * k], torch.tensor(math.sin(i / 10000 ** (2 * k / 8))))
    assert torch.isclose(p[i, 2 * k + 1], torch.tensor(math.cos(i / 10000 ** (2 * k / 8))))
    # every row has the same norm, and rows one step apart are equally similar everywhere
    assert torch.allclose(p.norm(dim=1), torch.full((10,), 2.0))
    sims = (p[:-1] * p[1:]).sum(1)
    assert torch.allclose(sims, sims[0].expand_as(sims), atol=1e-5)
    assert torch.allclose(models.sinusoidal_positions(10, 8, scale=0.5), 0.5 * p)
    with pytest.raises(ValueError, match="even"):
        models.sinusoidal_positions(10, 7)


def test_bert_mlm_sinusoidal_positions_are_the_trainable_start():
    m = models.bert_mlm(100, layers=1, hidden=32, heads=2, intermediate=64, max_len=16, positions="sinusoidal")
    table = m.bert.embeddings.position_embeddings.weight
    assert table.requires_grad
    assert torch.allclose(table, models.sinusoidal_positions(16, 32, scale=0.02 * 2 ** 0.5))
    assert abs(table.pow(2).mean().sqrt().item() - 0.02) < 1e-4  # root mean square = the word embeddings' std
    with pytest.raises(ValueError, match="positions must be"):
        models.bert_mlm(100, layers=1, hidden=32, heads=2, intermediate=64, positions="rotary")
