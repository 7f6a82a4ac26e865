"""One training entry for both adapters: DAPT (domain) and SFT (task) differ only in data and collator.

Training goes through the Hugging Face Trainer (checkpointing, resumption, logging, Accelerate for
several GPUs), guarded so that only the adapter being trained can change: every other adapter is
fingerprinted before and compared bit for bit after.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modft_utils.adapters import state
from modft_utils.config import TrainSpec
from modft_utils.modeling import head_loss
from modft_utils.upstream_fixes import last_complete_checkpoint, restore_adapter


@dataclass
class TrainResult:
    adapter_name: str
    adapter_dir: Path
    trainable_params: int
    steps: int
    train_loss: float
    # The held-out loss of the adapter as saved (measured at the last step), None without ``held_out``.
    final_eval_loss: float | None
    train_seconds: float
    tokens_seen: int
    tokens_per_second: float
    frozen_unchanged: dict[str, bool]
    resumed_from: str | None
    world_size: int = 1
    # torch's intra-op threads while training: the order in which sums are taken, so the losses'
    # last digits depend on it (the tiny profile's DAPT loss differs by 0.17% between 1 and 2).
    threads: int = 1
    log_history: list[dict[str, Any]] = field(default_factory=list)
    # How the language-modeling loss was computed: "chunked head" (modeling.head_loss, checked against
    # the model's own loss on the first batch) or "model" with the reason.
    loss_path: str = "model"


@functools.cache
def _adapter_trainer():
    from transformers import Trainer

    class AdapterTrainer(Trainer):
        """The Trainer, except that resuming restores only the adapter being trained (upstream_fixes.restore_adapter)."""

        adapter_name: str = ""
        on_batch: Callable[[Any], None] | None = None
        _parameter_count: int | None = None
        # None until the first batch decides; then the head (chunked loss) or False (the model's own loss).
        _head: Any = None
        loss_path: str = "model"

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # Packed language-modeling batches (DAPT's) take the loss a chunk of tokens at a time, never
            # holding the batch's logits (modeling.head_loss); everything else is the Trainer's own.
            if return_outputs or not head_loss.is_lm_batch(inputs):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self._head is None:
                self._head = self._checked_head(model, inputs) or False
            if self._head is False and "replay" in inputs:
                return self._scaled(self._logits_loss(model, inputs, num_items_in_batch), num_items_in_batch)
            if self._head is False:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return self._chunked_loss(self._head, inputs, num_items_in_batch)

        def _items(self, num_items_in_batch):
            return num_items_in_batch if self.model_accepts_loss_kwargs else None

        def _scaled(self, loss, num_items_in_batch):
            if self.args.average_tokens_across_devices and self._items(num_items_in_batch) is not None:
                # As Trainer.compute_loss: the token count is summed over ranks, so each rank's share scales up.
                loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
            return loss

        def _chunked_loss(self, head, inputs, num_items_in_batch):
            teacher = None
            if "replay" in inputs:

                def teacher(input_ids, attention_mask):
                    # Distilled replay's teacher: the stack below the adapter being trained (for DAPT, the base).
                    with state.without(self.model, self.adapter_name):
                        return head_loss.decoder_hidden(head, input_ids, attention_mask)

            items = self._items(num_items_in_batch)
            return self._scaled(
                head_loss.batch_loss(head, inputs, num_items=items, teacher=teacher), num_items_in_batch
            )

        def _logits_loss(self, model, inputs, num_items_in_batch):
            # Distilled replay where the chunked head does not apply: the whole batch's logits, twice.
            text = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
            with torch.no_grad(), state.without(self.model, self.adapter_name):
                teacher_logits = model(**text, use_cache=False).logits
            logits = model(**text, use_cache=False).logits
            return head_loss.logits_batch_loss(
                logits, teacher_logits, inputs["labels"], inputs["replay"], num_items=self._items(num_items_in_batch)
            )

        def _checked_head(self, model, inputs):
            head = head_loss.head_of(model)
            if head is None:
                self.loss_path = "model (the architecture or head is not a plain frozen linear head)"
                return None
            # On the batch's first sequence (the check is of the computation, not of the data), both from
            # the same generator state (the same dropout masks), which is restored afterwards, so the
            # training forward draws as it would have without the check.
            first = {k: v[:1] for k, v in inputs.items() if k != "replay"}  # the text's loss, either way
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.no_grad():
                with torch.random.fork_rng(devices=devices):
                    own = float(super().compute_loss(model, first, False, None))
                with torch.random.fork_rng(devices=devices):
                    ours = float(self._chunked_loss(head, first, None))
            if not abs(ours - own) <= 1e-3 * max(1.0, abs(own)):
                self.loss_path = f"model (the chunked loss {ours:.6g} differs from the model's {own:.6g})"
                return None
            self.loss_path = "chunked head"
            return head

        def training_step(self, model, inputs, *args, **kwargs):
            # Every batch trained on, as trained (evaluation batches never come here).
            if self.on_batch is not None and "input_ids" in inputs:
                self.on_batch(inputs["input_ids"])
            return super().training_step(model, inputs, *args, **kwargs)

        def floating_point_ops(self, inputs) -> int:
            # The Trainer's FLOP estimate counts the model's parameters again on every step (1.4%
            # of a tiny-profile DAPT step, profiled); they do not change while training.
            if self._parameter_count is None:
                if not hasattr(self.model, "num_parameters"):
                    return super().floating_point_ops(inputs)
                self._parameter_count = self.model.num_parameters(exclude_embeddings=True)
            main_input = getattr(self.model, "main_input_name", "input_ids")
            return 6 * inputs[main_input].numel() * self._parameter_count if main_input in inputs else 0

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            restore_adapter(self.model, self.adapter_name, resume_from_checkpoint)

        def _save(self, output_dir=None, state_dict=None):
            # A checkpoint holds the adapter being trained, nothing else: the frozen ones are saved
            # already, and PEFT would add whole embedding matrices after a vocabulary extension.
            if self.args.should_save:
                self.model.save_pretrained(
                    output_dir or self.args.output_dir,
                    selected_adapters=[self.adapter_name],
                    safe_serialization=True,
                    save_embedding_layers=False,
                )

    return AdapterTrainer


def training_arguments(spec: TrainSpec, output_dir: Path, *, compute_dtype: str, progress: bool):
    from transformers import TrainingArguments

    on_gpu = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=spec.max_steps,
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=spec.warmup_steps,
        weight_decay=spec.weight_decay,
        logging_steps=spec.logging_steps,
        # Held-out losses are train_adapter's own (held_out), not the Trainer's evaluation loop.
        eval_strategy="no",
        save_strategy="steps" if spec.save_steps else "no",
        save_steps=spec.save_steps or 500,
        save_total_limit=spec.keep_checkpoints,
        report_to=[] if spec.report_to == "none" else [spec.report_to],
        seed=spec.seed,
        data_seed=spec.seed,
        bf16=on_gpu and compute_dtype == "bfloat16",
        fp16=on_gpu and compute_dtype == "float16",
        use_cpu=not on_gpu,
        gradient_checkpointing=spec.gradient_checkpointing,
        dataloader_num_workers=0,
        # Measured on the tiny SFT set: 0.70 of batch tokens are real with random batches, 0.96 grouped.
        train_sampling_strategy="group_by_length" if spec.group_by_length else "random",
        # Under a data-parallel launch every LoRA weight gets a gradient each step.
        ddp_find_unused_parameters=False,
        remove_unused_columns=False,
        disable_tqdm=not progress,
        # The frozen 4-bit base is never saved by a checkpoint; only adapter weights are.
        save_only_model=False,
    )


def train_adapter(
    model,
    adapter_name: str,
    train_dataset,
    held_out: Callable[[Any], float] | None,
    spec: TrainSpec,
    output_dir: str | Path,
    collator,
    *,
    compute_dtype: str = "float32",
    progress: bool = True,
    resume: bool = True,
    on_batch: Callable[[Any], None] | None = None,
) -> TrainResult:
    """Train adapter ``adapter_name`` of ``model`` and save it to ``output_dir/adapter``.

    Refuses to start if anything but that adapter is trainable. If ``output_dir`` holds a
    checkpoint from an interrupted run and ``resume`` is set, training continues from it.

    ``held_out(model)`` returns the held-out loss (e.g. :func:`modft_utils.evaluate.held_out_nll`); it
    is measured every ``spec.eval_steps`` steps and at the last one, with the model in eval mode, into
    the log history as ``eval_loss``. The last value is ``final_eval_loss``: the adapter as saved,
    measured the way a notebook measures it afterwards, so it need not be measured again. None trains
    without measuring (``final_eval_loss`` None), for short runs scored afterwards anyway.
    ``on_batch`` is called with the ``input_ids`` of every training micro-batch (after a resume,
    only of those trained since), e.g. a :class:`modft_utils.data.ExposureCounter`.
    """
    output_dir = Path(output_dir)
    trainable = state.check_only_trainable(model, adapter_name)
    frozen = {
        name: state.fingerprint(state.adapter_state(model, name))
        for name in state.loaded_adapters(model)
        if name != adapter_name
    }
    if spec.gradient_checkpointing:
        model.enable_input_require_grads()
    args = training_arguments(spec, output_dir / "checkpoints", compute_dtype=compute_dtype, progress=progress)
    trainer = _adapter_trainer()(model=model, args=args, train_dataset=train_dataset, data_collator=collator)
    trainer.adapter_name = adapter_name
    trainer.on_batch = on_batch
    if held_out is not None:
        trainer.add_callback(_held_out_callback(trainer, model, held_out, spec.eval_steps))
    resume_from = last_complete_checkpoint(output_dir / "checkpoints") if resume else None
    start = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - start
    model.eval()
    history = list(trainer.state.log_history)
    evals = [h for h in history if "eval_loss" in h]
    if held_out is not None and (not evals or evals[-1].get("step") != trainer.state.global_step):
        # resumed from a checkpoint of the last step: nothing trained, so nothing measured yet
        with torch.no_grad():
            evals.append({"eval_loss": float(held_out(model)), "step": trainer.state.global_step})
        history.append(evals[-1])
    tokens = _tokens_seen(train_dataset, spec, trainer.state.global_step) * trainer.args.world_size
    unchanged = {name: state.fingerprint(state.adapter_state(model, name)) == fp for name, fp in frozen.items()}
    if not all(unchanged.values()):
        raise state.AdapterError(f"frozen adapter(s) changed while training {adapter_name!r}: {unchanged}")
    adapter_dir = output_dir / "adapter"
    if trainer.is_world_process_zero():  # data-parallel ranks hold identical adapters; one writes
        state.save_adapter(model, adapter_name, adapter_dir)
    trainer.accelerator.wait_for_everyone()
    state.set_trainable(model, None)
    return TrainResult(
        adapter_name=adapter_name,
        adapter_dir=adapter_dir,
        trainable_params=trainable,
        steps=trainer.state.global_step,
        train_loss=float(out.training_loss),
        final_eval_loss=evals[-1]["eval_loss"] if held_out is not None else None,
        train_seconds=seconds,
        tokens_seen=tokens,
        tokens_per_second=tokens / seconds if seconds else 0.0,
        frozen_unchanged=unchanged,
        resumed_from=resume_from,
        world_size=trainer.args.world_size,
        threads=torch.get_num_threads(),
        log_history=history,
        loss_path=trainer.loss_path,
    )


def _held_out_callback(trainer, model, held_out: Callable[[Any], float], every: int):
    """A TrainerCallback measuring ``held_out(model)`` every ``every`` steps and at the last step.

    It runs after the step's optimizer update (``on_step_end``), outside the training step's autocast,
    in eval mode and without gradients: what the same call gives once training has returned. Under a
    data-parallel launch each rank measures (the adapters are identical); the Trainer's evaluation
    loop would have shared the batches out.
    """
    from transformers import TrainerCallback

    class HeldOut(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every and state.global_step < state.max_steps:
                return
            start = time.perf_counter()
            model.eval()
            with torch.no_grad():
                loss = float(held_out(model))
            model.train()
            # Trainer.log reaches the trackers (report_to) too; it also clears should_log, which
            # would drop this step's training-loss log: kept as it was.
            should_log = control.should_log
            trainer.log({"eval_loss": loss, "eval_runtime": time.perf_counter() - start})
            control.should_log = should_log

    return HeldOut()


def _tokens_seen(dataset, spec: TrainSpec, steps: int) -> int:
    """Non-padding tokens in the batches trained on (estimated from the mean example length)."""
    if "input_ids" not in dataset.column_names or len(dataset) == 0:
        return 0
    lengths = [len(x) for x in dataset["input_ids"]]
    mean_len = sum(lengths) / len(lengths)
    return int(round(mean_len * spec.batch_size * spec.grad_accum * steps))


def loss_curves(log_history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """(step, loss) pairs for the training and evaluation loss, from the Trainer's log history."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    return {"train": train, "eval": evals}
