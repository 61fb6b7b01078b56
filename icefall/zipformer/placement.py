"""Where adapters go: ``--adapter-targets`` (presets and fnmatch patterns over module names,
as SpeechBrain's ``target_layers``), and installing or removing one adapter configuration.

An :class:`AdapterConfig` names one adapter: its ``name`` (``--adapter-name``), ``kind``
(a registered kind, :mod:`icefall.zipformer.adapter_kinds`), ``dim`` (bottleneck width or
LoRA rank) and ``targets``. Presets, by the kind's family:

- ``encoder`` (the default): output kinds fill the four slots of every encoder layer (the
  zipformer_adapter recipe); wrapper kinds wrap icefall's zipformer_lora layers (attention
  ``in_proj``, feed-forward ``in_proj``/``out_proj``);
- ``decoder``: the decoder's output; wrapper kinds: the decoder's embedding;
- ``joiner``: the outputs of ``joiner.encoder_proj`` and ``joiner.decoder_proj``; wrapper
  kinds: those layers and ``joiner.output_linear``;
- ``all_linear``: every linear layer (its output, for output kinds).

``all_linear`` leaves out ``simple_am_proj``/``simple_lm_proj``, which only the training loss
uses. Any other target is a pattern matched (``fnmatch``, case-sensitive) against the names
of the model's slots (``encoder.encoders.0.layers.1.mid_adapter``), linear layers
(``joiner.output_linear``, ``encoder.encoders.2.encoder.layers.0.feed_forward3.out_proj``) and,
for output kinds, ``decoder``; for wrapper kinds also embeddings (``decoder.embedding``).

An output adapter on a module (not a slot) is its child ``output_adapter``; the module's
class becomes a subclass of its own whose ``forward`` passes the output through the adapter
(so the module's own state-dict keys do not change). A wrapper takes its target's place.
A model holds at most one installed configuration (:func:`install_adapter`), recorded in its
``adapter_config`` attribute; :func:`uninstall_adapters` gives back the base model exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor, nn

from icefall.zipformer.adapter_kinds import (
    Adapter,
    OutputAdapter,
    adapter_kind,
    is_output_kind,
)
from icefall.zipformer.adapters import has_adapters, remove_adapters
from icefall.zipformer.layer import ADAPTER_SLOTS, Zipformer2EncoderLayer
from icefall.zipformer.lora import icefall_lora_sites
from icefall.zipformer.scaling import ActivationDropoutAndLinear

PRESETS = ("encoder", "decoder", "joiner", "all_linear")
DEFAULT_ADAPTER_NAME = "default"
LINEAR_TYPES = (nn.Linear, ActivationDropoutAndLinear)
TRAINING_ONLY = ("simple_am_proj", "simple_lm_proj")  # left out of all_linear
_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class AdapterConfig:
    """One adapter: name, kind, dim (bottleneck width or LoRA rank), targets."""

    name: str = DEFAULT_ADAPTER_NAME
    kind: str = "residual"
    dim: int = 16
    targets: tuple[str, ...] = ("encoder",)

    def __post_init__(self) -> None:
        check_adapter_name(self.name)
        if int(self.dim) < 1:
            raise ValueError(f"adapter '{self.name}': dim must be >= 1, got {self.dim}")
        if not self.targets:
            raise ValueError(f"adapter '{self.name}': no targets")

    def to_dict(self) -> dict[str, Any]:
        """Plain types, for checkpoints and adapter files (weights_only-loadable)."""
        return {"name": self.name, "kind": self.kind, "dim": int(self.dim),
                "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AdapterConfig:
        """Inverse of :meth:`to_dict`.

        Raises:
          ValueError: for a missing or malformed field.
        """
        try:
            targets = d["targets"]
            targets = parse_targets(targets) if isinstance(targets, str) else tuple(targets)
            return cls(str(d["name"]), str(d["kind"]), int(d["dim"]),
                       tuple(str(t) for t in targets))
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed adapter config {dict(d)!r}: {e}") from e

    def same_structure(self, other: AdapterConfig | None) -> bool:
        """True if ``other`` installs the same modules (names aside)."""
        return other is not None and (self.kind, self.dim, self.targets) == \
            (other.kind, other.dim, other.targets)

    def describe(self) -> str:
        return (f"adapter '{self.name}': {self.kind}, dim {self.dim}, targets "
                f"{','.join(self.targets)}")


def check_adapter_name(name: str) -> str:
    """Returns ``name`` if it can name an adapter (and a file ``adapter-<name>.pt``).

    Raises:
      ValueError: otherwise.
    """
    if not isinstance(name, str) or not _ADAPTER_NAME.match(name):
        raise ValueError(f"--adapter-name must be 1-64 letters, digits, '_', '-' or '.' "
                         f"(not starting with '.' or '-'), got '{name}'")
    return name


def parse_targets(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"encoder,joiner"`` -> ``("encoder", "joiner")`` (duplicates and blanks dropped)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in (str(i).strip() for i in items):
        if item and item not in out:
            out.append(item)
    if not out:
        raise ValueError("--adapter-targets is empty")
    return tuple(out)


def adapter_config_from_params(params: Mapping[str, Any] | object) -> AdapterConfig | None:
    """The adapter the flags ask for: ``--use-lora 1 --lora-r R`` (icefall's; rank 0 means
    none), or ``--use-adapters 1 --adapter-dim A [--adapter-kind K]``; with
    ``--adapter-targets`` and ``--adapter-name``. None when neither is on.

    Raises:
      ValueError: both on, or a negative rank.
    """
    src = params if isinstance(params, Mapping) else vars(params)
    use_adapters, use_lora = bool(src.get("use_adapters")), bool(src.get("use_lora"))
    lora_r = int(src.get("lora_r") or 0)
    if lora_r < 0:
        raise ValueError(f"--lora-r must be >= 0, got {lora_r}")
    if use_lora and lora_r == 0:  # icefall: rank 0 means no LoRA
        use_lora = False
    if use_adapters and use_lora:
        raise ValueError("--use-adapters 1 and --use-lora 1: an adapter has one kind (LoRA "
                         "is --use-lora 1 --lora-r R, or --use-adapters 1 --adapter-kind lora "
                         "--adapter-dim R)")
    if not (use_adapters or use_lora):
        return None
    name = src.get("adapter_name") or DEFAULT_ADAPTER_NAME
    targets = parse_targets(src.get("adapter_targets") or "encoder")
    if use_lora:
        return AdapterConfig(name, "lora", lora_r, targets)
    return AdapterConfig(name, str(src.get("adapter_kind") or "residual"),
                         int(src.get("adapter_dim") or 16), targets)


# ---------------------------------------------------------------------------------------
# Sites
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """A place for one adapter: ``parent.<attr>`` (a module, or an empty encoder slot)."""

    name: str
    parent: nn.Module
    attr: str
    slot: bool


def _module_site(model: nn.Module, name: str) -> Site:
    parent_name, _, attr = name.rpartition(".")
    return Site(name, model.get_submodule(parent_name) if parent_name else model, attr, False)


def _slot_sites(model: nn.Module) -> list[Site]:
    return [Site(f"{name}.{slot}", layer, slot, True)
            for name, layer in model.named_modules() if isinstance(layer, Zipformer2EncoderLayer)
            for slot in ADAPTER_SLOTS]


def _module_sites(model: nn.Module, types: tuple[type, ...],
                  exclude: Sequence[str] = ()) -> list[Site]:
    return [_module_site(model, name) for name, m in model.named_modules()
            if name and isinstance(m, types) and name not in exclude]


def _named_sites(model: nn.Module, names: Sequence[str]) -> list[Site]:
    own = dict(model.named_modules())
    return [_module_site(model, n) for n in names if n in own]


def _preset_sites(model: nn.Module, preset: str, output: bool) -> list[Site]:
    if preset == "encoder":
        if output:
            return _slot_sites(model)
        return [Site(n, owner, attr, False) for n, owner, attr in icefall_lora_sites(model)]
    if preset == "decoder":
        return _named_sites(model, ["decoder"] if output else ["decoder.embedding"])
    if preset == "joiner":
        names = ["joiner.encoder_proj", "joiner.decoder_proj"]
        return _named_sites(model, names if output else [*names, "joiner.output_linear"])
    return _module_sites(model, LINEAR_TYPES, TRAINING_ONLY)  # all_linear


def candidate_sites(model: nn.Module, output: bool) -> list[Site]:
    """Every site a pattern can name, for output kinds (slots, linear layers, the decoder)
    or wrapper kinds (linear layers, embeddings)."""
    if output:
        return _slot_sites(model) + _module_sites(model, LINEAR_TYPES) + \
            _named_sites(model, ["decoder"])
    return _module_sites(model, (*LINEAR_TYPES, nn.Embedding))


def resolve_sites(model: nn.Module, kind: str, targets: Sequence[str]) -> list[Site]:
    """The sites ``targets`` (presets and patterns) name for an adapter of ``kind``, each
    once, in the order found.

    Raises:
      ValueError: a target that names nothing (with examples of names that exist).
    """
    output = is_output_kind(adapter_kind(kind))
    found: dict[str, Site] = {}
    candidates: list[Site] | None = None
    for target in targets:
        if target in PRESETS:
            sites = _preset_sites(model, target, output)
        else:
            candidates = candidate_sites(model, output) if candidates is None else candidates
            sites = [s for s in candidates if fnmatchcase(s.name, target)]
        if not sites:
            what = ("adapter slot, linear layer or decoder" if output
                    else "linear layer or embedding")
            pool = candidate_sites(model, output) if candidates is None else candidates
            examples = ", ".join(s.name for s in pool[::max(1, len(pool) // 3)][:3])
            raise ValueError(f"--adapter-targets: '{target}' names no {what} of the model for "
                             f"a {kind} adapter (presets: {', '.join(PRESETS)}; names look "
                             f"like {examples})")
        for site in sites:
            found.setdefault(site.name, site)
    return list(found.values())


# ---------------------------------------------------------------------------------------
# Output adapters on modules
# ---------------------------------------------------------------------------------------


class _WithOutputAdapter:
    """Mixin of a module whose output passes through its ``output_adapter`` child."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.output_adapter(super().forward(*args, **kwargs))


_HOST_CLASSES: dict[type, type] = {}


def _host_class(cls: type) -> type:
    if cls not in _HOST_CLASSES:
        _HOST_CLASSES[cls] = type(f"{cls.__name__}WithOutputAdapter", (_WithOutputAdapter, cls),
                                  {"__module__": __name__})
    return _HOST_CLASSES[cls]


def attach_output_adapter(module: nn.Module, adapter: OutputAdapter) -> None:
    """Makes ``module``'s output pass through ``adapter`` (its child ``output_adapter``)."""
    if isinstance(module, _WithOutputAdapter):
        raise ValueError(f"{type(module).__name__} already has an output adapter")
    module.__class__ = _host_class(type(module))
    module.add_module("output_adapter", adapter)


def output_adapter_of(module: nn.Module) -> OutputAdapter | None:
    """The output adapter attached to ``module``, if any."""
    return module.output_adapter if isinstance(module, _WithOutputAdapter) else None


def detach_output_adapter(module: nn.Module) -> None:
    """Undoes :func:`attach_output_adapter`."""
    del module._modules["output_adapter"]
    module.__class__ = type(module).__bases__[1]


def _output_dim(module: nn.Module) -> int:
    if isinstance(module, LINEAR_TYPES):
        return int(module.weight.shape[0])
    dim = getattr(module, "decoder_dim", None)
    if dim is None:
        raise ValueError(f"cannot tell the output size of {type(module).__name__}")
    return int(dim)


def _reference(module: nn.Module) -> Tensor:
    return next(module.parameters(), torch.empty(0))


def _install_at(site: Site, cls: type[Adapter], dim: int) -> None:
    if site.slot:
        layer = site.parent
        ref = layer.norm.bias
        adapter = cls(layer.embed_dim, dim).to(device=ref.device, dtype=ref.dtype)
        setattr(layer, site.attr, adapter)
        return
    module = getattr(site.parent, site.attr)
    if is_output_kind(cls):
        ref = _reference(module)
        attach_output_adapter(module, cls(_output_dim(module), dim).to(device=ref.device,
                                                                         dtype=ref.dtype))
        return
    wrapped = cls.wrap(module, dim)
    if wrapped is None:
        raise ValueError(f"--adapter-targets: a {cls.kind} adapter cannot wrap {site.name} "
                         f"({type(module).__name__})")
    setattr(site.parent, site.attr, wrapped)


def install_adapter(model: nn.Module, config: AdapterConfig) -> int:
    """Puts fresh adapters of ``config`` at its sites (on each site's device and dtype) and
    records ``config`` as ``model.adapter_config``.

    Returns:
      The number of sites.
    Raises:
      ValueError: the model has adapters already, or a target names nothing.
    """
    if has_adapters(model):
        raise ValueError("the model has adapters already: uninstall_adapters(model) first")
    cls = adapter_kind(config.kind)
    sites = resolve_sites(model, config.kind, config.targets)
    for site in sites:
        _install_at(site, cls, int(config.dim))
    model.adapter_config = config
    return len(sites)


def installed_adapter_config(model: nn.Module) -> AdapterConfig | None:
    """The configuration :func:`install_adapter` put in ``model`` (None without one)."""
    config = getattr(model, "adapter_config", None)
    return config if isinstance(config, AdapterConfig) and has_adapters(model) else None


def uninstall_adapters(model: nn.Module) -> int:
    """Removes every adapter: slots emptied, output adapters detached, wrappers replaced by
    the modules they wrap (unmerged, with their original requires_grad). The model is then
    the base model exactly.

    Returns:
      The number of sites cleared.
    """
    removed = remove_adapters(model)
    replaced: list[str] = []
    for name, m in list(model.named_modules()):
        if any(name.startswith(p + ".") for p in replaced):
            continue
        if isinstance(m, _WithOutputAdapter):
            detach_output_adapter(m)
            removed += 1
        elif getattr(type(m), "is_adapter_wrapper", False) and name:
            site = _module_site(model, name)
            setattr(site.parent, site.attr, m.unwrap())
            replaced.append(name)
            removed += 1
    model.adapter_config = None
    return removed


# ---------------------------------------------------------------------------------------
# The configuration of a state dict written without one (older checkpoints, icefall's)
# ---------------------------------------------------------------------------------------

_SLOT_KEY = re.compile(r"^(.+\.(?:" + "|".join(ADAPTER_SLOTS) + r"))\.in_proj\.weight$")
_OUTPUT_KEY = re.compile(r"^(.+)\.output_adapter\.in_proj\.weight$")


def infer_adapter_config(state: Mapping[str, Tensor], base: nn.Module,
                         name: str = DEFAULT_ADAPTER_NAME) -> AdapterConfig | None:
    """The adapter of a state dict from its keys and shapes: residual bottlenecks (slots,
    or ``output_adapter`` of modules) or LoRA (``lora_A``/``lora_B``); None without
    adapter keys. Targets that are exactly a preset's sites are given as that preset.

    Args:
      base: the model without adapters (its sites are compared with the keys).
    Raises:
      ValueError: keys of both kinds, or bottlenecks of different widths.
    """
    residual = {m.group(1): int(v.shape[0]) for k, v in state.items()
                if (m := _SLOT_KEY.match(k) or _OUTPUT_KEY.match(k))}
    lora = {k[: -len(".lora_A")]: int(v.shape[0]) for k, v in state.items()
            if k.endswith(".lora_A")}
    lora = {(n[:-2] if n.endswith(".l") else n): r for n, r in lora.items()}
    if residual and lora:
        raise ValueError("the checkpoint holds both residual adapters and LoRA; one adapter "
                         "has one kind")
    sites, kind = (residual, "residual") if residual else (lora, "lora")
    if not sites:
        return None
    dims = sorted(set(sites.values()))
    if len(dims) != 1:
        raise ValueError(f"the checkpoint's {kind} adapters have different sizes {dims}")
    output = kind == "residual"
    for preset in PRESETS:
        if {s.name for s in _preset_sites(base, preset, output)} == set(sites):
            return AdapterConfig(name, kind, dims[0], (preset,))
    return AdapterConfig(name, kind, dims[0], tuple(sorted(sites)))
