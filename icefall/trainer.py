"""Training shared by both recipes: ``zipformer/train.py`` (from scratch, or full
fine-tuning) and ``zipformer_adapter/train.py`` (adapter fine-tuning).

The loop is icefall's: pruned RNN-T loss with the simple loss weighted down and the
pruned loss up over ``--warm-step`` batches, ScaledAdam + Eden, a running model average,
``epoch-N.pt`` and ``checkpoint-B.pt`` files, icefall-style progress lines and
TensorBoard scalars. Differences that an icefall user may notice:

- checkpoints hold plain types only (``torch.load(..., weights_only=True)``) and are
  written atomically; they also keep the RNG state, so ``--start-batch`` resumes exactly;
- a batch whose loss is not finite is skipped and counted instead of stopping training;
- validation also runs at the end of every epoch;
- ``--train-cuts``/``--valid-cuts``/``--mux-cuts`` name the manifests explicitly.

Flags and ``main`` are in :mod:`icefall.cli.train`; everything here takes ``params``
(an AttributeDict of the flag values, icefall's style).
"""

from __future__ import annotations

import copy
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP  # noqa: N817 (PyTorch idiom)
from torch.utils.data import DataLoader

from icefall.adapter_files import (
    adapter_fields,
    base_checkpoint_of,
    base_fingerprint,
    is_adapter_only,
)
from icefall.amp import (
    GradScaleGuard,
    Precision,
    check_precision_flags,
    choose_precision,
    make_grad_scaler,
)
from icefall.checkpoint import (
    check_state_dict_fits,
    load_checkpoint_file,
    model_state_from,
    remove_checkpoints,
    save_checkpoint,
    update_averaged_model,
)
from icefall.cpu_allocator import keep_freed_cpu_memory
from icefall.data import AsrDataModule, encode, filter_cuts, load_bpe_model, load_cuts
from icefall.data.manifests import (
    count_cuts,
    find_manifest,
    manifest_list,
    named_sets_text,
    parse_named_sets,
)
from icefall.data.tokenizer import set_model_dims_from_bpe
from icefall.dist import (
    cleanup_dist,
    configure_threads,
    default_device,
    launched_by_torchrun,
    max_checksum_difference_across_ranks,
    setup_dist,
)
from icefall.errors import TrainingStoppedError
from icefall.files import atomic_copy, remove_stale_temporaries
from icefall.finetune import (
    choose_checkpoint_contents,
    finetune_state,
    load_adapter_run_base,
    load_finetune_checkpoint,
    setup_trainable_parameters,
    trains_adapters,
)
from icefall.hooks import register_inf_check_hooks
from icefall.metrics import MetricsTracker
from icefall.model_config import (
    ARCHITECTURE_KEYS,
    MODEL_KEYS,
    apply_model_config,
    check_fits_flags,
    read_model_config,
    stored_model_config,
)
from icefall.optim import Eden, ScaledAdam, get_parameter_groups_with_lrs
from icefall.preflight import (
    check_exp_dir,
    check_port_free,
    check_resume_data,
    check_training_manifests,
    check_unk,
    fit_schedule,
    log_unk,
    training_data_stats,
)
from icefall.utils import AttributeDict, setup_logger
from icefall.zipformer import (
    adapter_config_from_params,
    adapter_parameter_names,
    adapter_parameters,
    adapter_state_dict,
    get_model,
    installed_adapter_config,
    load_adapter_state_dict,
    lora_modules,
    model_config,
    set_adapter_training,
)
from icefall.zipformer.scaling import (
    BatchCounter,
    HostFeedback,
    Whiten,
    give_host_feedback,
    take_host_feedback,
)


def get_params() -> AttributeDict:
    """Training state that is not a flag; saved in every checkpoint."""
    return AttributeDict(best_train_loss=float("inf"), best_valid_loss=float("inf"),
                         best_train_epoch=-1, best_valid_epoch=-1, batch_idx_train=0,
                         cur_epoch=0, num_bad_batches=0, num_overflow_batches=0,
                         subsampling_factor=4, batch_count_offset=None)


def plain_params(params: AttributeDict) -> dict[str, Any]:
    """params as plain types (Paths become str) for a weights-only checkpoint."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, Path):
            v = str(v)
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
    out["model"] = model_config(params)
    return out


# ---------------------------------------------------------------------------------------
# Random state (for exact resume)
# ---------------------------------------------------------------------------------------


def fix_random_seed(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def use_deterministic_algorithms() -> None:
    """--deterministic: PyTorch's deterministic kernels (a warning names any op that has
    none), and the cuBLAS workspace setting they need."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def get_rng_state() -> dict[str, Any]:
    """Every generator's state as plain types and CPU tensors.

    Of CUDA, only the current device's generator is saved: every rank seeds its own device
    identically (:func:`fix_random_seed`), so one state restores any number of GPUs.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys).copy()), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`get_rng_state` saved, on this rank's current CUDA device.

    A state saved on a machine with GPUs restores on one without (CUDA's part is then
    unused), and older checkpoints holding one state per GPU restore the first.
    """
    random.setstate(_as_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):
            cuda = cuda[0]
        torch.cuda.set_rng_state(cuda)


def _as_tuples(x: Any) -> Any:
    return tuple(_as_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def whiten_state(model: nn.Module) -> dict[str, float]:
    """Per-module probabilities that Whiten adapts during training (not in state_dict)."""
    return {n: float(m.prob) for n, m in model.named_modules() if isinstance(m, Whiten)}


def set_whiten_state(model: nn.Module, state: dict[str, float]) -> None:
    for n, m in model.named_modules():
        if isinstance(m, Whiten) and n in state:
            m.prob = state[n]


# ---------------------------------------------------------------------------------------
# Model, optimizer, resume
# ---------------------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model


def resume_filename(params: AttributeDict) -> Path | None:
    """The checkpoint --start-batch / --start-epoch resume from, if any."""
    if params.start_batch > 0:
        return Path(params.exp_dir) / f"checkpoint-{params.start_batch}.pt"
    if params.start_epoch > 1:
        return Path(params.exp_dir) / f"epoch-{params.start_epoch - 1}.pt"
    return None


def build_model(params: AttributeDict) -> nn.Module:
    """get_model(params), initialised from --finetune-ckpt when fine-tuning (and not
    resuming), with only the adapters trainable when --use-adapters."""
    model = get_model(params)
    if params.do_finetune and resume_filename(params) is None:
        if params.finetune_ckpt is None:
            raise ValueError("--do-finetune 1 needs --finetune-ckpt")
        load_finetune_checkpoint(model, params.finetune_ckpt, params.init_modules,
                                 allow_unsafe=params.trust_checkpoint)
    setup_trainable_parameters(model, trains_adapters(params))
    return model


_DEFAULT_MIN_RMS = 1e-5  # ScaledAdam's param_min_rms


def make_optimizer(model: nn.Module, params: AttributeDict) -> tuple[ScaledAdam, Eden]:
    """ScaledAdam over the trainable parameters only, and the Eden schedule.

    ScaledAdam sizes each update by the parameter's rms, floored at ``param_min_rms``
    (1e-5 by default). Bottleneck adapters start with ``out_proj`` at zero, where that floor
    would leave them almost still, so their parameters form groups with the floor
    ``--adapter-min-rms``. LoRA keeps the default floor, as icefall's zipformer_lora does,
    unless ``--lora-min-rms`` sets another (then its parameters form groups of their own).
    """
    floors = {id(p): params.adapter_min_rms
              for p in adapter_parameters(unwrap(model), min_rms_kinds_only=True)}
    lora_min_rms = params.get("lora_min_rms", _DEFAULT_MIN_RMS)
    if lora_min_rms != _DEFAULT_MIN_RMS:
        floors.update({id(p): lora_min_rms for p in adapter_parameters(unwrap(model))
                       if id(p) not in floors})
    groups = []
    for g in get_parameter_groups_with_lrs(model, lr=params.base_lr, include_names=True):
        named = [(n, p) for n, p in g["named_params"] if p.requires_grad]
        for floor in (None, *sorted(set(floors.values()))):
            part = [(n, p) for n, p in named if floors.get(id(p)) == floor]
            if part:
                groups.append({"named_params": part, "lr": g["lr"],
                               **({} if floor is None else {"param_min_rms": floor})})
    optimizer = ScaledAdam(groups, lr=params.base_lr, clipping_scale=2.0,
                           host_clipping_checks=False)  # no device read per step
    scheduler = Eden(optimizer, params.lr_batches, params.lr_epochs,
                     warmup_batches=params.lr_warmup_batches)
    return optimizer, scheduler


def read_resume_checkpoint(params: AttributeDict) -> dict[str, Any] | None:
    """The checkpoint --start-batch / --start-epoch resume from (None for a new run)."""
    filename = resume_filename(params)
    if filename is None:
        return None
    return load_checkpoint_file(filename, allow_unsafe=params.trust_checkpoint)


def load_resume_checkpoint(params: AttributeDict, model: nn.Module,
                           model_avg: nn.Module | None,
                           data: dict[str, Any] | None) -> dict[str, Any] | None:
    """Loads model (and model_avg) from the resume checkpoint ``data`` and restores the
    counters in params; returns it for the optimizer, scheduler, sampler and RNG. An
    adapter-only checkpoint loads the adapters (its base is loaded already:
    :func:`icefall.finetune.load_adapter_run_base`)."""
    filename = resume_filename(params)
    if data is None:
        return None
    state = model_state_from(data, filename)
    if is_adapter_only(data):
        load_adapter_state_dict(model, state)
        if model_avg is not None and data.get("model_avg") is not None:
            load_adapter_state_dict(model_avg, data["model_avg"])
    else:
        check_state_dict_fits(model, state, filename)
        model.load_state_dict(state)
        if model_avg is not None and data.get("model_avg") is not None:
            model_avg.load_state_dict(data["model_avg"])
    saved = data.get("params") or {}
    for k in ("best_train_epoch", "best_valid_epoch", "batch_idx_train", "best_train_loss",
              "best_valid_loss", "num_bad_batches"):
        if k in saved:
            params[k] = saved[k]
    params.batch_count_offset = saved_batch_count_offset(params, saved)
    if params.start_batch > 0 and "cur_epoch" in saved:
        params.start_epoch = saved["cur_epoch"]
    set_whiten_state(model, data.get("whiten_state") or {})
    logging.info(f"Resuming from {filename} (batch {params.batch_idx_train})")
    return data


def save_training_checkpoint(filename: Path, params: AttributeDict, model: nn.Module,
                             model_avg: nn.Module | None, optimizer, scheduler, scaler,
                             sampler) -> None:
    """Writes everything needed to resume exactly (plain types and CPU tensors, so that
    the file loads on any device; atomically). With ``params.adapter_only_checkpoints`` the
    model and its average hold only the adapters, and the file names its base
    (:mod:`icefall.adapter_files`)."""
    base = unwrap(model)
    state = base.state_dict()
    avg = None if model_avg is None else {k: v.float() for k, v in
                                         model_avg.state_dict().items()}
    extra: dict[str, Any] = {}
    installed = installed_adapter_config(base)
    if params.get("adapter_only_checkpoints"):
        state = adapter_state_dict(base)
        avg = None if avg is None else {k: avg[k] for k in state}
        fingerprint = params.get("base_fingerprint") or base_fingerprint(base)  # other ranks
        extra = adapter_fields(base.adapter_config, fingerprint, params.base_checkpoint,
                               model_config(params))
    elif installed is not None:  # a whole model with adapters records them too
        extra = {"adapter": installed.to_dict()}
    for state_ in (state, avg or {}):
        bad = next((k for k, v in state_.items() if v.is_floating_point()
                    and not bool(torch.isfinite(v).all())), None)
        if bad is not None:
            raise TrainingStoppedError(
                f"parameter {bad} is not finite at batch {params.batch_idx_train}: not writing "
                f"{filename}; earlier checkpoints in {Path(filename).parent} are kept")
    save_checkpoint(filename, model=state, model_avg=avg,
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    grad_scaler=scaler.state_dict(),
                    sampler=None if sampler is None else sampler.state_dict(),
                    params=plain_params(params), rng=get_rng_state(),
                    whiten_state=whiten_state(base), **extra)
    logging.info(f"Saved {filename}")


# ---------------------------------------------------------------------------------------
# Loss and validation
# ---------------------------------------------------------------------------------------


def loss_weights(params: AttributeDict) -> tuple[float, float]:
    """(simple, pruned) loss weights: from (1.0, 0.1) at batch 0 to
    (--simple-loss-scale, 1.0) at --warm-step, linearly."""
    s, warm, b = params.simple_loss_scale, params.warm_step, params.batch_idx_train
    if b >= warm:
        return s, 1.0
    return 1.0 - (b / warm) * (1.0 - s), 0.1 + 0.9 * (b / warm)


@dataclass
class LossTerms:
    """One batch's losses: the weighted loss to differentiate and its parts, all summed over
    the batch and left on the device, plus counts taken on the host."""

    loss: Tensor  # 0-dim, the weighted sum
    parts: dict[str, Tensor]  # detached 0-dim: loss, simple_loss, pruned_loss, ctc_loss
    frames: float  # encoder frames (N * T'' without padding), from the CPU lengths
    utterances: float

    def tracker(self, values: list[float]) -> MetricsTracker:
        """The MetricsTracker once ``values`` (of ``parts``, in order) were read."""
        info = MetricsTracker()
        info["frames"], info["utterances"] = self.frames, self.utterances
        info.update(zip(self.parts, values))
        return info


def loss_terms(params: AttributeDict, model: nn.Module, sp, batch: dict,
               is_training: bool) -> LossTerms:
    """The weighted training loss of a batch, without reading anything from the device.

    Args:
      batch: a lhotse K2SpeechRecognitionDataset batch: ``inputs`` (N, T, 80),
        ``supervisions`` with ``text`` and ``num_frames`` (N,). The features are copied
        to the model's device without waiting; the lengths stay on the CPU (the model
        moves what it needs).
    """
    device = next(unwrap(model).parameters()).device
    feature = batch["inputs"].to(device, non_blocking=True)
    feature_lens = batch["supervisions"]["num_frames"].cpu()
    y = encode(sp, batch["supervisions"]["text"])
    with torch.set_grad_enabled(is_training):
        simple, pruned, ctc = model(feature, feature_lens, y, prune_range=params.prune_range,
                                    am_scale=params.am_scale, lm_scale=params.lm_scale)
        loss = simple.new_zeros(())
        if params.use_transducer:
            w_simple, w_pruned = loss_weights(params)
            loss = loss + w_simple * simple + w_pruned * pruned
        if params.use_ctc:
            loss = loss + params.ctc_loss_scale * ctc
    parts = {"loss": loss.detach()}
    if params.use_transducer:
        parts.update(simple_loss=simple.detach(), pruned_loss=pruned.detach())
    if params.use_ctc:
        parts["ctc_loss"] = ctc.detach()
    frames = float((feature_lens // params.subsampling_factor).sum())
    return LossTerms(loss, parts, frames, float(feature.shape[0]))


def compute_loss(params: AttributeDict, model: nn.Module, sp, batch: dict,
                 is_training: bool) -> tuple[Tensor, MetricsTracker]:
    """The weighted loss (summed over the batch) and its MetricsTracker (one device read)."""
    terms = loss_terms(params, model, sp, batch, is_training)
    values = torch.stack(list(terms.parts.values())).float().tolist()
    return terms.loss, terms.tracker(values)


def compute_validation_loss(params: AttributeDict, model: nn.Module, sp, valid_dl,
                            world_size: int, update_best: bool = True) -> MetricsTracker:
    """Loss over a validation set in eval mode; updates the best validation loss (which
    the first validation set decides) when ``update_best``."""
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    tot = MetricsTracker()
    for batch in valid_dl:
        _, info = compute_loss(params, model, sp, batch, is_training=False)
        tot = tot + info
    if world_size > 1:
        tot.reduce(next(model.parameters()).device)
    for m, mode in was_training.items():
        m.training = mode
    for m in lora_modules(model):  # LoRA merged in eval mode: unmerged again where training
        m.train(m.training)
    value = tot["loss"] / max(tot["frames"], 1.0)
    if update_best and value < params.best_valid_loss:
        params.best_valid_epoch, params.best_valid_loss = params.cur_epoch, value
    return tot


# ---------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------


def batch_count_offset(params: AttributeDict) -> float:
    """Where the model's schedules start in a new run: ``params.finetune_batch_count`` (the
    recipe's: 1e6 for zipformer_adapter/train.py, 1e5 for zipformer/finetune.py, as in
    icefall) when fine-tuning a pretrained model, which is past every warm-up; 0 otherwise."""
    if not params.do_finetune:
        return 0.0
    return float(params.get("finetune_batch_count", 1_000_000))


def saved_batch_count_offset(params: AttributeDict, saved: dict[str, Any]) -> float:
    """The offset of the run a checkpoint belongs to: its stored ``batch_count_offset``, or
    for older checkpoints the offset of its own --do-finetune. A run resumed with
    --do-finetune 0 (as the tutorial advises, so that --finetune-ckpt is not loaded again)
    thus keeps the schedules where the fine-tuning run had them."""
    if "batch_count_offset" in saved:
        return float(saved["batch_count_offset"])
    return batch_count_offset(AttributeDict(params, do_finetune=bool(saved.get(
        "do_finetune", params.do_finetune))))


def adjusted_batch_count(params: AttributeDict) -> float:
    """Batch count seen by the model's schedules: batches at the reference duration, plus
    the run's offset (:func:`batch_count_offset`, kept across resumes in the checkpoint)."""
    count = params.batch_idx_train * (params.max_duration * params.world_size) / \
        params.ref_duration
    offset = params.get("batch_count_offset")
    return count + (batch_count_offset(params) if offset is None else offset)


def set_train_mode(model: nn.Module, params: AttributeDict) -> None:
    """Adapters only (any kind, LoRA too): the base stays in eval mode. Otherwise the whole
    model trains."""
    if trains_adapters(params):
        set_adapter_training(unwrap(model))
    else:
        model.train()


@dataclass
class TrainState:
    """What train_one_epoch needs besides params and data.

    ``batch_counter``, ``feedback`` and ``trainable`` are found once, so that a step never
    walks the model's modules.
    """

    model: nn.Module
    model_avg: nn.Module | None
    optimizer: ScaledAdam
    scheduler: Eden
    scaler: torch.amp.GradScaler
    precision: Precision
    sp: Any
    tb_writer: Any
    rank: int
    world_size: int
    device: torch.device
    batch_counter: BatchCounter
    feedback: list[HostFeedback]
    trainable: list[Tensor]
    guard: GradScaleGuard | None = None


def _step_flags(loss: Tensor, trainable: list[Tensor], world_size: int) -> Tensor:
    """(2,) float on the device: [loss not finite, gradients not finite], maximum over ranks.

    Gradients are checked through their total norm (one foreach kernel), which is not
    finite exactly when some gradient is not (or overflows, which is as bad).
    """
    grads = [p.grad for p in trainable if p.grad is not None]
    norm = torch.stack(torch._foreach_norm(grads)).sum() if grads else loss.new_zeros(())
    flags = torch.stack([~torch.isfinite(loss), ~torch.isfinite(norm)]).float()
    if world_size > 1:  # asynchronous on GPUs: read with the step's one read
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return flags


def _skip_step(params: AttributeDict, st: TrainState, bad_loss: bool) -> None:
    """Counts a skipped step; with fp16 the scaler lowers its scale (no warning: that is
    how the scaler finds its range)."""
    st.optimizer.zero_grad(set_to_none=True)
    st.scaler.update()
    if st.scaler.is_enabled() and not bad_loss:
        params.num_overflow_batches += 1
        return
    params.num_bad_batches += 1
    what = "loss" if bad_loss else "gradients"
    logging.warning(f"Non-finite {what} at batch {params.batch_idx_train}; skipping it "
                    f"({params.num_bad_batches} skipped so far)")


def train_step(params: AttributeDict, st: TrainState, batch: dict) -> MetricsTracker | None:
    """One optimisation step; None when it was skipped (loss or gradients not finite on
    some rank: every rank skips it together, so no rank's model ever takes a non-finite
    update).

    The device is read once: the losses for the log, the two finiteness flags and the
    model's pending values (:class:`HostFeedback`) in one copy.
    """
    st.batch_counter.set(adjusted_batch_count(params))
    with st.precision.autocast():
        terms = loss_terms(params, st.model, st.sp, batch, is_training=True)
    st.scaler.scale(terms.loss).backward()
    st.scaler.unscale_(st.optimizer)
    flags = _step_flags(terms.loss, st.trainable, st.world_size)
    modules, pending = take_host_feedback(st.feedback)
    parts = list(terms.parts.values())
    values = torch.cat([torch.stack(parts).float(), flags,
                        *(v.float().reshape(1) for v in pending)]).tolist()  # the read
    give_host_feedback(modules, values[len(parts) + 2:])
    bad_loss, bad_grads = values[len(parts)] > 0, values[len(parts) + 1] > 0
    if bad_loss or bad_grads:
        _skip_step(params, st, bad_loss)
        return None
    st.scheduler.step_batch(params.batch_idx_train)
    st.optimizer.step()
    st.scaler.update()
    st.optimizer.zero_grad(set_to_none=True)
    return terms.tracker(values[: len(parts)])


def _log_progress(params: AttributeDict, st: TrainState, batch_idx: int,
                  info: MetricsTracker, tot: MetricsTracker, speed: float) -> None:
    """icefall's progress line, and the same figures to TensorBoard."""
    b = params.batch_idx_train
    lr = st.scheduler.get_last_lr()[0]
    scale = st.scaler.get_scale() if st.scaler.is_enabled() else None
    logging.info(f"Epoch {params.cur_epoch}, batch {batch_idx}, loss[{info}], "
                 f"tot_loss[{tot}], batch size: {int(info['utterances'])}, "
                 f"lr: {lr:.2e}, utt/s: {speed:.1f}"
                 + (f", grad_scale: {scale}" if scale is not None else ""))
    if st.tb_writer is not None:
        st.tb_writer.add_scalar("train/learning_rate", lr, b)
        info.write_summary(st.tb_writer, "train/current_", b)
        tot.write_summary(st.tb_writer, "train/tot_", b)
        if scale is not None:
            st.tb_writer.add_scalar("train/grad_scale", scale, b)


def _periodic(params: AttributeDict, st: TrainState, train_dl) -> None:
    """Model averaging and mid-epoch checkpoints after every batch, skipped ones too (the
    average must be updated at every multiple of --average-period)."""
    b = params.batch_idx_train
    if st.rank == 0 and st.model_avg is not None and b % params.average_period == 0:
        update_averaged_model(st.model_avg, unwrap(st.model), b, params.average_period)
    if params.save_every_n > 0 and b % params.save_every_n == 0 and st.rank == 0:
        save_training_checkpoint(Path(params.exp_dir) / f"checkpoint-{b}.pt", params,
                                 st.model, st.model_avg, st.optimizer, st.scheduler,
                                 st.scaler, train_dl.sampler)
        remove_checkpoints(params.exp_dir, params.keep_last_k)


def validate(params: AttributeDict, st: TrainState,
             valid_dls: list[tuple[str, Any]]) -> None:
    """Logs (and writes to TensorBoard) the loss of every validation set.

    One set is logged as icefall's train.py does (``Epoch E, batch B, validation: ...``,
    TensorBoard ``train/valid_*``); several as its fine-tuning scripts do, under their
    names (``Validation on NAME: ...``, ``train/NAME_valid_*``). The first set decides
    the best validation loss (best-valid-loss.pt).
    """
    for i, (name, dl) in enumerate(valid_dls):
        valid = compute_validation_loss(params, st.model, st.sp, dl, st.world_size, i == 0)
        what = "" if len(valid_dls) == 1 else f"Validation on {name}: "
        logging.info(f"{what}Epoch {params.cur_epoch}, batch {params.batch_idx_train}, "
                     f"validation: {valid}; best valid loss {params.best_valid_loss:.4g} "
                     f"(epoch {params.best_valid_epoch})")
        if st.tb_writer is not None:
            tag = "train/valid_" if len(valid_dls) == 1 else f"train/{name}_valid_"
            valid.write_summary(st.tb_writer, tag, params.batch_idx_train)


class TrainingDataError(TrainingStoppedError):
    """The training data cannot make a batch (found once training has started)."""


def train_one_epoch(params: AttributeDict, st: TrainState, train_dl, valid_dls,
                    rng_state: dict[str, Any] | None = None) -> None:
    """Trains over train_dl once; params.train_loss is the epoch's loss per frame.

    Args:
      rng_state: generator states to restore once the batch iterator exists (creating it
        draws from torch's generator), when resuming mid-epoch.
    """
    set_train_mode(st.model, params)
    tot, epoch_tot = MetricsTracker(), MetricsTracker()
    start, utts = time.time(), 0.0
    batches = iter(train_dl)
    if rng_state is not None:
        set_rng_state(rng_state)
    batch_idx = -1
    for batch_idx, batch in enumerate(batches):
        params.batch_idx_train += 1
        info = train_step(params, st, batch)
        if st.guard is not None:  # after every batch, skipped ones too (as icefall)
            st.guard.after_step(batch_idx)
        _periodic(params, st, train_dl)
        if info is None:
            continue
        utts += info["utterances"]
        tot = tot * (1.0 - 1.0 / params.reset_interval) + info
        epoch_tot = epoch_tot + info
        if batch_idx % params.log_interval == 0:
            speed = utts / max(time.time() - start, 1e-6)
            _log_progress(params, st, batch_idx, info, tot, speed)
        if batch_idx > 0 and batch_idx % params.valid_interval == 0:
            validate(params, st, valid_dls)
            set_train_mode(st.model, params)
    if batch_idx < 0 and rng_state is None:
        raise TrainingDataError(
            f"epoch {params.cur_epoch} has no training batches: the sampler formed no full "
            f"batch of --max-duration {params.max_duration} from --train-cuts "
            f"{params.train_cuts} (with --drop-last {int(params.drop_last)}, a duration "
            f"bucket's partial batch is dropped); use fewer --num-buckets or --drop-last 0")
    if st.world_size > 1:
        epoch_tot.reduce(st.device)
    params.train_loss = epoch_tot["loss"] / max(epoch_tot["frames"], 1.0)
    if params.train_loss < params.best_train_loss:
        params.best_train_epoch, params.best_train_loss = params.cur_epoch, params.train_loss


def save_epoch_checkpoint(params: AttributeDict, st: TrainState, sampler) -> None:
    """epoch-N.pt (written before validation, so a failing validation set loses nothing)."""
    if st.rank == 0:
        save_training_checkpoint(Path(params.exp_dir) / f"epoch-{params.cur_epoch}.pt",
                                 params, st.model, st.model_avg, st.optimizer, st.scheduler,
                                 st.scaler, sampler)


def copy_best_checkpoints(params: AttributeDict, st: TrainState) -> None:
    """best-train-loss.pt / best-valid-loss.pt: copies of epoch-N.pt, as icefall makes."""
    if st.rank != 0:
        return
    exp_dir = Path(params.exp_dir)
    for kind in ("train", "valid"):
        if params[f"best_{kind}_epoch"] == params.cur_epoch:
            atomic_copy(exp_dir / f"epoch-{params.cur_epoch}.pt",
                        exp_dir / f"best-{kind}-loss.pt")


# ---------------------------------------------------------------------------------------
# Data, set-up and entry point
# ---------------------------------------------------------------------------------------


def _manifest_paths(params: AttributeDict, names: str) -> list[Path]:
    """The manifests of a comma-separated list (``a|b`` alternatives: the one that exists)."""
    return [find_manifest(params.manifest_dir, n) for n in manifest_list(names)]


def validation_sets(params: AttributeDict) -> list[tuple[str, list[Path]]]:
    """--valid-cuts (one string, or the list of a repeated flag) as (name, manifests)
    pairs (:func:`parse_named_sets`)."""
    return [(name, [find_manifest(params.manifest_dir, m) for m in files])
            for name, files in parse_named_sets(named_sets_text(params.valid_cuts))]


def _load_all(paths: list[Path]):
    from lhotse import combine

    sets = [load_cuts(p) for p in paths]
    return sets[0] if len(sets) == 1 else combine(*sets)


class Dataloaders(NamedTuple):
    """What make_dataloaders builds."""

    train: DataLoader  # .sampler resumes mid-epoch when given a sampler state
    valid: list[tuple[str, DataLoader]]  # (name, dataloader) per validation set
    new_train_sampler: Callable[[], Any]  # a fresh sampler over the same training cuts


def make_dataloaders(params: AttributeDict, sp, sampler_state: dict | None) -> Dataloaders:
    """Filtered training cuts (muxed with --use-mux) and each validation set's."""
    dm = AsrDataModule(params)
    train_cuts = filter_cuts(_load_all(_manifest_paths(params, params.train_cuts)), sp)
    if params.use_mux:
        orig = filter_cuts(_load_all(_manifest_paths(params, params.mux_cuts)), sp)
        train_cuts = dm.mux_train_cuts(train_cuts, orig)
    valid_dls = [(name, dm.valid_dataloaders(filter_cuts(_load_all(paths), sp)))
                 for name, paths in validation_sets(params)]
    return Dataloaders(dm.train_dataloaders(train_cuts, sampler_state_dict=sampler_state),
                       valid_dls, lambda: dm.train_sampler(train_cuts))


def _make_model(params: AttributeDict, rank: int, world_size: int, device: torch.device
                ) -> tuple[nn.Module, nn.Module | None, dict[str, Any] | None]:
    """(model on device, DDP-wrapped with several ranks; float64 average on the CPU on rank
    0; the resume checkpoint)."""
    model = build_model(params)
    data = read_resume_checkpoint(params)
    if data is not None and is_adapter_only(data):
        params.base_checkpoint, params.base_fingerprint = load_adapter_run_base(
            params, model, data, resume_filename(params))
    choose_checkpoint_contents(params, model, rank, resuming=data is not None)
    model_avg = copy.deepcopy(model).to(torch.float64) if rank == 0 else None
    checkpoint = load_resume_checkpoint(params, model, model_avg, data)
    if params.inf_check:
        register_inf_check_hooks(model)
    model.to(device)
    if world_size > 1:
        # device_ids=None: DDP leaves the inputs where they are, so the lengths that the
        # model reads on the host stay on the CPU (the features are moved by loss_terms).
        model = DDP(model, device_ids=None, find_unused_parameters=True)
    return model, model_avg, checkpoint


def make_train_state(params: AttributeDict, rank: int, world_size: int, device: torch.device,
                     sp) -> tuple[TrainState, dict[str, Any] | None]:
    """Model (resumed or fine-tuned as the flags say), average, optimizer, scheduler, grad
    scaler, precision and TensorBoard writer of one rank; and the resume checkpoint."""
    model, model_avg, checkpoint = _make_model(params, rank, world_size, device)
    precision = choose_precision(params.use_fp16, params.use_bf16, device)
    logging.info(f"Training in {precision.describe()}")
    optimizer, scheduler = make_optimizer(model, params)
    scaler = make_grad_scaler(precision)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if checkpoint.get("grad_scaler") and scaler.is_enabled():
            scaler.load_state_dict(checkpoint["grad_scaler"])
    tb_writer = None
    if params.tensorboard and rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        tb_writer = SummaryWriter(log_dir=str(Path(params.exp_dir) / "tensorboard"))
    base = unwrap(model)
    st = TrainState(model, model_avg, optimizer, scheduler, scaler, precision, sp, tb_writer,
                    rank, world_size, device, BatchCounter(base),
                    [m for m in base.modules() if isinstance(m, HostFeedback)],
                    [p for p in base.parameters() if p.requires_grad])
    if scaler.is_enabled():
        st.guard = GradScaleGuard(scaler, lambda suffix: save_bad_model(params, st, suffix))
    return st, checkpoint


def save_bad_model(params: AttributeDict, st: TrainState, suffix: str) -> None:
    """exp-dir/bad-model<suffix>-<rank>.pt, every rank its own (icefall's names)."""
    save_training_checkpoint(Path(params.exp_dir) / f"bad-model{suffix}-{st.rank}.pt", params,
                             st.model, None, st.optimizer, st.scheduler, st.scaler, None)


class BatchOutOfMemoryError(TrainingStoppedError):
    """The GPU ran out of memory on one of the most demanding batches of the epoch."""


def scan_pessimistic_batches(params: AttributeDict, st: TrainState, data: Dataloaders
                             ) -> None:
    """icefall's scan_pessimistic_batches_for_oom: forward and backward on the most
    demanding batches of an epoch (longest cut, largest total duration, most cuts, ...),
    so that a --max-duration too large for the GPU fails at once with advice, not hours
    later. Leaves the model, the optimizer and the training sampler as they were (the scan
    reads a fresh sampler: one resumed mid-epoch cannot be copied).

    Raises:
      BatchOutOfMemoryError: naming the criterion and --max-duration.
    """
    from lhotse.dataset import find_pessimistic_batches

    logging.info("Sanity check: do the most demanding batches of an epoch fit in memory?")
    batches, values = find_pessimistic_batches(data.new_train_sampler())
    train_dl = data.train
    saved = whiten_state(unwrap(st.model))
    set_train_mode(st.model, params)
    for criterion, cuts in batches.items():
        try:
            with st.precision.autocast():
                terms = loss_terms(params, st.model, st.sp, train_dl.dataset[cuts], True)
            st.scaler.scale(terms.loss).backward()
        except torch.cuda.OutOfMemoryError as e:
            raise BatchOutOfMemoryError(
                f"out of GPU memory on the batch with the largest {criterion} "
                f"(= {values[criterion]:.4g}); lower --max-duration (now "
                f"{params.max_duration}) and try again") from e
        finally:
            st.optimizer.zero_grad(set_to_none=True)
    take_host_feedback(st.feedback)
    set_whiten_state(unwrap(st.model), saved)
    if st.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(st.device) // 1_000_000
        logging.info(f"Maximum memory allocated so far is {peak}MB")


def log_epoch_time(epoch: int, num_epochs: int, seconds: list[float]) -> None:
    """``Epoch 2/5 done in 12.3 s; about 37 s left`` (the mean epoch time so far times
    the epochs left)."""
    left = (num_epochs - epoch) * sum(seconds) / len(seconds)
    logging.info(f"Epoch {epoch}/{num_epochs} done in {seconds[-1]:.1f} s; "
                 f"about {format_seconds(left)} left")


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3.5 min`` or ``2.1 h``."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 6000 else f"{seconds / 3600:.1f} h"


def train(params: AttributeDict, rank: int, world_size: int, device: torch.device) -> None:
    """Builds everything and runs the epochs (called on every rank)."""
    fix_random_seed(params.seed)
    sp = load_bpe_model(params.bpe_model)
    set_model_dims_from_bpe(params, sp)
    st, checkpoint = make_train_state(params, rank, world_size, device, sp)
    if params.batch_count_offset is None:  # a new run (a resumed one has its run's)
        params.batch_count_offset = batch_count_offset(params)
    resume_mid_epoch = params.start_batch > 0 and checkpoint is not None
    sampler_state = checkpoint.get("sampler") if resume_mid_epoch else None
    data = make_dataloaders(params, sp, sampler_state)
    train_dl, valid_dls = data.train, data.valid
    logging.info(f"Validation sets: {', '.join(n for n, _ in valid_dls)} (--valid-cuts "
                 f"{params.valid_cuts})")
    if device.type == "cuda":
        scan_pessimistic_batches(params, st, data)
    epoch_seconds: list[float] = []
    for epoch in range(params.start_epoch, params.num_epochs + 1):
        start = time.time()
        logging.info(f"Epoch {epoch}/{params.num_epochs}: start")
        st.scheduler.step_epoch(epoch - 1)
        fix_random_seed(params.seed + epoch - 1)
        train_dl.sampler.set_epoch(epoch - 1)
        params.cur_epoch = epoch
        if st.tb_writer is not None:
            st.tb_writer.add_scalar("train/epoch", epoch, params.batch_idx_train)
        resume = resume_mid_epoch and epoch == params.start_epoch
        train_one_epoch(params, st, train_dl, valid_dls, checkpoint["rng"] if resume else None)
        save_epoch_checkpoint(params, st, train_dl.sampler)
        validate(params, st, valid_dls)
        copy_best_checkpoints(params, st)
        epoch_seconds.append(time.time() - start)
        log_epoch_time(epoch, params.num_epochs, epoch_seconds)
    spread = max_checksum_difference_across_ranks(unwrap(st.model))
    if world_size > 1:
        logging.info(f"Max parameter checksum difference across {world_size} ranks: "
                     f"{spread:.3g}")
    logging.info(f"Done. {params.num_bad_batches} batches skipped for non-finite loss or "
                 f"gradients" + (f", {params.num_overflow_batches} for fp16 overflow"
                                 if st.scaler.is_enabled() else "") + ".")


def run_rank(rank: int, world_size: int, params: AttributeDict) -> None:
    """Entry point of one process (:func:`icefall.dist.launch` starts one per rank)."""
    params = AttributeDict(get_params(), **params)
    params.world_size = world_size
    setup_logger(Path(params.exp_dir) / "log" / "log-train", rank=rank)
    configure_threads(world_size)
    if params.deterministic:
        use_deterministic_algorithms()
    device = setup_dist(rank, world_size, params.master_port)
    if device.type == "cpu":
        keep_freed_cpu_memory()
    try:
        train(params, rank, world_size, device)
    finally:
        cleanup_dist()


def set_mux_weights(params: AttributeDict) -> None:
    """With --use-mux and no --mux-weights: the cut counts of both manifests, counted once
    here (not on every rank), as icefall's weights are (every cut equally likely)."""
    if not params.use_mux or params.mux_weights:
        return
    new = count_cuts(_manifest_paths(params, params.train_cuts))
    orig = count_cuts(_manifest_paths(params, params.mux_cuts))
    params.mux_weights = f"{new},{orig}"
    logging.info(f"--mux-weights {params.mux_weights} (the manifests' cut counts)")


def check_finetune_flags(params: AttributeDict, resuming: bool) -> None:
    """A new fine-tuning run needs --finetune-ckpt; adapters (or LoRA) never train on a
    randomly initialised frozen base (icefall refuses that too); LoRA needs a rank."""
    if params.get("use_lora") and int(params.get("lora_r") or 0) < 1:
        raise ValueError(f"--use-lora 1 needs --lora-r R >= 1 (got {params.get('lora_r')}; "
                         "icefall's default 0 means no LoRA)")
    adapter = adapter_config_from_params(params)  # both kinds at once is an error
    if resuming:
        return
    if params.do_finetune and params.finetune_ckpt is None:
        raise ValueError("--do-finetune 1 needs --finetune-ckpt (the pretrained checkpoint)")
    if adapter is not None and not params.do_finetune:
        flag = "--use-lora 1" if adapter.kind == "lora" and params.get("use_lora") \
            else "--use-adapters 1"
        raise ValueError(f"{flag} with --do-finetune 0 and nothing to resume would "
                         "train adapters on a random, frozen base: pass --do-finetune 1 "
                         "--finetune-ckpt PRETRAINED.pt, or resume with "
                         "--start-epoch/--start-batch")


def check_resume_fits(params: AttributeDict, model: nn.Module, data: dict[str, Any],
                      resume: Path) -> None:
    """The resume checkpoint fits the model of the flags; an adapter-only one, its adapters
    and its base (which must exist)."""
    state = model_state_from(data, resume)
    if not is_adapter_only(data):
        check_fits_flags(model, state, resume, params, stored_model_config(data))
        return
    base = base_checkpoint_of(data, resume, params.finetune_ckpt)
    finetune_state(model, base, None, allow_unsafe=params.trust_checkpoint)
    adapters = set(adapter_parameter_names(model))
    if not adapters:
        raise ValueError(f"{resume} holds adapter weights only: resume it with the adapter "
                         "flags it was trained with (--use-adapters 1 or --use-lora 1)")
    check_state_dict_fits(model, state, resume,
                          [k for k in model.state_dict() if k not in adapters])


def check_training_inputs(params: AttributeDict) -> None:
    """Checks the user's files before any process starts, so that a bad path or a
    checkpoint that does not fit the flags is one clear error, not a traceback."""
    check_precision_flags(params.use_fp16, params.use_bf16, default_device())
    sp = load_bpe_model(params.bpe_model)
    resume = resume_filename(params)
    check_finetune_flags(params, resume is not None)
    valid = [m for _, files in parse_named_sets(params.valid_cuts) for m in files]
    check_training_manifests(params, manifest_list(params.train_cuts) + valid +
                             (manifest_list(params.mux_cuts) if params.use_mux else []))
    check_exp_dir(params, resuming=resume is not None)
    if params.world_size > 1 and not launched_by_torchrun():
        check_port_free(params.master_port)
    if resume is None and not params.do_finetune:
        return
    params = AttributeDict(get_params(), **params)
    set_model_dims_from_bpe(params, sp)
    with torch.device("meta"):
        model = get_model(params)
    if resume is not None:
        data = load_checkpoint_file(resume, allow_unsafe=params.trust_checkpoint)
        check_resume_fits(params, model, data, resume)
        check_resume_data(params, data.get("params") or {}, resume, params.start_batch > 0)
    elif params.do_finetune:
        finetune_state(model, params.finetune_ckpt, params.init_modules,
                       allow_unsafe=params.trust_checkpoint, params=params)


def apply_start_model_config(params: AttributeDict) -> str | None:
    """Model flags not given on the command line from the checkpoint the run starts from:
    all of them from the one it resumes, the architecture from --finetune-ckpt (see
    :mod:`icefall.model_config`; icefall's pretrained.pt stores none). Returns the line
    for the log that names them (None when none were taken)."""
    resume = resume_filename(params)
    if resume is not None:
        source, keys = resume, MODEL_KEYS
    elif params.do_finetune and params.finetune_ckpt is not None:
        source, keys = Path(params.finetune_ckpt), ARCHITECTURE_KEYS
    else:
        return None
    if not source.is_file():  # a missing file is named by the input checks
        return None
    stored = read_model_config(source, allow_unsafe=params.trust_checkpoint)
    return apply_model_config(params, stored, keys, source)


def prepare_training(params: AttributeDict) -> None:
    """What runs once before the ranks start: the exp-dir, model flags from the starting
    checkpoint, the input checks, the <unk> share and the schedule's fit to the data, mux
    weights. Nothing is logged before every check has passed, so that bad input is one
    line."""
    Path(params.exp_dir).mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(params.exp_dir)
    note = apply_start_model_config(params)
    check_training_inputs(params)
    seconds, unk = training_data_stats(params, load_bpe_model(params.bpe_model))
    check_unk(params, unk)
    # every check has passed; under torchrun each rank runs this, into its own log
    setup_logger(Path(params.exp_dir) / "log" / "log-train", rank=int(os.environ.get("RANK", 0)))
    if note:
        logging.info(note)
    log_unk(params, unk)
    fit_schedule(params, seconds)
    set_mux_weights(params)
