"""LoRA (Hu et al., 2021) as icefall's ``zipformer_lora`` recipe has it: the ``lora`` kind.

A LoRA layer is a linear layer ``y = x W^T + b`` plus a trainable low-rank update
``x A^T B^T * alpha / r`` with ``lora_A: (r, I)`` (Kaiming-uniform, a = sqrt(5), as
``nn.Linear`` initialises its weight), ``lora_B: (O, r)`` (zeros, so a fresh layer computes
the base layer exactly) and ``alpha = 4``. In eval mode the update is merged into the weight
(``W + B @ A * alpha / r``), in train mode it is taken out again, as icefall's layer does on
``train()``/``eval()``. Unlike icefall's, merging keeps the unmerged weight tensor aside
(a non-persistent buffer, so it follows ``.to()``) and unmerging puts that very tensor back:
the base weights come back bit for bit, and the state dict always holds them, so a
checkpoint written in either mode loads into a fresh model. The price is a second copy of
the wrapped weights while merged (at decoding). :func:`merged_state_dict` gives the base
model's layout with LoRA folded in (for export). A switched-off layer (``enabled = False``)
is unmerged and computes the base layer exactly.

:func:`add_lora` puts LoRA on the linear layers icefall's recipe puts it on
(:func:`icefall_lora_sites`): ``self_attn_weights.in_proj``, ``self_attn1.in_proj``,
``self_attn2.in_proj`` and each feed-forward module's ``in_proj`` and ``out_proj`` (the latter
as ``out_proj.l``, whose weight and bias are ``out_proj.weight``/``out_proj.bias``, so the
state dict lists both names). Placed by ``--adapter-targets`` (:mod:`icefall.zipformer.placement`)
LoRA also wraps other linear layers and embeddings (:class:`LoRAEmbedding`, the decoder's).
LoRA layers are found by type (:class:`LoRALayer`), never by name.

Dimension legend: I = in_features, O = out_features, V = embeddings, D = embedding_dim,
r = LoRA rank, ``...`` = any leading dims (e.g. (T, N) in the encoder).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icefall.zipformer.adapter_kinds import WrapperAdapter, register_adapter_kind
from icefall.zipformer.attention import RelPositionMultiheadAttentionWeights, SelfAttention
from icefall.zipformer.layer import FeedforwardModule
from icefall.zipformer.scaling import (
    ActivationDropoutAndLinear,
    Dropout2,
    Dropout3,
    SwooshL,
    SwooshR,
)

LORA_ALPHA = 4.0  # icefall's zipformer_lora: lora_alpha=4 in every LoRA layer


def _autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """A context with autocast off on ``device`` (nothing to switch off where autocast
    does not exist, e.g. on the meta device)."""
    available = getattr(torch.amp, "is_autocast_available",
                        lambda t: t in ("cpu", "cuda"))
    if available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class LoRALayer(WrapperAdapter):
    """What LoRA layers share: rank, scaling, merging and the state-dict rules. A
    subclass is also the module type it wraps (``nn.Linear``, ``nn.Embedding``), shares
    that module's ``weight`` (frozen while wrapped) and defines :meth:`delta_weight`.
    """

    kind: ClassVar[str | None] = "lora"
    uses_adapter_min_rms: ClassVar[bool] = False  # icefall's default param_min_rms

    def _init_lora(self, original: nn.Module, r: int, alpha: float, a_shape: tuple[int, int],
                   b_shape: tuple[int, int]) -> None:
        """Sets up the update (after ``nn.Module.__init__`` and ``self.weight``)."""
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.__dict__["_original"] = original  # hidden: not a submodule
        self._weight_requires_grad = original.weight.requires_grad
        self.r, self.lora_alpha, self.scaling = r, alpha, alpha / r
        kw = {"device": self.weight.device, "dtype": self.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(a_shape, **kw))
        self.lora_B = nn.Parameter(torch.zeros(b_shape, **kw))
        self.register_buffer("_unmerged_weight", None, persistent=False)
        self.weight.requires_grad_(False)
        self.merged = False
        self._enabled = True

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)
        if not self._enabled:
            self.unmerge()
        elif not self.training:
            self.merge()

    @property
    def plain_forward(self) -> bool:
        """True when forward is the wrapped module's own computation on ``self.weight``
        (merged, or switched off): the low-rank term is then skipped."""
        return self.merged or not self._enabled

    def adapter_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [("lora_A", self.lora_A), ("lora_B", self.lora_B)]

    def delta_weight(self) -> Tensor:
        """The update of ``self.weight`` (its shape), in at least float32, cast back."""
        raise NotImplementedError

    def merge(self) -> bool:
        """Puts W + update in place of W (kept aside); returns True if it was unmerged.
        A switched-off layer is never merged."""
        if self.merged or not self._enabled:
            return False
        with torch.inference_mode(False), torch.no_grad():
            base = self.weight.data
            merged = base + self.delta_weight()
            self.weight.data = merged
        self._unmerged_weight = base
        self.merged = True
        return True

    def unmerge(self) -> bool:
        """Puts the original W back (the same tensor); returns True if it was merged."""
        if not self.merged:
            return False
        self.weight.data = self._unmerged_weight
        self._unmerged_weight = None
        self.merged = False
        return True

    def unmerged_weight(self) -> Tensor:
        """The base weight W, detached, whether merged or not (exactly as unmerge leaves it)."""
        return (self._unmerged_weight if self.merged else self.weight).detach()

    def merged_weight(self) -> Tensor:
        """W + update, detached, whether merged or not (as merge leaves it)."""
        w = self.weight.detach()
        return w if self.merged else w + self.delta_weight()

    def train(self, mode: bool = True) -> LoRALayer:
        """Train mode unmerges the update, eval mode merges it (icefall's behaviour)."""
        nn.Module.train(self, mode)
        if mode or not self._enabled:
            self.unmerge()
        else:
            self.merge()
        return self

    def unwrap(self) -> nn.Module:
        """The wrapped module, unmerged, with the weight's original requires_grad."""
        self.unmerge()
        original = self.__dict__["_original"]
        original.weight.requires_grad_(self._weight_requires_grad)
        original.train(self.training)
        return original

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                            keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.merged:
            w = self._unmerged_weight
            destination[prefix + "weight"] = w if keep_vars else w.detach()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any) -> None:
        remerge = self.unmerge()  # load into the unmerged weight, then merge the new update
        super()._load_from_state_dict(state_dict, prefix, *args)
        if remerge:
            self.merge()


@register_adapter_kind("lora")
class LoRALinear(nn.Linear, LoRALayer):
    """A linear layer with a low-rank update; wraps an existing ``nn.Linear`` and shares
    its ``weight`` (O, I) and ``bias`` (O,) Parameters.

    As in icefall, the base weight gets ``requires_grad=False`` (the bias does not). While
    merged, the state dict holds the unmerged weight, and loading writes the unmerged weight
    and then merges the loaded update. ``lora_A`` is (r, I), ``lora_B`` (O, r).

    Args:
      base: the layer to wrap; r: the rank (>= 1); alpha: the update is scaled by alpha / r;
      dropout: dropout on the update's input (icefall: 0).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float = LORA_ALPHA,
                 dropout: float = 0.0) -> None:
        nn.Module.__init__(self)  # not nn.Linear.__init__: the weights are base's
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self._init_lora(base, r, alpha, (r, self.in_features), (self.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0.0 else nn.Identity()
        self.train(base.training)

    @classmethod
    def wrap(cls, module: nn.Module, adapter_dim: int) -> nn.Module | None:
        """LoRA of rank ``adapter_dim`` around a linear layer (an ``ActivationDropoutAndLinear``
        as icefall's ``out_proj.l``) or an embedding; None for anything else."""
        if isinstance(module, (LoRALayer, LoRAActivationDropoutAndLinear)):
            return None
        if isinstance(module, ActivationDropoutAndLinear):
            return LoRAActivationDropoutAndLinear(module, adapter_dim)
        if isinstance(module, nn.Linear):
            return LoRALinear(module, adapter_dim)
        if isinstance(module, nn.Embedding):
            return LoRAEmbedding(module, adapter_dim)
        return None

    def delta_weight(self) -> Tensor:
        """B @ A * alpha / r: (O, I) in the weight's dtype, computed in at least float32."""
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        with torch.no_grad(), _autocast_off(self.weight.device):
            delta = (self.lora_B.to(dtype) @ self.lora_A.to(dtype)) * self.scaling  # (O, I)
        return delta.to(self.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., I) -> (..., O)."""
        out = F.linear(x, self.weight, self.bias)
        if self.plain_forward:
            return out
        delta = self.lora_dropout(x) @ self.lora_A.transpose(0, 1)  # (..., r)
        delta = delta @ self.lora_B.transpose(0, 1)  # (..., O)
        return out + delta * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, lora_alpha={self.lora_alpha}"


class LoRAEmbedding(nn.Embedding, LoRALayer):
    """An embedding with a low-rank update (the decoder's, with ``--adapter-targets
    decoder``): the table (V, D) is a linear map from one-hot ids, so ``lora_A`` is (r, V),
    ``lora_B`` (D, r) and the update of the table is ``(B @ A)^T * alpha / r``. ``lora_A``
    starts N(0, 1), ``lora_B`` at zero. Shares ``weight`` with the wrapped embedding.

    Args:
      base: the embedding to wrap; r: the rank (>= 1); alpha: the update's scale numerator.
    """

    def __init__(self, base: nn.Embedding, r: int, alpha: float = LORA_ALPHA) -> None:
        nn.Module.__init__(self)
        for name in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm",
                     "norm_type", "scale_grad_by_freq", "sparse"):
            setattr(self, name, getattr(base, name))
        self.weight = base.weight
        self._init_lora(base, r, alpha, (r, self.num_embeddings), (self.embedding_dim, r))
        nn.init.normal_(self.lora_A)
        self.train(base.training)

    def delta_weight(self) -> Tensor:
        """(B @ A)^T * alpha / r: (V, D) in the weight's dtype, computed in >= float32."""
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        with torch.no_grad(), _autocast_off(self.weight.device):
            delta = (self.lora_B.to(dtype) @ self.lora_A.to(dtype)).t() * self.scaling
        return delta.to(self.weight.dtype)  # (V, D)

    def forward(self, x: Tensor) -> Tensor:
        """x: (...) ids -> (..., D)."""
        out = F.embedding(x, self.weight, self.padding_idx, self.max_norm, self.norm_type,
                          self.scale_grad_by_freq, self.sparse)
        if self.plain_forward:
            return out
        delta = F.embedding(x, self.lora_A.t()) @ self.lora_B.t()  # (..., r) -> (..., D)
        return out + delta * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, lora_alpha={self.lora_alpha}"


class LoRAActivationDropoutAndLinear(nn.Module):
    """Activation -> dropout -> :class:`LoRALinear` ``l``: icefall's
    ``ActivationDropoutAndLinear_lora``, built from an :class:`ActivationDropoutAndLinear`.

    ``weight`` (O, I) and ``bias`` (O,) are the same Parameters as ``l.weight``/``l.bias``.

    Args:
      base: the layer to wrap; r, alpha, dropout: as :class:`LoRALinear`.
    """

    is_adapter_wrapper: ClassVar[bool] = True

    def __init__(self, base: ActivationDropoutAndLinear, r: int, alpha: float = LORA_ALPHA,
                 dropout: float = 0.0) -> None:
        super().__init__()
        out_channels, in_channels = base.weight.shape
        linear = nn.Linear(in_channels, out_channels, bias=base.bias is not None,
                           device="meta")
        linear.weight = base.weight
        linear.register_parameter("bias", base.bias)
        linear.train(base.training)
        requires_grad = base.weight.requires_grad
        self.l = LoRALinear(linear, r, alpha, dropout)  # icefall's name
        self.__dict__["_original"] = base  # hidden: not a submodule
        self._weight_requires_grad = requires_grad
        self.weight = self.l.weight
        self.register_parameter("bias", self.l.bias)
        self.activation = SwooshL() if base.activation == "SwooshL" else SwooshR()
        shared = base.dropout_shared_dim
        self.dropout = (Dropout2(base.dropout_p) if shared is None
                        else Dropout3(base.dropout_p, shared))
        self.train(base.training)

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., I) -> (..., O)."""
        return self.l(self.dropout(self.activation(x)))

    def unwrap(self) -> ActivationDropoutAndLinear:
        """The wrapped layer, unmerged, with the weight's original requires_grad."""
        self.l.unmerge()
        original = self.__dict__["_original"]
        original.weight.requires_grad_(self._weight_requires_grad)
        original.train(self.training)
        return original

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                            keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.l.merged:
            destination[prefix + "weight"] = self.l.unmerged_weight()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str,
                              *args: Any) -> None:
        # A base checkpoint has out_proj.weight/bias only: they are l's too. So ``l``, which
        # loads after this module, always writes the shared weight again (unmerged first,
        # merged after, if it was merged).
        for name in ("weight", "bias"):
            if prefix + name in state_dict and prefix + "l." + name not in state_dict:
                state_dict[prefix + "l." + name] = state_dict[prefix + name]
        super()._load_from_state_dict(state_dict, prefix, *args)


# (owner type, attribute): where icefall's zipformer_lora puts LoRA.
_ICEFALL_TARGETS: tuple[tuple[type[nn.Module], str], ...] = (
    (RelPositionMultiheadAttentionWeights, "in_proj"),
    (SelfAttention, "in_proj"),
    (FeedforwardModule, "in_proj"),
    (FeedforwardModule, "out_proj"),
)


def icefall_lora_sites(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(qualified name, owner, attribute) of every layer icefall's zipformer_lora wraps in
    LoRA, in module order (wrapped ones included)."""
    sites = []
    for name, owner in model.named_modules():
        for owner_type, attr in _ICEFALL_TARGETS:
            if isinstance(owner, owner_type) and getattr(owner, attr, None) is not None:
                sites.append((f"{name}.{attr}" if name else attr, owner, attr))
    return sites


def add_lora(model: nn.Module, r: int, alpha: float = LORA_ALPHA, dropout: float = 0.0) -> int:
    """Wraps every LoRA target of ``model`` (:func:`icefall_lora_sites`) in a fresh LoRA
    layer of rank ``r`` on the target's device and dtype; targets already wrapped are
    left alone. The model's state-dict key order is kept (wrappers replace in place).

    Returns:
      The number of layers wrapped.

    Raises:
      ValueError: if r < 1.
    """
    if r < 1:
        raise ValueError(f"--lora-r must be >= 1 to add LoRA, got {r}")
    added = 0
    for _, owner, attr in icefall_lora_sites(model):
        child = getattr(owner, attr)
        if isinstance(child, (LoRALayer, LoRAActivationDropoutAndLinear)):
            continue
        if isinstance(child, ActivationDropoutAndLinear):
            setattr(owner, attr, LoRAActivationDropoutAndLinear(child, r, alpha, dropout))
        else:
            setattr(owner, attr, LoRALinear(child, r, alpha, dropout))
        added += 1
    return added


def lora_modules(model: nn.Module) -> list[LoRALayer]:
    """Every :class:`LoRALayer` (linear or embedding) in model, in module order."""
    return [m for m in model.modules() if isinstance(m, LoRALayer)]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every ``lora_A`` and ``lora_B``, in model.parameters() order."""
    ids = {id(p) for m in lora_modules(model) for p in (m.lora_A, m.lora_B)}
    return [p for p in model.parameters() if id(p) in ids]


def merge_lora(model: nn.Module) -> int:
    """Merges every LoRA update into its weight; returns how many were unmerged."""
    return sum(m.merge() for m in lora_modules(model))


def unmerge_lora(model: nn.Module) -> int:
    """Takes every LoRA update out of its weight; returns how many were merged."""
    return sum(m.unmerge() for m in lora_modules(model))


@contextlib.contextmanager
def lora_unmerged(model: nn.Module) -> Iterator[None]:
    """Context in which every LoRA layer is unmerged (e.g. to write lora_A/lora_B
    directly); the layers merged on entry are merged again, with the new values, on exit.
    """
    merged = [m for m in lora_modules(model) if m.unmerge()]
    try:
        yield
    finally:
        for m in merged:
            m.merge()


def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict of the model without LoRA, with each enabled update merged into its
    weight: what loads (strictly) into the base model to compute this model's function, as
    icefall's zipformer_lora export hands its merged weights to a model built with
    --use-lora 0.
    """
    sd = model.state_dict()
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, LoRAActivationDropoutAndLinear):
            sd[prefix + "weight"] = _effective_weight(m.l)
            for key in [k for k in sd if k.startswith(prefix + "l.")]:
                del sd[key]
        elif isinstance(m, LoRALayer) and prefix + "lora_A" in sd:
            sd[prefix + "weight"] = _effective_weight(m)
            del sd[prefix + "lora_A"], sd[prefix + "lora_B"]
    return sd


def _effective_weight(m: LoRALayer) -> Tensor:
    return m.merged_weight() if m.enabled else m.unmerged_weight()


def lora_weight_aliases(model: nn.Module) -> dict[str, str]:
    """{alias: key} for the state-dict keys that name the same tensor as an earlier key
    (``....out_proj.l.weight`` -> ``....out_proj.weight``, and the biases). A base
    checkpoint has only the keys; ``load_state_dict`` fills each alias from its key, so a
    check of a base checkpoint against a LoRA model should allow these, and lora_A/lora_B,
    to be missing.
    """
    aliases = {}
    for name, m in model.named_modules():
        if isinstance(m, LoRAActivationDropoutAndLinear):
            prefix = f"{name}." if name else ""
            names = ("weight",) if m.bias is None else ("weight", "bias")
            aliases.update({f"{prefix}l.{n}": prefix + n for n in names})
    return aliases
