"""Text loops: BERT masking, MLM training, DistilBERT's triple loss, classifier distillation."""
from __future__ import annotations

import pytest
import torch

from kdlab_lib import metrics, models, text, train_text


@pytest.fixture(scope="module")
def tok():
    return text.load_tokenizer("wordpiece")


@pytest.fixture(scope="module")
def blocks(tok):
    return text.token_blocks(text.load_corpus("wiki", "val")[:3], tok, 32)[:24]


def _tiny(tok, layers=2):
    torch.manual_seed(0)
    return models.bert_mlm(tok.vocab_size, layers=layers, hidden=32, heads=2, intermediate=64, max_len=32)


def test_mask_tokens_follows_bert(tok, blocks):
    ids = blocks.clone()
    ids[:, 0] = tok.cls_token_id  # a special token must never be picked
    inputs, labels = text.mask_tokens(ids, tok, 0.15, torch.Generator().manual_seed(0))
    picked = labels != -100
    assert not picked[:, 0].any()
    assert torch.equal(labels[picked], ids[picked]) and torch.equal(inputs[~picked], ids[~picked])
    share = picked.float().mean().item()
    assert 0.10 < share < 0.20
    masked = (inputs[picked] == tok.mask_token_id).float().mean().item()
    assert 0.65 < masked < 0.95  # ~80% become [MASK]
    again, _ = text.mask_tokens(ids, tok, 0.15, torch.Generator().manual_seed(0))
    assert torch.equal(inputs, again)


@pytest.mark.slow
def test_fit_mlm_learns_and_logs(tok, blocks):
    model = _tiny(tok)
    before = metrics.mlm_scores(metrics.mlm_predictions(model, blocks, tok))
    cfg = train_text.TextConfig(steps=30, batch_size=8, lr=3e-3, log_every=10)
    hist = train_text.fit_mlm(model, blocks, tok, cfg, progress=False)
    assert [r["step"] for r in hist.records] == [10, 20, 30] and not model.training
    after = metrics.mlm_scores(metrics.mlm_predictions(model, blocks, tok))
    assert after["perplexity"] < before["perplexity"]


def test_a_training_run_hands_its_heap_back_once_it_ends(tok, blocks, monkeypatch):
    from kdlab_lib import config
    calls = []
    monkeypatch.setattr(config, "trim_heap", lambda: calls.append("trim") or True)
    train_text.fit_mlm(_tiny(tok), blocks, tok, train_text.TextConfig(steps=2, batch_size=4), progress=False)
    assert calls == ["trim"]


def test_distill_mlm_logs_each_term_and_matches_the_loss(tok, blocks):
    teacher = _tiny(tok, layers=4).eval()
    student = models.student_from_teacher(teacher, [0, 2])
    cfg = train_text.TripleLossConfig(steps=4, batch_size=8, log_every=2)
    hist = train_text.distill_mlm(student, teacher, blocks, tok, cfg, progress=False)
    rec = hist.records[-1]
    assert {"soft", "mlm", "cos", "loss"} <= set(rec)
    assert rec["loss"] == pytest.approx(5 * rec["soft"] + 2 * rec["mlm"] + rec["cos"], rel=1e-5)
    with pytest.raises(ValueError, match="weights"):
        train_text.distill_mlm(student, teacher, blocks, tok,
                               train_text.TripleLossConfig(steps=1, w_soft=0, w_mlm=0, w_cos=0), progress=False)


def test_mlm_predictions_ask_every_model_the_same_questions(tok, blocks):
    a = metrics.mlm_predictions(_tiny(tok), blocks, tok, seed=5)
    b = metrics.mlm_predictions(_tiny(tok, layers=3), blocks, tok, seed=5)
    assert torch.equal(a["target"], b["target"])
    scores = metrics.mlm_scores(a)
    assert scores["n_masked"] == len(a["target"]) and 0 <= scores["accuracy"] <= 1
    assert scores["perplexity"] == pytest.approx(float(torch.exp(a["nll"].mean())))
    model = _tiny(tok)
    one, many = (metrics.mlm_predictions(model, blocks, tok, seed=5, batch_size=n) for n in (1, 64))
    assert torch.equal(one["target"], many["target"]) and torch.equal(one["pred"], many["pred"])


def test_classifier_fine_tuning_and_distillation(tok):
    pairs = text.load_sentiment("val")[:64]
    enc = tok([t for t, _ in pairs], padding="max_length", truncation=True, max_length=24, return_tensors="pt")
    labels = torch.tensor([y for _, y in pairs])
    teacher = models.to_classifier(_tiny(tok, layers=4))
    cfg = train_text.ClassifierKDConfig(steps=5, batch_size=16, log_every=5)
    train_text.fit_classifier(teacher, enc["input_ids"], enc["attention_mask"], labels, cfg, progress=False)
    student = models.to_classifier(models.student_from_teacher(_tiny(tok, layers=4), [0, 2]))
    cfg = train_text.ClassifierKDConfig(steps=5, batch_size=16, log_every=5, w_cos=1.0)
    hist = train_text.distill_classifier(student, teacher, enc["input_ids"], enc["attention_mask"], labels,
                                         cfg, progress=False)
    rec = hist.records[-1]
    assert rec["loss"] == pytest.approx(0.5 * rec["hard"] + 0.5 * rec["soft"] + rec["cos"], rel=1e-5)
    logits = metrics.classifier_logits(student, enc["input_ids"], enc["attention_mask"])
    assert logits.shape == (64, 2)
    assert metrics.latency_ms(student, enc["input_ids"][:8], repeats=2) > 0


def test_a_diverging_run_stops_with_a_clear_error(tok, blocks):
    model = _tiny(tok)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="learning rate"):
        train_text.fit_mlm(model, blocks, tok, train_text.TextConfig(steps=2, batch_size=4), progress=False)


# ------------------------------------------------------------ the reference step, token-level KD

def _tiny_gpt(seed, layers, width=16, vocab=50):
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=16, n_embd=width, n_layer=layers, n_head=2,
                                  bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg)


def test_token_kd_step_is_the_formula_over_the_real_next_tokens():
    import copy
    teacher, student = _tiny_gpt(1, 2).double(), _tiny_gpt(2, 1).double()
    reference = copy.deepcopy(student)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 50, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[0, 6:] = 0   # a padded row: its last positions must not count
    T, alpha = 2.0, 0.25
    got = train_text.token_kd_step(student, teacher, x, mask, torch.optim.SGD(student.parameters(), lr=0.1), T, alpha)

    # by hand: position t predicts token t+1, counted where token t+1 is real
    teacher.eval()
    with torch.no_grad():
        p = torch.softmax(teacher(input_ids=x, attention_mask=mask).logits[:, :-1] / T, -1)      # (B, S-1, V)
    z = reference(input_ids=x, attention_mask=mask).logits[:, :-1]                               # (B, S-1, V)
    keep = mask[:, 1:].bool()                                                                   # (B, S-1)
    kl = (p * (p.log() - torch.log_softmax(z / T, -1))).sum(-1)[keep].mean()
    ce = -torch.log_softmax(z, -1).gather(-1, x[:, 1:, None])[..., 0][keep].mean()
    loss = alpha * ce + (1 - alpha) * T * T * kl
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    with torch.no_grad():
        for w, gw in zip(reference.parameters(), grads):
            w -= 0.1 * gw
    assert got == pytest.approx(float(loss.detach()), rel=1e-9)
    for a, b in zip(student.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_token_kd_terms_ignore_padded_positions():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    x = torch.randint(0, 7, (2, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    base = train_text.token_kd_terms(s, t, x, mask, temperature=2.0, alpha=0.5)
    s2, x2 = s.clone(), x.clone()
    s2[0, 2:] += 100.0   # positions 2.. of row 0 predict padding
    x2[0, 3:] = 0
    again = train_text.token_kd_terms(s2, t, x2, mask, temperature=2.0, alpha=0.5)
    for k in ("loss", "soft", "hard"):
        assert float(again[k]) == pytest.approx(float(base[k]), rel=1e-6)


def test_triple_loss_step_takes_one_step_on_the_weighted_terms_and_leaves_the_teacher_alone():
    torch.manual_seed(0)
    teacher = models.bert_mlm(40, layers=2, hidden=16, heads=2, intermediate=32, max_len=12).train()
    student = models.student_from_teacher(teacher, [1])
    ids = torch.randint(5, 40, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0                                                    # one right-padded row
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    before = [p.detach().clone() for p in student.parameters()]
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    terms = train_text.triple_loss_step(student, teacher, batch, opt, 2.0, (5.0, 2.0, 1.0))
    assert set(terms) == {"soft", "mlm", "cos", "loss"} and all(isinstance(v, float) for v in terms.values())
    assert terms["loss"] == pytest.approx(5 * terms["soft"] + 2 * terms["mlm"] + terms["cos"], rel=1e-6)
    assert not teacher.training and student.training
    assert all(p.grad is None for p in teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
