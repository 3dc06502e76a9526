"""The zoo's nets as plain PyTorch modules, written by hand, with seeded weights and inputs.

`export.py` turns these into ONNX; names, dtypes and shapes follow `common.models.CATALOG`.
Any edit here changes `cache.fingerprint`, so cached ONNX files are rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from common.models import BERT_SEQ_LEN, CATALOG, NOOP_WIDTH, ModelSpec

# Batch of the example inputs `make_net` returns (what the exporter traces with).
EXAMPLE_BATCH = 2
# Images pushed through a net in train mode to set its BatchNorm running stats (see _calibrate_bn).
BN_CALIBRATION_BATCH = 4

# BERT-mini (Turc et al. 2019, "Well-Read Students Learn Better"): L=4, H=256, A=4.
BERT_LAYERS = 4
BERT_HIDDEN = 256
BERT_HEADS = 4
BERT_FFN = 1024
BERT_VOCAB = 30522  # bert-base-uncased WordPiece vocabulary
BERT_MAX_POSITIONS = 512
BERT_LABELS = 2
BERT_INIT_STD = 0.02  # BERT's initializer_range
BERT_LN_EPS = 1e-12
BERT_CLS_ID = 101  # [CLS] in the bert-base-uncased vocabulary
BERT_PAD_ID = 0
BERT_FIRST_WORD_ID = 999  # ids below are [PAD], [unusedN] and the special tokens
# Added to masked attention scores before softmax: exp(-1e4) is 0 in float32, and unlike
# finfo.min it cannot overflow to -inf when added to a score.
ATTENTION_MASK_BIAS = -10000.0

IMAGENET_CLASSES = 1000


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling: 1x28x28 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(
                1, 6, kernel_size=5, padding=2
            ),  # padding makes 28x28 act as the paper's 32x32
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection, residual if it fits."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = cin * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6()]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6()]
        layers += _conv_bn(hidden, cout, 1)  # linear bottleneck: no activation
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018), width multiplier 1.0: 3x224x224 -> 1000."""

    # (expansion t, output channels c, repeats n, first stride s), the paper's Table 2
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        cin = 32
        layers: list[nn.Module] = [*_conv_bn(3, cin, 3, stride=2), nn.ReLU6()]
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [*_conv_bn(cin, 1280, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, IMAGENET_CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x).mean(dim=(2, 3))
        return self.classifier(x)  # type: ignore[no-any-return]


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convs."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(cin, width, 3, stride), nn.ReLU(), *_conv_bn(width, width, 3)
        )
        self.shortcut = _shortcut(cin, width * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """ResNet-50 block: 1x1 reduce, 3x3 (with the stride, as in ResNet v1.5), 1x1 expand x4."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(cin, width, 1), nn.ReLU(),
            *_conv_bn(width, width, 3, stride), nn.ReLU(),
            *_conv_bn(width, width * self.expansion, 1),
        )  # fmt: skip
        self.shortcut = _shortcut(cin, width * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(*_conv_bn(cin, cout, 1, stride))


class ResNet(nn.Module):
    """ResNet (He et al. 2015) for 3x224x224 -> 1000."""

    def __init__(self, block: type[BasicBlock | Bottleneck], repeats: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(3, 64, 7, stride=2), nn.ReLU()]
        layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        cin = 64
        for stage, n in enumerate(repeats):
            width = 64 * 2**stage
            for i in range(n):
                layers.append(block(cin, width, 2 if i == 0 and stage > 0 else 1))
                cin = width * block.expansion
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, IMAGENET_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))  # type: ignore[no-any-return]


class BertLayer(nn.Module):
    """One post-LN transformer encoder layer, as in the original BERT."""

    def __init__(self) -> None:
        super().__init__()
        self.head_dim = BERT_HIDDEN // BERT_HEADS
        self.query = nn.Linear(BERT_HIDDEN, BERT_HIDDEN)
        self.key = nn.Linear(BERT_HIDDEN, BERT_HIDDEN)
        self.value = nn.Linear(BERT_HIDDEN, BERT_HIDDEN)
        self.attn_out = nn.Linear(BERT_HIDDEN, BERT_HIDDEN)
        self.attn_norm = nn.LayerNorm(BERT_HIDDEN, eps=BERT_LN_EPS)
        self.ffn = nn.Sequential(
            nn.Linear(BERT_HIDDEN, BERT_FFN), nn.GELU(), nn.Linear(BERT_FFN, BERT_HIDDEN)
        )
        self.ffn_norm = nn.LayerNorm(BERT_HIDDEN, eps=BERT_LN_EPS)

    def forward(self, x: Tensor, mask_bias: Tensor) -> Tensor:
        # Reshape with -1 for the sequence so only the batch size is read from the input, which
        # the TorchScript exporter then keeps symbolic.
        batch = x.size(0)
        q, k, v = (
            t.view(batch, -1, BERT_HEADS, self.head_dim).transpose(1, 2)
            for t in (self.query(x), self.key(x), self.value(x))
        )
        scores = q @ k.transpose(-1, -2) / self.head_dim**0.5 + mask_bias
        context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, -1, BERT_HIDDEN)
        x = self.attn_norm(x + self.attn_out(context))
        return self.ffn_norm(x + self.ffn(x))  # type: ignore[no-any-return]


class BertMini(nn.Module):
    """BERT-mini encoder with a pooler and a 2-way classifier on the [CLS] token."""

    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(BERT_VOCAB, BERT_HIDDEN)
        self.position_embeddings = nn.Embedding(BERT_MAX_POSITIONS, BERT_HIDDEN)
        # Only segment 0 is ever used (there is no token_type_ids input), but we keep BERT's table.
        self.token_type_embeddings = nn.Embedding(2, BERT_HIDDEN)
        self.embed_norm = nn.LayerNorm(BERT_HIDDEN, eps=BERT_LN_EPS)
        self.layers = nn.ModuleList(BertLayer() for _ in range(BERT_LAYERS))
        self.pooler = nn.Linear(BERT_HIDDEN, BERT_HIDDEN)
        self.classifier = nn.Linear(BERT_HIDDEN, BERT_LABELS)
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=BERT_INIT_STD)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        seq_len = input_ids.size(1)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings.weight[:seq_len]
            + self.token_type_embeddings.weight[0]
        )
        x = self.embed_norm(x)
        # [B, S] of 1/0 -> [B, 1, 1, S] additive bias: 0 where attended, large negative on padding.
        mask_bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * ATTENTION_MASK_BIAS
        for layer in self.layers:
            x = layer(x, mask_bias)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return self.classifier(pooled)  # type: ignore[no-any-return]


class Noop(nn.Module):
    """Identity on [B, 16] floats, for measuring serving overhead."""

    def forward(self, x: Tensor) -> Tensor:
        # A bare `return x` exports a graph whose output *is* its input (one name for both);
        # clone() becomes an ONNX Identity node, so "input" and "output" are distinct and the
        # values pass through bit for bit.
        return x.clone()


NETS: dict[str, Callable[[], nn.Module]] = {
    "lenet": LeNet5,
    "mobilenet_v2": MobileNetV2,
    "resnet18": lambda: ResNet(BasicBlock, (2, 2, 2, 2)),
    "resnet50": lambda: ResNet(Bottleneck, (3, 4, 6, 3)),
    "bert_mini": BertMini,
    "noop": Noop,
}
assert set(NETS) == set(CATALOG), "nets.NETS and common.models.CATALOG must list the same models"


def example_inputs(name: str, batch: int, seed: int) -> tuple[Tensor, ...]:
    """Seeded inputs for `name` in catalog order: images ~ N(0, 1); BERT gets padded sentences."""
    gen = torch.Generator().manual_seed(seed)
    if name == "bert_mini":
        # Each row: [CLS] + random tokens, then padding from a random length in [S/2, S].
        lengths = torch.randint(BERT_SEQ_LEN // 2, BERT_SEQ_LEN + 1, (batch, 1), generator=gen)
        mask = (torch.arange(BERT_SEQ_LEN)[None, :] < lengths).to(torch.int64)
        ids = torch.randint(BERT_FIRST_WORD_ID, BERT_VOCAB, (batch, BERT_SEQ_LEN), generator=gen)
        ids[:, 0] = BERT_CLS_ID
        return ids * mask + BERT_PAD_ID * (1 - mask), mask
    if name == "noop":
        return (torch.randn(batch, NOOP_WIDTH, generator=gen),)
    spec = _spec_or_raise(name)
    return tuple(torch.randn(batch, *s.item_shape, generator=gen) for s in spec.inputs)


def make_net(name: str, seed: int) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """The net `name` in eval mode with weights drawn from `seed`, and example inputs at batch 2."""
    _spec_or_raise(name)
    torch.manual_seed(seed)
    net = NETS[name]()
    if any(isinstance(m, nn.BatchNorm2d) for m in net.modules()):
        _calibrate_bn(net, example_inputs(name, BN_CALIBRATION_BATCH, seed + 1), seed)
    net.eval()
    return net, example_inputs(name, EXAMPLE_BATCH, seed)


def _calibrate_bn(net: nn.Module, calibration: tuple[Tensor, ...], seed: int) -> None:
    """Give BatchNorm layers plausible, non-trivial affine params and running stats.

    Fresh BN layers have mean 0 / var 1, so in eval mode they pass activations through unscaled
    and a deep random ResNet's logits blow up to ~1e5 or collapse to one value. Instead we
    (1) draw gamma/beta around 1/0, (2) run one batch in train mode so each layer's running
    stats are the real ones (momentum=None: a plain average), then (3) jitter those stats a
    few percent so the exported graph cannot be folded into an exact normalisation.
    """
    gen = torch.Generator().manual_seed(seed + 2)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.empty_like(bn.weight).uniform_(0.75, 1.25, generator=gen))
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen) * 0.1)
            bn.reset_running_stats()
            bn.momentum = None
        net.train()
        net(*calibration)
        for bn in bns:
            assert bn.running_mean is not None and bn.running_var is not None
            std = bn.running_var.sqrt()
            bn.running_mean.add_(torch.randn(bn.running_mean.shape, generator=gen) * 0.05 * std)
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.9, 1.1, generator=gen))
            bn.momentum = 0.1  # restore the default so nothing downstream sees a surprise
    net.eval()


def _spec_or_raise(name: str) -> ModelSpec:
    spec = CATALOG.get(name)
    if spec is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(CATALOG))}")
    return spec
