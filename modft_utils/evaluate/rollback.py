"""The rollback drills of notebook 05, one call each: what the rollback policy promises, exercised on
the live stack and checked as numbers.

The live stack is base + domain + task, loaded from the store (:func:`modft_utils.adapters.load_adapter`
checks hashes, base and parent). A second base, loaded separately and served from the store through an
:class:`~modft_utils.adapters.AdapterStack`, is the reference: it never holds the live model's adapters.

* :func:`reference_logits` and :func:`switch_and_compare`: switching adapters off gives exactly what
  a model that never saw them computes (maximum absolute logit difference 0).
* :func:`train_candidate` and :func:`gate_candidate`: a task adapter trained on shuffled answers meets
  the promotion gate, which refuses it.
* :func:`force_and_roll_back`: forced into production anyway, it is rolled back, and the version
  restored gives the outputs from before, bit for bit.
* :func:`train_newer_versions`, :func:`gate_domain_candidate` and :func:`roll_back_domain`: a newer
  domain version meets the domain gate (domain and generic perplexity, the task retrained on it);
  rolling it back leaves the task adapter trained on it flagged until it is rolled back too.

Every training run here is short (``rollback.candidate_steps``) and goes through
:func:`modft_utils.adapters.train_adapter`, so every other adapter of the model stays frozen and is
checked unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transformers import default_data_collator

from modft_utils.adapters import (
    AdapterError,
    AdapterStack,
    ParentMismatchError,
    activate,
    add_adapter,
    load_adapter,
    loaded_adapters,
    time_switch,
    train_adapter,
)
from modft_utils.adapters.train import TrainResult
from modft_utils.config import Profile, TrainSpec
from modft_utils.data import fingerprint_dataset, load_dapt_blocks, load_generic_blocks, load_sft, sft_collator
from modft_utils.data.sft import SftData
from modft_utils.evaluate.scores import (
    RecordedGrid,
    domain_gate,
    gate_table,
    logits,
    max_abs_diff,
    perplexity,
    promotion_gate,
    stack_label,
    stack_scores,
)
from modft_utils.runs import Run
from modft_utils.store import AdapterRef, AdapterVersion, BaseIdentity, Registry

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig

PRODUCTION = "production"


def short_run(spec: TrainSpec, steps: int, *, seed: int | None = None) -> TrainSpec:
    """``spec`` cut to ``steps`` steps, with another ``seed`` if given."""
    update: dict[str, Any] = {"max_steps": steps}
    if seed is not None:
        update["seed"] = seed
    return spec.model_copy(update=update)


class DomainGateRefused(AdapterError):
    """A domain version the domain gate refused was about to reach production."""


@dataclass
class Promotion:
    """The versions notebooks 02 and 03 published, now in production, and the gate the domain one met."""

    domain: AdapterVersion
    task: AdapterVersion
    gate: dict[str, Any]  # domain_gate against the bare base, from notebook 04's grid
    forced: bool  # refused, and promoted anyway (rollback.force_first_domain)


def promote_published(run: Run, store: Registry, grid: RecordedGrid | None) -> Promotion:
    """Point ``production`` at the domain and task versions the run published, once the domain one passed its gate.

    A run's own domain version has no production version to beat, so it meets the domain gate against
    the bare base: its domain perplexity must improve on the base's and its generic perplexity stay
    within ``rollback.generic_ppl_tolerance`` of it (the perplexities of notebook 04's ``grid``). A
    refused version raises :class:`DomainGateRefused` and moves no alias, unless
    ``rollback.force_first_domain`` is set; then the audit log says it was forced and why.
    """
    profile = run.profile
    base = grid.perplexities([]) if grid is not None else None
    with_domain = grid.perplexities(["domain"]) if grid is not None else None
    if base is None or with_domain is None:
        raise AdapterError(
            f"run {run.name}: notebook 04's grid (base and base + domain perplexities) is not recorded, and the "
            "domain gate reads it; run notebook 04 before promoting"
        )
    tolerance = profile.rollback.generic_ppl_tolerance
    gate = domain_gate(with_domain, base, base, task_tolerance=0.0, generic_tolerance=tolerance, reference="base")
    domain, task = run.published(store, "domain"), run.published(store, "task")
    forced = not gate["allowed"]
    if forced and not profile.rollback.force_first_domain:
        raise DomainGateRefused(
            f"{domain.ref} (DAPT of run {run.name}) is refused by the domain gate against the base, and production "
            f"is not moved:\n{gate_table(gate)}\nchange the DAPT budget (docs/knowledge.md), or set "
            "rollback.force_first_domain: true to promote it anyway (audited as forced)"
        )
    why = f"; forced past the domain gate: {'; '.join(gate['refused_because'])}" if forced else ""
    store.promote("domain", domain.version, reason=f"DAPT of run {run.name}{why}")
    store.promote("task", task.version, reason=f"SFT of run {run.name}")
    return Promotion(domain, task, gate, forced)


# --------------------------------------------------------------------------- drills 1 and 2


def reference_logits(
    reference: AdapterStack, probe: torch.Tensor, domain: str = f"domain@{PRODUCTION}"
) -> dict[str, torch.Tensor]:
    """Logits of a separately loaded base: bare (``"base"``), then with ``domain`` from the store (``"base + domain"``).

    ``reference`` is an AdapterStack over a freshly loaded base, so neither computation has met the
    live model's adapters; ``domain`` is loaded into it with hash and base checked, and stays active.
    """
    held = loaded_adapters(reference.model)
    if held:
        raise AdapterError(f"the reference must be a freshly loaded base, but it holds adapters {held}")
    out = {"base": logits(reference.model, probe)}
    reference.use(domain)
    out[stack_label([domain.partition("@")[0]])] = logits(reference.model, probe)
    return out


def switch_and_compare(
    model, active: Sequence[str], probe: torch.Tensor, reference: torch.Tensor
) -> tuple[float, float]:
    """Switch ``model`` to exactly ``active`` (one timed switch); return (milliseconds, max |logit difference| vs ``reference``)."""
    switch_ms = time_switch(model, [list(active)], 1)
    return switch_ms, max_abs_diff(logits(model, probe), reference)


# --------------------------------------------------------------------------- drill 3: the gate


@dataclass
class Candidate:
    """A regressing task adapter, trained in the live model on top of adapter ``over``."""

    name: str  # its adapter name in the model
    over: str  # the adapter it was trained on top of (active while it trained)
    result: TrainResult
    spec: TrainSpec
    examples: int  # training examples
    data_fingerprint: str  # of the training set (data.fingerprint_dataset)


def train_candidate(
    model,
    profile: Profile,
    train_set,
    collator,
    output_dir,
    lora: LoraConfig,
    *,
    name: str = "candidate",
    over: str = "domain",
) -> Candidate:
    """Train a candidate task adapter ``name`` on ``train_set`` on top of the frozen adapter ``over``.

    ``model`` is a PeftModel holding ``over``; the candidate is added to it (``lora``: the task
    adapter's shape, ``modeling.lora_config(profile.sft.lora)``) and trained like the task adapter, cut
    to ``rollback.candidate_steps``, without evaluating while it trains: the gate scores it on held-out
    examples afterwards. The rollback drill gives it ``data.shuffled_answer_set``: the task's questions
    with the answers shuffled between them, so it learns to answer wrongly.
    """
    spec = short_run(profile.sft.train, profile.rollback.candidate_steps)
    model = add_adapter(model, name, lora)
    activate(model, [over, name], trainable=name)
    result = train_adapter(
        model,
        name,
        train_set,
        None,
        spec,
        output_dir,
        collator,
        compute_dtype=profile.model.compute_dtype,
        progress=False,
    )
    return Candidate(name, over, result, spec, len(train_set), fingerprint_dataset(train_set))


@dataclass
class GateDrill:
    """Held-out scores of the candidate stack and the production stack, the gate's decision, and the
    store version the candidate was published as (under the ``candidate`` alias)."""

    candidate: dict[str, Any]
    production: dict[str, Any]
    gate: dict[str, Any]
    version: AdapterVersion


def gate_candidate(
    model,
    tokenizer,
    store: Registry,
    candidate: Candidate,
    sft: SftData,
    profile: Profile,
    *,
    base: BaseIdentity,
    parent: AdapterRef,
    production: Sequence[str] = ("domain", "task"),
    grid: RecordedGrid | None = None,
) -> GateDrill:
    """Score the candidate stack and the ``production`` stack, publish the candidate, and ask the gate.

    Both stacks are scored on the same first ``compose.eval_examples`` held-out examples of ``sft``
    (:func:`~modft_utils.evaluate.scores.stack_scores`). The candidate is published as a ``task``
    version trained on ``parent``, with its scores, under the ``candidate`` alias (production does not
    move); the gate compares it with production on ``profile.gate_metric()`` within
    ``rollback.regression_tolerance``.

    ``grid`` (notebook 04's, :func:`~modft_utils.evaluate.scores.recorded_grid`) gives the production
    stack's scores when it scored that stack on the same examples: the same calls on the same weights,
    so they are taken from it instead of computed again.
    """
    held_out = _gate_held_out(profile, tokenizer, sft)
    activate(model, [candidate.over, candidate.name])
    candidate_scores = stack_scores(model, tokenizer, **held_out)
    production_scores = grid.stack_scores(production, len(held_out["qa_examples"])) if grid else None
    if production_scores is None:
        activate(model, list(production))
        production_scores = stack_scores(model, tokenizer, **held_out)
    version = store.publish(
        "task",
        candidate.result.adapter_dir,
        base=base,
        parent=parent,
        params=candidate.spec.model_dump(),
        data_fingerprint=candidate.data_fingerprint,
        metrics=candidate_scores,
        note="regressing drill candidate",
    )
    store.promote("task", version.version, alias="candidate", reason="drill: shuffled-answer candidate")
    gate = promotion_gate(
        candidate_scores,
        production_scores,
        metric=profile.gate_metric(),
        tolerance=profile.rollback.regression_tolerance,
    )
    return GateDrill(candidate_scores, production_scores, gate, version)


@dataclass
class RollbackDrill:
    """What production served while forced, the version the rollback restored, and how far the
    restored stack's logits are from those before the incident."""

    forced: AdapterRef
    restored: AdapterVersion
    max_abs_diff: float


def force_and_roll_back(
    model,
    store: Registry,
    version: AdapterVersion,
    probe: torch.Tensor,
    before: torch.Tensor,
    *,
    base: BaseIdentity,
    parent: AdapterRef,
    over: str = "domain",
    name: str = "task_restored",
) -> RollbackDrill:
    """Force ``version`` into production past the gate, roll its alias back, and load what it restores.

    The restored version comes from the store (hash, ``base`` and ``parent`` checked) as adapter
    ``name`` and runs on top of ``over``; its logits on ``probe`` are compared with ``before``, the
    live stack's before the incident.
    """
    store.promote(version.name, version.version, reason="drill: forced past the gate")
    forced = store.resolve(f"{version.name}@{PRODUCTION}").ref
    store.rollback(version.name, reason="drill: regression seen in production")
    restored = store.resolve(f"{version.name}@{PRODUCTION}")
    model = load_adapter(model, restored, name, base=base, active_parent=parent)
    activate(model, [over, name])
    return RollbackDrill(forced, restored, max_abs_diff(before, logits(model, probe)))


# --------------------------------------------------------------------------- drill 4: the domain rolled back


def train_newer_versions(
    model,
    run: Run,
    store: Registry,
    *,
    domain_lora: LoraConfig,
    task_lora: LoraConfig,
    base: BaseIdentity,
    seed: int = 1,
    names: tuple[str, str] = ("domain_next", "task_next"),
) -> tuple[AdapterVersion, AdapterVersion]:
    """Train a newer domain version and a task version on top of it, publish both; return them.

    Two short runs (``rollback.candidate_steps`` each, ``seed``) on the run's data, in ``model`` (a
    PeftModel; the two adapters are added to it under ``names``, and only they are active while they
    train): the domain adapter on the DAPT blocks (``domain_lora``:
    ``modeling.domain_lora_config``), then the task adapter on the SFT set over it (``task_lora``). Both
    are published, not promoted; the task version records the new domain version as its parent.
    """
    profile, steps = run.profile, run.profile.rollback.candidate_steps
    domain_name, task_name = names
    train_blocks, _ = load_dapt_blocks(run)
    sft = load_sft(run)

    domain_spec = short_run(profile.dapt.train, steps, seed=seed)
    model = add_adapter(model, domain_name, domain_lora, seed=seed)
    activate(model, [domain_name], trainable=domain_name)
    domain_run = train_adapter(
        model,
        domain_name,
        train_blocks,
        None,  # the domain gate scores it afterwards
        domain_spec,
        run.training(domain_name),
        default_data_collator,
        compute_dtype=profile.model.compute_dtype,
        progress=False,
    )
    domain_v = store.publish(
        "domain",
        domain_run.adapter_dir,
        base=base,
        parent=None,
        params=domain_spec.model_dump(),
        data_fingerprint=fingerprint_dataset(train_blocks),
        metrics={"train_loss": domain_run.train_loss},
        note="drill: newer domain",
    )

    task_spec = short_run(profile.sft.train, steps, seed=seed)
    model = add_adapter(model, task_name, task_lora, seed=seed)
    activate(model, [domain_name, task_name], trainable=task_name)
    task_run = train_adapter(
        model,
        task_name,
        sft.train,
        None,
        task_spec,
        run.training(task_name),
        sft_collator(run.tokenizer),
        compute_dtype=profile.model.compute_dtype,
        progress=False,
    )
    task_v = store.publish(
        "task",
        task_run.adapter_dir,
        base=base,
        parent=domain_v.ref,
        params=task_spec.model_dump(),
        data_fingerprint=fingerprint_dataset(sft.train),
        metrics={"train_loss": task_run.train_loss},
        note="drill: task on the newer domain",
    )
    return domain_v, task_v


def _gate_held_out(profile: Profile, tokenizer, sft: SftData) -> dict[str, Any]:
    """``stack_scores``' arguments for the gates: the first ``compose.eval_examples`` held-out examples.

    One definition, so the domain gate's retrained task is scored on exactly the examples drill 3's
    production scores (which it reuses) came from.
    """
    n = min(profile.compose.eval_examples, len(sft.eval_examples))
    return dict(
        qa_examples=sft.eval_examples[:n],
        qa_tokenized=sft.eval_tokenized.select(range(n)),
        collator=sft_collator(tokenizer),
        max_new_tokens=profile.sft.max_new_tokens,
    )


def gate_domain_candidate(
    model,
    run: Run,
    sft: SftData,
    *,
    candidate: tuple[str, str] = ("domain_next", "task_next"),
    production: tuple[str, str] = ("domain", "task"),
    production_task_scores: dict[str, Any],
    grid: RecordedGrid | None = None,
) -> dict[str, Any]:
    """The domain gate (:func:`~modft_utils.evaluate.scores.domain_gate`) for a candidate domain adapter.

    ``candidate`` names the candidate domain adapter of ``model`` and the task adapter retrained on it,
    ``production`` the production pair. Perplexities are measured on the run's held-out DAPT blocks
    (``dapt.eval_blocks``) and ``data.generic_eval_file`` for the bare base, base + production domain and
    base + candidate domain; the retrained task stack is scored as ``gate_candidate`` scores stacks, and
    compared with ``production_task_scores`` (the production stack's scores on the same held-out
    examples, as :func:`gate_candidate` returned them: not computed twice). ``grid`` (notebook 04's)
    gives the perplexities of the base and of base + production domain, measured there on the same
    blocks. The gate's dict gains the perplexities under ``perplexity``.
    """
    profile, tokenizer = run.profile, run.tokenizer
    _, eval_blocks = load_dapt_blocks(run)
    eval_blocks = eval_blocks.select(range(min(len(eval_blocks), profile.dapt.eval_blocks)))
    generic = load_generic_blocks(profile, tokenizer, profile.dapt.eval_blocks)
    ppl: dict[str, dict[str, float]] = {}
    for label, names in (("base", []), ("production", [production[0]]), ("candidate", [candidate[0]])):
        known = grid.perplexities(names) if grid and label != "candidate" else None
        if known is not None and ("generic_ppl" in known) == (generic is not None):
            ppl[label] = known
            continue
        activate(model, names)
        ppl[label] = {"domain_ppl": perplexity(model, eval_blocks)}
        if generic is not None:
            ppl[label]["generic_ppl"] = perplexity(model, generic)
    activate(model, list(candidate))
    task_scores = stack_scores(model, tokenizer, **_gate_held_out(profile, tokenizer, sft))
    gate = domain_gate(
        ppl["candidate"],
        ppl["production"],
        ppl["base"],
        task_candidate=task_scores,
        task_production=production_task_scores,
        metric=profile.gate_metric(),
        task_tolerance=profile.rollback.regression_tolerance,
        generic_tolerance=profile.rollback.generic_ppl_tolerance,
    )
    return {**gate, "perplexity": ppl, "task_candidate": task_scores}


@dataclass
class DomainRollbackDrill:
    """Why the stack refused the task version on the rolled-back domain (None: it did not), and how
    far the stack restored by rolling back the task too is from the live stack before both incidents."""

    refused: str | None
    max_abs_diff: float

    @property
    def flagged(self) -> bool:
        return self.refused is not None


def roll_back_domain(
    served: AdapterStack,
    store: Registry,
    probe: torch.Tensor,
    before: torch.Tensor,
) -> DomainRollbackDrill:
    """Roll back the domain alias, try to serve production, then roll the task back too and serve it.

    With the task version in production trained on the domain version just rolled back, the stack
    must refuse to compose the two (:class:`~modft_utils.adapters.ParentMismatchError`); once the task
    alias is rolled back too, the production stack must compute what ``before`` holds.
    """
    refs = (f"domain@{PRODUCTION}", f"task@{PRODUCTION}")
    store.rollback("domain", reason="drill: newer domain regressed")
    try:
        served.use(*refs)
        refused = None
    except ParentMismatchError as exc:
        refused = str(exc)
    store.rollback("task", reason="drill: follow the domain rollback")
    served.use(*refs)
    return DomainRollbackDrill(refused, max_abs_diff(before, logits(served.model, probe)))
