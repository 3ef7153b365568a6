"""Model builders and the loader for shipped, local and hub teachers.

Image models (MNIST, 28x28 grey): ``mlp(hidden)`` such as Hinton et al.'s
800-800 and 30-30 students, and ``cnn()``, the small convolutional teacher the
lab ships (Hinton's teacher was a 1200-1200 MLP with dropout and jitter; on a
CPU budget it does not reach the lab's error target, a small CNN does).

Every builder is reachable through ``build(config)`` with a plain dict such as
``{"arch": "mlp", "hidden": [800, 800]}``: that dict is what a checkpoint card
stores, so ``load_teacher`` can rebuild the model before loading the weights.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from . import checkpoints, config

SHIPPED = {  # short name -> directory under data/models (each made by `kdlab prepare --only NAME`)
    "mnist": "mnist",
    "bert-tiny": "bert-tiny",
    "gpt2-tiny": "gpt2-tiny",
    "gpt2-wiki-student": "gpt2-wiki-student",
}


def mlp(hidden=(800, 800), *, n_in: int = 784, n_out: int = 10, dropout: float = 0.0) -> nn.Sequential:
    """A fully connected ReLU net ``784 -> hidden... -> 10`` on flattened images."""
    hidden = [int(h) for h in hidden]
    if not hidden or any(h <= 0 for h in hidden):
        raise ValueError(f"hidden must be a non-empty list of positive sizes, got {hidden}")
    layers: list[nn.Module] = [nn.Flatten()]
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def cnn(channels=(32, 64), *, hidden: int = 256, n_out: int = 10, dropout: float = 0.3) -> nn.Sequential:
    """A small CNN: two blocks of [conv3x3-BN-ReLU x2, maxpool], then a dense layer.

    Shapes: (B, 1, 28, 28) -> (B, c1, 14, 14) -> (B, c2, 7, 7) -> (B, hidden) -> (B, 10).
    """
    c1, c2 = (int(c) for c in channels)

    def block(c_in, c_out):
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                nn.MaxPool2d(2)]

    return nn.Sequential(*block(1, c1), *block(c1, c2), nn.Flatten(),
                         nn.Dropout(dropout), nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(hidden, n_out))


def hf(hf_class: str, hf_config: dict) -> nn.Module:
    """A ``transformers`` model of class ``hf_class`` with random weights, from a config dict."""
    import transformers
    cls = getattr(transformers, hf_class, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(f"{hf_class!r} is not a transformers model class")
    return settle(cls(cls.config_class.from_dict(hf_config)))


_LOSS_TYPES = (("LMHeadModel", "ForCausalLM"), ("CausalLM", "ForCausalLM"), ("MaskedLM", "ForMaskedLM"),
               ("SequenceClassification", "ForSequenceClassification"))


def settle(model):
    """Tell ``transformers`` what it cannot guess, so it does not warn on every run: the model's loss
    (it cannot tell ``GPT2LMHeadModel`` is a causal LM), and, for a causal LM whose padding token is its
    end-of-text token, that nothing is padding (the lab's blocks hold that token between documents)."""
    name = type(model).__name__
    kind = next((loss for suffix, loss in _LOSS_TYPES if name.endswith(suffix)), None)
    if kind is not None:
        model.loss_type = kind
    cfg = getattr(model, "config", None)
    if kind == "ForCausalLM" and cfg is not None and cfg.pad_token_id is not None and \
            cfg.pad_token_id in (cfg.eos_token_id, cfg.bos_token_id):
        cfg.pad_token_id = None
    return model


def card_config(model: nn.Module) -> dict:
    """The ``config`` a checkpoint card stores for a ``transformers`` model (see ``build``)."""
    return {"arch": "hf", "hf_class": type(model).__name__, "hf_config": model.config.to_dict()}


BUILDERS = {"mlp": mlp, "cnn": cnn, "hf": hf}


def build(model_config: dict) -> nn.Module:
    """Build a model from a card's ``config`` dict, e.g. ``{"arch": "mlp", "hidden": [30, 30]}``."""
    kwargs = dict(model_config)
    arch = kwargs.pop("arch", None)
    if arch not in BUILDERS:
        raise ValueError(f"unknown arch {arch!r}; known: {sorted(BUILDERS)}")
    return BUILDERS[arch](**kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shipped_dir(name: str) -> Path:
    return config.MODELS_DIR / SHIPPED[name]


def load_teacher(name, online: bool = False, *, device=None) -> nn.Module:
    """An eval-mode model from a shipped short name, a local directory or (online) the hub.

    - a shipped name (``"mnist"``, ...): ``data/models/NAME`` checked against its card;
    - a local directory: a kdlab checkpoint (``card.json``) or a Hugging Face
      ``save_pretrained`` folder (``config.json``), loaded without the network;
    - a hub name such as ``"gpt2-large"``: only with ``online=True``.
    Students load the same way.
    """
    if isinstance(name, str) and name in SHIPPED:
        if not shipped_dir(name).is_dir():
            raise FileNotFoundError(f"the shipped model {name!r} is missing from {shipped_dir(name)}; "
                                    f"create it with `kdlab prepare --only {name}`")
        model = _load_kdlab(shipped_dir(name))
    elif Path(name).is_dir():
        path = Path(name)
        if (path / checkpoints.CARD).exists():
            model = _load_kdlab(path)
        elif (path / "config.json").exists():
            model = _load_hf(str(path), local_files_only=True)
        else:
            raise ValueError(f"{path} holds neither a kdlab checkpoint (card.json) nor a "
                             f"Hugging Face model (config.json)")
    elif not online:
        raise ValueError(
            f"{name!r} is not a shipped model ({', '.join(sorted(SHIPPED))}) nor a local "
            f"directory. To download it from the Hugging Face Hub, call "
            f"load_teacher({name!r}, online=True) on a machine with internet access.")
    else:
        model = _load_hf(str(name), local_files_only=False)
    return model.to(device or config.device()).eval()


def _load_kdlab(path: Path) -> nn.Module:
    state, card = checkpoints.load(path)
    model = build(card["config"])
    reference = model.state_dict()
    if set(state) != set(reference):
        raise checkpoints.CorruptCheckpointError(
            f"{path}: the weights do not fit the card's config {card['config']}; "
            f"{checkpoints.remake_hint(path, card)}")
    model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})
    model.card = card
    if card["config"].get("arch") == "cnn":  # 2-4x faster convolutions on the CPU
        model = model.to(memory_format=torch.channels_last)
    return model


def _load_hf(name: str, local_files_only: bool) -> nn.Module:
    import transformers
    cfg = transformers.AutoConfig.from_pretrained(name, local_files_only=local_files_only)
    archs = " ".join(cfg.architectures or [])
    if "MaskedLM" in archs:
        auto = transformers.AutoModelForMaskedLM
    elif "LMHead" in archs or "CausalLM" in archs:
        auto = transformers.AutoModelForCausalLM
    elif "SequenceClassification" in archs:
        auto = transformers.AutoModelForSequenceClassification
    else:
        auto = transformers.AutoModel
    from transformers.utils import logging as hf_logging
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()   # a load takes a second; its bar would stay in a notebook as "0/103"
    try:
        return settle(auto.from_pretrained(name, local_files_only=local_files_only))
    finally:
        if shown:
            hf_logging.enable_progress_bar()


# ------------------------------------------------- students from transformers

_LAYER_KEY = re.compile(r"(encoder\.layer|transformer\.layer|(?:^|\.)h)\.(\d+)\.")
_N_LAYERS = ("num_hidden_layers", "n_layer", "n_layers")  # BERT, GPT-2, DistilBERT
_BERT_TO_DISTILBERT = [  # (DistilBERT name in a layer, BERT name in a layer)
    ("attention.q_lin", "attention.self.query"), ("attention.k_lin", "attention.self.key"),
    ("attention.v_lin", "attention.self.value"), ("attention.out_lin", "attention.output.dense"),
    ("sa_layer_norm", "attention.output.LayerNorm"), ("ffn.lin1", "intermediate.dense"),
    ("ffn.lin2", "output.dense"), ("output_layer_norm", "output.LayerNorm"),
]


def _check_layers(layers, n_teacher: int) -> list[int]:
    layers = [int(i) for i in layers]
    if not layers:
        raise ValueError("layers must name at least one teacher layer to copy")
    if len(set(layers)) != len(layers) or any(i < 0 or i >= n_teacher for i in layers):
        raise ValueError(f"layers must be distinct 0-based indices below the teacher's "
                         f"{n_teacher} layers, got {layers}")
    return layers


def _n_layers(cfg) -> int:
    for name in _N_LAYERS:
        if hasattr(cfg, name):
            return getattr(cfg, name)
    raise ValueError(f"cannot tell how many layers a {type(cfg).__name__} has")


def student_from_teacher(teacher, layers):
    """A smaller student whose layers are copies of the teacher's layers ``layers`` (0-based).

    Word and position embeddings and the output head are copied too (Sanh et al.
    2019 initialised DistilBERT from every other BERT layer, e.g. ``layers=[0, 2,
    4, 6, 8, 10]``). Supported: ``BertForMaskedLM`` -> ``DistilBertForMaskedLM``
    (no token-type embeddings: BERT's type-0 vector is folded into the position
    embeddings, so the copied embeddings give exactly the teacher's first hidden
    state); any other BERT, DistilBERT or GPT-2 model -> the same class with
    fewer layers (e.g. ``BertModel`` such as MiniLM, ``GPT2LMHeadModel``).
    """
    import transformers as tf
    if not isinstance(teacher, tf.PreTrainedModel):
        raise ValueError(f"student_from_teacher needs a transformers model, got {type(teacher).__name__}")
    layers = _check_layers(layers, _n_layers(teacher.config))
    if isinstance(teacher, tf.BertForMaskedLM):
        student, mapping = _distilbert_from_bert(teacher, layers)
    else:
        student, mapping = _fewer_layers(teacher, layers)
    source = teacher.state_dict()
    state = {}
    for key in student.state_dict():
        value = mapping(key, source)
        if value is None:
            raise ValueError(f"no teacher weight for the student's {key}")
        state[key] = value.detach().clone()
    student.load_state_dict(state)
    return settle(student).train(teacher.training)


def _fewer_layers(teacher, layers):
    cfg = teacher.config.__class__.from_dict(teacher.config.to_dict())
    for name in _N_LAYERS:
        if hasattr(cfg, name):
            setattr(cfg, name, len(layers))
    student = type(teacher)(cfg)

    def mapping(key, source):
        key = _LAYER_KEY.sub(lambda m: f"{m.group(1)}.{layers[int(m.group(2))]}.", key)
        return source.get(key)

    return student, mapping


def _distilbert_from_bert(teacher, layers):
    import transformers as tf
    c = teacher.config
    if c.hidden_act not in ("gelu", "relu"):
        raise ValueError(f"DistilBERT supports gelu or relu activations, the teacher uses {c.hidden_act}")
    cfg = tf.DistilBertConfig(
        vocab_size=c.vocab_size, max_position_embeddings=c.max_position_embeddings, n_layers=len(layers),
        n_heads=c.num_attention_heads, dim=c.hidden_size, hidden_dim=c.intermediate_size,
        dropout=c.hidden_dropout_prob, attention_dropout=c.attention_probs_dropout_prob,
        activation=c.hidden_act, initializer_range=c.initializer_range, pad_token_id=c.pad_token_id,
        sinusoidal_pos_embds=False, tie_word_embeddings=True)
    student = tf.DistilBertForMaskedLM(cfg)
    names = {"distilbert.embeddings.word_embeddings.weight": "bert.embeddings.word_embeddings.weight",
             "distilbert.embeddings.LayerNorm.weight": "bert.embeddings.LayerNorm.weight",
             "distilbert.embeddings.LayerNorm.bias": "bert.embeddings.LayerNorm.bias",
             "vocab_transform.weight": "cls.predictions.transform.dense.weight",
             "vocab_transform.bias": "cls.predictions.transform.dense.bias",
             "vocab_layer_norm.weight": "cls.predictions.transform.LayerNorm.weight",
             "vocab_layer_norm.bias": "cls.predictions.transform.LayerNorm.bias",
             "vocab_projector.weight": "bert.embeddings.word_embeddings.weight",
             "vocab_projector.bias": "cls.predictions.bias"}
    for i, j in enumerate(layers):
        for d, b in _BERT_TO_DISTILBERT:
            for p in ("weight", "bias"):
                names[f"distilbert.transformer.layer.{i}.{d}.{p}"] = f"bert.encoder.layer.{j}.{b}.{p}"

    def mapping(key, source):
        if key == "distilbert.embeddings.position_embeddings.weight":  # fold token type 0 in
            return (source["bert.embeddings.position_embeddings.weight"]
                    + source["bert.embeddings.token_type_embeddings.weight"][0])
        if key == "vocab_projector.bias" and "cls.predictions.bias" not in source:
            return source.get("cls.predictions.decoder.bias")
        return source.get(names.get(key, ""))

    return student, mapping


# --------------------------------------------------------- BERT-style models

def bert_mlm(vocab_size: int, *, layers: int = 6, hidden: int = 256, heads: int = 4,
             intermediate: int = 1024, max_len: int = 128, pad_token_id: int = 0, dropout: float = 0.1,
             positions: str = "learned"):
    """A small ``BertForMaskedLM`` (BERT-base: 12 layers, 768 hidden, 12 heads, 3072, 512 positions,
    dropout 0.1 on hidden states and attention).

    ``positions="sinusoidal"`` starts the (still trainable) position embeddings from
    :func:`sinusoidal_positions` instead of BERT's random N(0, 0.02²).
    """
    import transformers
    if positions not in ("learned", "sinusoidal"):
        raise ValueError(f"positions must be 'learned' or 'sinusoidal', not {positions!r}")
    cfg = transformers.BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=heads, intermediate_size=intermediate,
                                  max_position_embeddings=max_len, pad_token_id=pad_token_id,
                                  hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    model = settle(transformers.BertForMaskedLM(cfg))
    if positions == "sinusoidal":
        table = model.bert.embeddings.position_embeddings.weight
        with torch.no_grad():
            table.copy_(sinusoidal_positions(max_len, hidden, scale=cfg.initializer_range * 2 ** 0.5))
    return model


def sinusoidal_positions(n: int, dim: int, scale: float = 1.0) -> torch.Tensor:
    """Vaswani et al.'s table ``(n, dim)``: ``P[i, 2k] = sin(i / 10000^(2k/dim))``, ``P[i, 2k+1] = cos(...)``,
    times ``scale`` (BERT's word embeddings have std 0.02; scale 0.02·√2 gives the table the same root mean square).

    Neighbouring rows are close and ``P[i + d]`` is a fixed rotation of ``P[i]``, so attention can
    learn "look d tokens away" once for every position.
    """
    if dim % 2:
        raise ValueError(f"dim must be even for sine/cosine pairs, got {dim}")
    i = torch.arange(n, dtype=torch.float32)[:, None]                       # (n, 1)
    angle = i / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (n, dim/2)
    table = torch.stack([angle.sin(), angle.cos()], dim=-1).reshape(n, dim)  # (n, dim)
    return table * scale


def gpt2_lm(vocab_size: int, *, layers: int = 6, hidden: int = 256, heads: int = 4, max_len: int = 128,
            eos_token_id: int = 0):
    """A small ``GPT2LMHeadModel`` (GPT-2 small: 12 layers, 768 wide, 12 heads, 1,024 positions,
    50,257 tokens); the output head is tied to the token embeddings, as in GPT-2."""
    import transformers
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    cfg = transformers.GPT2Config(vocab_size=vocab_size, n_positions=max_len, n_embd=hidden, n_layer=layers,
                                  n_head=heads, bos_token_id=eos_token_id, eos_token_id=eos_token_id)
    return settle(transformers.GPT2LMHeadModel(cfg))


def to_classifier(model, num_labels: int = 2):
    """The same encoder with a fresh sequence-classification head.

    ``BertForMaskedLM`` or ``BertModel`` -> ``BertForSequenceClassification``;
    ``DistilBertForMaskedLM`` -> ``DistilBertForSequenceClassification``. The
    encoder's weights are copied; the head (and BERT's pooler if the source has
    none) start from random weights, as in ordinary fine-tuning.
    """
    import transformers as tf
    kinds = {tf.BertForMaskedLM: (tf.BertForSequenceClassification, "bert.", "bert."),
             tf.BertModel: (tf.BertForSequenceClassification, "", "bert."),
             tf.DistilBertForMaskedLM: (tf.DistilBertForSequenceClassification, "distilbert.", "distilbert.")}
    if type(model) not in kinds:
        raise ValueError(f"to_classifier supports {[k.__name__ for k in kinds]}, got {type(model).__name__}")
    cls, src_prefix, dst_prefix = kinds[type(model)]
    cfg = model.config.__class__.from_dict({**model.config.to_dict(), "num_labels": num_labels})
    clf = cls(cfg)
    state = {dst_prefix + k[len(src_prefix):]: v for k, v in model.state_dict().items()
             if k.startswith(src_prefix)}
    missing, unexpected = clf.load_state_dict(state, strict=False)
    head = ("classifier", "pre_classifier", "bert.pooler")
    if unexpected or any(not k.startswith(head) for k in missing):
        raise ValueError(f"encoder weights did not fit: missing {missing}, unexpected {unexpected}")
    return settle(clf).train(model.training)
