"""`modft export --target`: what each engine refuses is named before anything is written."""

import json

import pytest

from modft_utils import serve
from modft_utils.serve import targets

PLAIN = {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"], "bias": "none"}


def _adapter(tmp_path, name, **changes):
    folder = tmp_path / name
    folder.mkdir()
    (folder / targets.ADAPTER_CONFIG).write_text(json.dumps({**PLAIN, **changes}))
    return folder


@pytest.mark.parametrize(
    ("changes", "module", "problem"),
    [
        ({"use_dora": True}, "use_dora", "DoRA"),
        ({"modules_to_save": ["score"]}, "modules_to_save ['score']", "full copies"),
        ({"bias": "lora_only"}, "bias 'lora_only'", "biases"),
        ({"rank_pattern": {"q_proj": 4}}, "rank_pattern ['q_proj']", "per-module ranks"),
        ({"target_parameters": ["experts.gate_up_proj"]}, "target_parameters", "fused expert"),
        ({"target_modules": ["q_proj", "lm_head"]}, "target_modules 'lm_head'", "LM head"),
        ({"peft_type": "IA3"}, "adapter_config.json", "IA3"),
    ],
)
def test_vllm_lint_names_adapter_module_and_fix(tmp_path, changes, module, problem):
    dirs = {"domain": _adapter(tmp_path, "domain"), "task": _adapter(tmp_path, "task", **changes)}
    findings = serve.lint("vllm", dirs)
    assert len(findings) == 1
    (f,) = findings
    assert f.adapter == "task" and module in f.module and problem in f.problem and f.fix
    # PEFT itself loads all of these, and so does a merge
    assert serve.lint("peft", dirs) == [] and serve.lint("merged", dirs) == []


def test_plain_lora_passes_and_the_combined_rank_is_checked(tmp_path):
    dirs = {"domain": _adapter(tmp_path, "domain"), "task": _adapter(tmp_path, "task", r=8)}
    assert serve.lint("vllm", dirs) == []
    big = {"domain": _adapter(tmp_path, "d2", r=320), "task": _adapter(tmp_path, "t2", r=256)}
    (f,) = serve.lint("vllm", big)
    assert f.adapter == "domain+task" and f.module == "rank 576"


def test_max_lora_rank_is_the_smallest_value_vllm_takes():
    assert [serve.vllm_max_lora_rank(r) for r in (1, 2, 8, 9, 24, 32, 257, 321, 512)] == [
        1, 8, 8, 16, 32, 32, 320, 512, 512,
    ]  # fmt: skip
    with pytest.raises(serve.ExportError, match="513"):
        serve.vllm_max_lora_rank(513)


def test_a_refused_export_writes_nothing(tmp_path):
    dirs = {"task": _adapter(tmp_path, "task", use_dora=True)}
    out = tmp_path / "out" / "vllm"
    with pytest.raises(serve.LintError, match="adapter 'task', use_dora") as err:
        serve.export_stack("vllm", None, ["task"], out, adapter_dirs=dirs, dense_loader=lambda: None, tokenizer=None)
    assert len(err.value.findings) == 1
    assert not out.exists() and not (tmp_path / "out").exists()


def test_unknown_target_is_named():
    with pytest.raises(serve.ExportError, match="'tensorrt'"):
        serve.lint("tensorrt", {})
