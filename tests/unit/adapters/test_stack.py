"""AdapterStack: versions from the store stacked on one base, switched by flags, parents checked."""

import warnings

import pytest
import torch

from modft_utils import adapters, evaluate, modeling
from modft_utils.adapters import AdapterStack, ParentMismatchError, load_adapter
from modft_utils.config import LoraSpec
from modft_utils.modeling import BaseRef
from modft_utils.store import registry

X = torch.randint(2, 96, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def store(micro_profile, tmp_path_factory, random_adapter):
    """domain@1, domain@2; task@1 and task@2 trained on domain@1, task@3 on domain@2; production: 1 and 1."""
    out = tmp_path_factory.mktemp("stack")
    model = modeling.load_base(micro_profile, BaseRef(micro_profile.model.id), load_in_4bit=False)
    identity = registry.base_identity(model, model_id=micro_profile.model.id)
    store = registry.Registry(out / "registry")
    plan = [
        ("domain", LoraSpec(r=4, alpha=8), None),
        ("domain", LoraSpec(r=4, alpha=8), None),
        ("task", LoraSpec(r=2, alpha=4), "domain@1"),
        ("task", LoraSpec(r=2, alpha=4), "domain@1"),
        ("task", LoraSpec(r=2, alpha=4), "domain@2"),
    ]
    for seed, (name, spec, parent) in enumerate(plan, start=1):
        model = random_adapter(model, f"a{seed}", spec, seed)
        folder = adapters.save_adapter(model, f"a{seed}", out / "adapters" / f"a{seed}")
        store.publish(name, folder, base=identity, parent=parent, params={}, data_fingerprint="", metrics={})
    store.promote("domain", 1, reason="test")
    store.promote("task", 1, reason="test")
    return store


@pytest.fixture
def stack(micro_profile, store):
    base = modeling.load_base(micro_profile, BaseRef(micro_profile.model.id))  # 4-bit, as the workbook runs it
    return AdapterStack(base, store, registry.base_identity(base, model_id=micro_profile.model.id))


def test_parent_mismatch_refused_then_shown_when_forced(stack):
    with pytest.raises(ParentMismatchError, match=r"task@1 was trained on domain@1, but the active domain is domain@2"):
        stack.use("domain@2", "task@1")
    assert adapters.loaded_adapters(stack.model) == []  # refused before anything was loaded
    with pytest.raises(ParentMismatchError, match="active domain is none"):
        stack.use("task@1")

    with pytest.warns(UserWarning, match="parent mismatch"):
        stack.use("domain@2", "task@1", force_parent=True)
    assert stack.active == ["domain@2", "task@1"]
    assert stack.mismatches() == ["task@1 was trained on domain@1, but the active domain is domain@2"]
    assert stack.forced == stack.mismatches()
    table = stack.describe()
    assert "NO: active domain is domain@2" in table and "parent mismatch (forced)" in table

    stack.use("domain@1", "task@1")
    assert stack.mismatches() == [] and "NO:" not in stack.describe()
    with pytest.raises(ParentMismatchError, match="task@1 was trained on domain@1"):
        stack.swap("domain", "domain@2")
    with pytest.raises(ParentMismatchError, match="active domain is none"):
        stack.disable("domain")
    assert stack.active == ["domain@1", "task@1"]


def test_swap_disable_enable_and_idempotent_load(stack):
    assert stack.use("domain@production", "task@production") == ["domain_v1", "task_v1"]
    assert stack.active == ["domain@1", "task@1"]
    full = evaluate.logits(stack.model, X)

    stack.swap("task", "task@2")
    assert stack.active == ["domain@1", "task@2"]
    assert evaluate.max_abs_diff(full, evaluate.logits(stack.model, X)) > 0.0
    stack.swap("task", "task@1")
    assert evaluate.max_abs_diff(full, evaluate.logits(stack.model, X)) == 0.0

    with pytest.raises(ParentMismatchError):
        stack.swap("task", "task@3")  # trained on domain@2
    assert stack.active == ["domain@1", "task@1"]

    stack.disable("task")
    assert stack.active == ["domain@1"]
    stack.enable("task")
    assert stack.active == ["domain@1", "task@1"]
    assert evaluate.max_abs_diff(full, evaluate.logits(stack.model, X)) == 0.0

    loaded = adapters.loaded_adapters(stack.model)
    assert stack.load("domain@1") == "domain_v1" and stack.load("domain@production") == "domain_v1"
    assert adapters.loaded_adapters(stack.model) == loaded
    assert stack.use() == [] and stack.active == []


def test_switching_is_flags_only(stack):
    """Switching loaded versions moves no tensor and makes nothing trainable. How fast it is, is the
    benchmark's (`AdapterStack.use` and `disable / enable` rows, goal <= 0.001 of a reload)."""
    stack.use("domain@1", "task@1")
    stack.load("task@2")
    ptrs = {k: p.data_ptr() for k, p in stack.model.named_parameters()}
    for refs in [("domain@1", "task@1"), ("domain@1",), ("domain@1", "task@2"), ()] * 3:
        stack.use(*refs)
    stack.use("domain@1", "task@1")
    for _ in range(3):
        stack.disable("task")
        stack.enable("task")
    assert stack.active == ["domain@1", "task@1"]
    assert ptrs == {k: p.data_ptr() for k, p in stack.model.named_parameters()}
    assert not any(p.requires_grad for p in stack.model.parameters())


def test_task_off_equals_separately_loaded_base_plus_domain(micro_profile, store, stack):
    stack.use("domain@production", "task@production")
    full = evaluate.logits(stack.model, X)
    stack.disable("task")
    task_off = evaluate.logits(stack.model, X)
    stack.use()
    all_off = evaluate.logits(stack.model, X)

    ref = BaseRef(micro_profile.model.id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = load_adapter(
            modeling.load_base(micro_profile, ref), store.resolve("domain@production"), "domain", base=stack.base
        )
    assert evaluate.max_abs_diff(task_off, evaluate.logits(reference, X)) == 0.0
    assert evaluate.max_abs_diff(all_off, evaluate.logits(modeling.load_base(micro_profile, ref), X)) == 0.0
    assert evaluate.max_abs_diff(full, task_off) > 0.0
