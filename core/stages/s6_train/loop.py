"""The training loop of `synfiqa train` (docs/train.md): one process, or many under torchrun
(DDP: gloo on CPU, nccl on CUDA), resumable bit for bit.

What makes a resumed run end where an uninterrupted one ends:

* the data order is a pure function of (seed, epoch, step) (synfiqa.stages.s6_train.order);
* every random draw of a step (dropout) comes from the global generator reseeded by (seed,
  rank, step, micro-batch), so nothing random is carried between steps but the checkpoint;
* the checkpoint holds the network, the margin head, the optimiser (momentum buffers), the
  AMP scaler and the step; the learning rate is a function of the step.

How the parts of a step add up: the global batch of G images is split over W processes and,
in each, over `accumulate` micro-batches. Each part's loss is
W * (sum of its cross-entropies / G + weight * sum of its SmoothL1 terms / K), K being the
number of quality targets in the whole global batch (G for the CR target; the labelled
samples for MR); DDP averages the gradients over the W processes, so the gradient is that of
the means over the whole batch, however it is split. BatchNorm normalises each part with
its own statistics (as CR-FIQA's DDP does): one process with `accumulate = W` computes what
W processes compute, to float tolerance.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from synfiqa.checkpoints import load_state_dict_strictly, read_payload
from synfiqa.errors import BadInputError, CheckpointError, ConfigError, SynfiqaError
from synfiqa.progress import progress as progress_bar
from synfiqa.seeding import derive_seed, torch_generator
from synfiqa.stages.s6_train.data import FaceDataset, collate, to_network_input
from synfiqa.stages.s6_train.loss import MarginHead, certainty_ratio, loss_sums
from synfiqa.stages.s6_train.network import NetworkBuilder, build_network
from synfiqa.stages.s6_train.order import EpochOrder, StepBatches, steps_per_epoch
from synfiqa.stages.s6_train.settings import TrainSettings
from synfiqa.store import StageFolder, read_rows, write_atomic, write_error, write_text_atomic

MARKER = ".synfiqa/train.json"
CHECKPOINTS = "checkpoints"
MODEL = "model.pt"
HEADER = "header.pt"
ONNX = "model.onnx"
METRICS = "metrics.jsonl"
PLOT = "loss.png"
SUMMARY = "summary.json"
OWNED = (".synfiqa", CHECKPOINTS, MODEL, HEADER, ONNX, METRICS, PLOT, SUMMARY)
CHECKPOINT_FORMAT = "synfiqa-train-checkpoint"
_CHECKPOINT_NAME = re.compile(r"^step-(\d{9})\.pt$")


@dataclass
class TrainResult:
    out: Path
    start_step: int
    end_step: int
    total_steps: int
    steps_per_epoch: int
    classes: int
    samples: int
    rows: list[dict] = field(default_factory=list)
    model: Path | None = None
    onnx: Path | None = None
    rank: int = 0


class TrainModule(nn.Module):
    """The network and the margin head as one module (what DDP wraps)."""

    def __init__(self, network: nn.Module, head: MarginHead, amp: bool, device_type: str):
        super().__init__()
        self.network, self.head = network, head
        self.amp, self.device_type = amp, device_type

    def forward(self, images, identities):
        with torch.autocast(self.device_type, dtype=torch.float16, enabled=self.amp):
            output = self.network(images)
        if not isinstance(output, (tuple, list)) or len(output) != 2 or output[1] is None:
            raise ConfigError("the network must return (embedding, quality); it has no quality head")
        embedding, quality = output
        logits, ccs, nnccs = self.head(embedding.float(), identities)
        return logits, quality.float(), ccs, nnccs


# ---------------------------------------------------------------- processes


def distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) for one process."""
    try:
        return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None


def _broadcast(value, rank: int, world: int):
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _agree(error: BaseException | None, rank: int, world: int) -> None:
    """Rank 0's verdict for every process: its error raised everywhere (the others get its
    text), so no process waits for one that stopped."""
    text = _broadcast("" if error is None else f"{type(error).__name__}\x00{error}", rank, world)
    if error is not None and rank == 0:
        raise error
    if text:
        kind, message = text.split("\x00", 1)
        raise SynfiqaError(message)


# ---------------------------------------------------------------- checkpoints


def checkpoint_paths(out: Path) -> list[tuple[int, Path]]:
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := _CHECKPOINT_NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(path: Path, step: int, fingerprint: str, module: TrainModule, optimizer, scaler) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT, "version": 1, "step": step, "fingerprint": fingerprint,
        "network": {k: v.detach().cpu().clone() for k, v in module.network.state_dict().items()},
        "header": {k: v.detach().cpu().clone() for k, v in module.head.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path, fingerprint: str, module: TrainModule, optimizer, scaler) -> int:
    """Restores a training checkpoint (tensors only: synfiqa.checkpoints' strict reader);
    every problem one CheckpointError naming the file."""
    payload = read_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a synfiqa training checkpoint")
    missing = [k for k in ("step", "fingerprint", "network", "header", "optimizer") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: a training checkpoint without {', '.join(missing)}")
    if payload["fingerprint"] != fingerprint:
        raise CheckpointError(f"{path}: written by a run with other settings (fingerprint {payload['fingerprint']!r}, "
                              f"this run {fingerprint!r})")
    step = payload["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path}: step {step!r} is not a step number")
    for part, target in (("network", module.network), ("header", module.head)):
        state = payload[part]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: {part} is not a state dict of tensors")
        load_state_dict_strictly(target, state, f"{path} ({part})")
    try:
        optimizer.load_state_dict(payload["optimizer"])
        if scaler is not None and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path}: the optimiser state does not fit this network ({str(error)[:160]})") from None
    return step


# ---------------------------------------------------------------- the run


def train(datasets: list[str | Path], out: str | Path, settings: TrainSettings, network_builder: NetworkBuilder, *,
          resume: bool = False, overwrite: bool = False, max_steps: int | None = None,
          progress: bool | None = None, echo: Callable[[str], None] | None = None,
          scorer_factory: Callable[[str], object] | None = None) -> TrainResult:
    """Trains a FIQA network on `datasets` into the folder `out` (docs/train.md). Under
    torchrun every process calls this; process 0 writes. `scorer_factory(path)` (the fiqa
    component the network came from) is used to check that DIR/model.pt loads and scores as
    the trained network does."""
    import torch.distributed as dist

    from synfiqa.models import resolve_device

    echo = echo or (lambda _text: None)
    out = Path(out)
    rank, world, local_rank = distributed_env()
    device = resolve_device(settings.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    amp = settings.amp == "on" or (settings.amp == "auto" and device.type == "cuda")
    if amp and device.type != "cuda":
        raise ConfigError("train.amp = 'on' needs a CUDA device (AMP is float16 autocast on CUDA)")
    started_group = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started_group = True
    folder = None
    try:
        dataset = FaceDataset(datasets, require_labels=settings.target == "mr")
        global_batch = settings.global_batch(world)
        per_epoch = steps_per_epoch(len(dataset), global_batch)
        total = per_epoch * settings.epochs
        end = total if max_steps is None else min(total, max_steps)
        description = settings.fingerprint([str(Path(d).expanduser().resolve()) for d in datasets], world)
        fingerprint = description["fingerprint"]

        # process 0 owns the folder and decides where the run starts
        error, start_path = None, None
        if rank == 0:
            try:
                folder = StageFolder(out, marker=MARKER, what="training run", owned=OWNED,
                                     resume_hint=lambda _f: " Resume it with its own settings and --resume.",
                                     settings="other training settings")
                folder.claim(description, overwrite=overwrite)
                found = checkpoint_paths(out)
                if found and not resume:
                    raise ConfigError(f"{out} holds this training run up to step {found[-1][0]}: add --resume to "
                                      f"continue it, or --overwrite to start again")
                start_path = str(found[-1][1]) if found else None
            except BaseException as caught:  # noqa: BLE001 - every process must hear of it
                error = caught
        _agree(error, rank, world)
        start_path = _broadcast(start_path, rank, world)

        torch.manual_seed(derive_seed(settings.seed, "network", 0, "init"))
        network = build_network(network_builder, settings.arch, settings.head, settings.embedding_size,
                                settings.dropout)
        head = MarginHead(settings.embedding_size, dataset.num_classes, settings.margin_scale, settings.margin,
                          generator=torch_generator(settings.seed, "header", 0, "init"))
        module = TrainModule(network, head, amp, device.type).to(device)
        lr0 = settings.base_lr(world)
        optimizer = torch.optim.SGD([{"params": list(network.parameters())}, {"params": list(head.parameters())}],
                                    lr=lr0, momentum=settings.momentum, weight_decay=settings.weight_decay)
        scaler = torch.amp.GradScaler("cuda") if amp else None
        start = 0
        if start_path is not None:
            error = None
            try:
                start = load_checkpoint(Path(start_path), fingerprint, module, optimizer, scaler)
            except SynfiqaError as caught:
                error = caught
            if world > 1:  # every process must have read it
                flags = torch.tensor([0 if error is None else 1])
                dist.all_reduce(flags)
                if int(flags) and error is None:
                    raise SynfiqaError(f"another process could not read {start_path}")
            if error is not None:
                raise error
            if start > end and max_steps is None:
                raise CheckpointError(f"{start_path}: step {start} is past the run's end ({end})")
            if rank == 0:
                echo(f"resuming from {start_path} (step {start} of {end})")
        if rank == 0:
            _truncate_metrics(out / METRICS, start)

        trained = module
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel

            trained = DistributedDataParallel(module, broadcast_buffers=False,
                                              device_ids=[device.index] if device.type == "cuda" else None)
        order = EpochOrder(len(dataset), settings.seed, settings.flip)
        batches = StepBatches(order, start, max(start, end), global_batch, per_epoch, rank, world)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=settings.workers,
                                             collate_fn=collate, pin_memory=device.type == "cuda",
                                             persistent_workers=False)
        if rank == 0:
            info = "; ".join(f"{i.path} ({i.kind}: {i.identities} identities, {i.samples} images"
                             + (f", {i.labelled} labelled" if i.labelled else "") + ")" for i in dataset.infos)
            echo(f"training {settings.arch} ({settings.head} head, {settings.target} target) on {info}: "
                 f"{per_epoch} steps/epoch x {settings.epochs} epochs = {total} steps of {global_batch} images"
                 + (f", stopping at step {end}" if end < total else "") + f"; {world} process(es) on {device.type}"
                 + (", AMP" if amp else ""))
        rows = _run_steps(trained, module, loader, optimizer, scaler, settings, start, end, per_epoch, global_batch,
                          world, rank, device, out, fingerprint, progress, echo)

        result = TrainResult(out, start, end, total, per_epoch, dataset.num_classes, len(dataset), rows, rank=rank)
        if rank == 0:
            _finish(result, module, dataset, settings, description, scorer_factory, echo)
        if world > 1:
            dist.barrier()
        return result
    finally:
        if folder is not None:
            folder.release()
        if started_group and dist.is_initialized():
            dist.destroy_process_group()


def _run_steps(trained, module, loader, optimizer, scaler, settings, start, end, per_epoch, global_batch, world, rank,
               device, out, fingerprint, progress, echo) -> list[dict]:
    import torch.distributed as dist

    module.train()
    network_parameters = list(module.network.parameters())
    enabled = sys.stderr.isatty() if progress is None else progress
    bar = progress_bar(total=end - start, enabled=enabled and rank == 0, description="training", unit="step")
    window = torch.zeros(5, dtype=torch.float64)   # ce sum, smooth-L1 sum, targets, images, target sum
    window_start, window_steps = time.perf_counter(), 0
    rows: list[dict] = []
    base_lr = settings.base_lr(world)
    micro = settings.accumulate
    try:
        for step, batch in zip(range(start, end), loader):
            if batch["errors"]:
                more = len(batch["errors"]) - 1
                raise BadInputError("unreadable-image", batch["errors"][0] + (f" (and {more} more)" if more else ""))
            epoch = step // per_epoch
            lr = base_lr * settings.lr_factor(epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = to_network_input(batch["image"].to(device, non_blocking=True))
            identities = batch["identity"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            if settings.target == "cr":
                targets_in_batch = float(global_batch)
            else:
                known = torch.tensor([float((~torch.isnan(labels)).sum())], dtype=torch.float64)
                if world > 1:
                    dist.all_reduce(known)
                targets_in_batch = float(known)
            for k, (x, y, label) in enumerate(zip(images.chunk(micro), identities.chunk(micro), labels.chunk(micro))):
                torch.manual_seed(derive_seed(settings.seed, f"rank-{rank}", step * micro + k, "train-step"))
                sync = contextlib.nullcontext() if world == 1 or k == micro - 1 else trained.no_sync()
                with sync:
                    logits, quality, ccs, nnccs = trained(x, y)
                    if settings.target == "cr":
                        target = certainty_ratio(ccs, nnccs, settings.cr_offset)
                    else:
                        target = label
                    ce, smooth, count = loss_sums(logits, y, quality, target, settings.smooth_l1_beta)
                    loss = world * (ce / global_batch + settings.quality_weight * smooth / max(targets_in_batch, 1.0))
                    if not torch.isfinite(loss):
                        raise SynfiqaError(f"the loss is {float(loss)} at step {step + 1}: training diverged; lower "
                                           f"train.lr or check the labels")
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                finite = ~torch.isnan(target)
                window += torch.tensor([float(ce.detach()), float(smooth.detach()), count, float(x.shape[0]),
                                        float(target[finite].sum()) if count else 0.0], dtype=torch.float64)
            if scaler is not None:
                scaler.unscale_(optimizer)
            if settings.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(network_parameters, max_norm=settings.clip_norm, norm_type=2)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1
            window_steps += 1
            bar.update(1)
            if done % settings.log_every == 0 or done == end:
                totals = window.clone()
                if world > 1:
                    dist.all_reduce(totals)
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                row = _metrics_row(totals, done, epoch, lr, settings, window_steps / elapsed, end, window_steps)
                if rank == 0:
                    rows.append(row)
                    _append_metrics(out / METRICS, row)
                    line = (f"step {done}/{end}  loss {row['loss']:.4f} (identity {row['loss_identity']:.4f}, "
                            f"quality {row['loss_quality']:.4f})  lr {lr:.3g}  {row['steps_per_s']:.2f} steps/s "
                            f"{row['images_per_s']:.0f} img/s  ETA {_duration(row['eta_s'])}")
                    if enabled:
                        bar.set_postfix_str(f"loss {row['loss']:.3f} q {row['loss_quality']:.3f}")
                    else:
                        echo(line)
                window.zero_()
                window_start, window_steps = time.perf_counter(), 0
            if rank == 0 and (done % settings.checkpoint_every == 0 or done == end):
                path = out / CHECKPOINTS / f"step-{done:09d}.pt"
                try:
                    save_checkpoint(path, done, fingerprint, module, optimizer, scaler)
                except OSError as error:
                    raise write_error(out, error) from None
                for _, old in checkpoint_paths(out)[:-settings.keep_checkpoints]:
                    old.unlink(missing_ok=True)
    finally:
        bar.close()
    return rows


def _metrics_row(totals: torch.Tensor, step: int, epoch: int, lr: float, settings: TrainSettings,
                 steps_per_s: float, end: int, window_steps: int) -> dict:
    ce, smooth, count, images, target_sum = (float(v) for v in totals)
    identity = ce / max(images, 1.0)
    smooth_mean = smooth / count if count else float("nan")
    quality = settings.quality_weight * smooth_mean if count else 0.0
    return {
        "step": step, "epoch": epoch, "lr": lr,
        "loss": identity + quality, "loss_identity": identity, "loss_quality": quality,
        "smooth_l1": smooth_mean, "target_mean": target_sum / count if count else None,
        "steps_per_s": steps_per_s, "images_per_s": steps_per_s * images / max(window_steps, 1),
        "eta_s": (end - step) / steps_per_s if steps_per_s > 0 else None,
        "time": time.time(),
    }


def _append_metrics(path: Path, row: dict) -> None:
    from synfiqa.store import append_rows

    try:
        append_rows(path, [row])
    except OSError as error:
        raise write_error(path.parent, error) from None


def _truncate_metrics(path: Path, step: int) -> None:
    """Drops the rows a killed run logged after its last checkpoint (and a torn last line)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def read_metrics(out: str | Path) -> list[dict]:
    rows = []
    path = Path(out) / METRICS
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _duration(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _finish(result: TrainResult, module: TrainModule, dataset: FaceDataset, settings: TrainSettings,
            description: dict, scorer_factory, echo) -> None:
    """Process 0, at the end: model.pt (the network's state dict, in the key layout its
    scorer loads), header.pt, summary.json, loss.png, model.onnx when asked; then the check
    that the scorer loads model.pt and scores as the trained network does."""
    from synfiqa.stages.s6_train.plot import loss_plot

    out = result.out
    network = module.network
    state = {k: v.detach().float().cpu().clone() if v.is_floating_point() else v.detach().cpu().clone()
             for k, v in network.state_dict().items()}
    try:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_atomic(out / MODEL, buffer.getvalue())
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu().clone() for k, v in module.head.state_dict().items()}, buffer)
        write_atomic(out / HEADER, buffer.getvalue())
    except OSError as error:
        raise write_error(out, error) from None
    result.model = out / MODEL
    rows = read_metrics(out)
    per_epoch = result.steps_per_epoch
    decays = [(m - 1) * per_epoch for m in settings.decay_epochs]
    title = (f"{settings.network} {settings.arch}, {settings.head} head, {settings.target} target: {result.samples} images, "
             f"{result.classes} identities, steps {rows[0]['step'] if rows else 0}..{result.end_step}")
    write_atomic(out / PLOT, loss_plot(rows, title, decays))

    sample = torch.stack([dataset[i]["image"] for i in range(min(8, len(dataset)))])
    evaluation = network.float().cpu().eval()
    with torch.inference_mode():
        trained_scores = evaluation(to_network_input(sample))[1].reshape(-1)
    checked = None
    if scorer_factory is not None:
        scorer = scorer_factory(str(out / MODEL))
        loaded_scores = torch.as_tensor(scorer.score(sample)).float().reshape(-1)
        checked = float((loaded_scores - trained_scores).abs().max())
        if not checked <= 1e-3 * max(1.0, float(trained_scores.abs().max())):
            raise CheckpointError(f"{out / MODEL} loads, but its scores differ from the trained network's by "
                                  f"{checked:.3g}: the scorer does not build the network that was trained")
    if settings.export == "onnx":
        from synfiqa.stages.s6_train.export import export_onnx

        difference = export_onnx(evaluation, out / ONNX, to_network_input(sample))
        result.onnx = out / ONNX
        echo(f"wrote {out / ONNX} (onnxruntime matches torch to {difference:.2g})")
    summary = {
        "settings": settings.to_dict(), "fingerprint": description["fingerprint"],
        "datasets": [vars(i) for i in dataset.infos], "classes": dataset.num_classes, "samples": len(dataset),
        "steps_per_epoch": per_epoch, "total_steps": result.total_steps, "end_step": result.end_step,
        "world_size": description["world_size"], "last": rows[-1] if rows else None,
        "first": rows[0] if rows else None, "scorer_check_max_difference": checked,
    }
    write_text_atomic(out / SUMMARY, json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    echo(f"wrote {out / MODEL} (step {result.end_step} of {result.total_steps}), {out / METRICS}, {out / PLOT}")
