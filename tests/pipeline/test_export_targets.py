"""`modft export --target vllm` on the tiny run's store: the export computes what the live stack does.

vLLM itself is not installed by `make test` (`make vllm-check` builds it apart): here transformers +
PEFT load the exported base and adapter exactly as vLLM would be given them (a plain safetensors
base with the vocabulary extension's rows in it, one pure-LoRA adapter), and the launch line is checked.
"""

import json

import pytest
import torch
from safetensors import safe_open

from modft_utils import adapters, cli, evaluate, modeling, runs, serve
from modft_utils.adapters import AdapterStack
from modft_utils.serve import command
from modft_utils.store import Registry


@pytest.mark.slow
def test_vllm_export_equals_the_live_stack(pipeline, tmp_path, capsys):
    run = runs.folder(pipeline.run_dir)
    out = tmp_path / "vllm"
    argv = ["export", "--target", "vllm", "--run", str(run), "--registry", str(pipeline.registry), "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / serve.EXPORT_RECORD).read_text())

    # what was exported: the production versions, by number, and the launch line for them
    registry = Registry(str(pipeline.registry))
    expected = [f"{n}@{registry.aliases(n)['production']}" for n in ("domain", "task")]
    assert [v["ref"] for v in record["versions"]] == expected
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert "trainable_token_indices" not in cfg and cfg["lora_alpha"] == cfg["r"]  # cat: scaling 1
    launch = record["launch"]
    assert launch[launch.index("--max-lora-rank") + 1] == str(serve.vllm_max_lora_rank(cfg["r"]))
    assert f"base+domain+task={out / 'adapter'}" in launch and " ".join(launch[:3]) in printed
    # the domain adapter's trained rows of the extended vocabulary went into the base, not the adapter
    assert record["token_rows_moved_into_base"] == {"model.embed_tokens": 100, "lm_head": 100}
    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), framework="pt") as fh:
        assert not [k for k in fh.keys() if "trainable_tokens" in k]

    # the export, loaded as an engine gets it, against the live stack (4-bit base, the checked loader)
    profile = runs.read_resolved(run)
    live = command.loader(run, profile)()
    stack = AdapterStack(live.model, registry, live.base)
    stack.use(*expected)
    tok = live.tokenizer
    ext = modeling.load_decision(run.vocab_extension)
    rows = torch.tensor(ext.token_ids)

    def ids_of(text):
        return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])

    # a prompt with the extension's words: their rows come from the base folder now
    ids = ids_of("The " + ", ".join(ext.words[:6]) + " and the council met at dawn")
    assert torch.isin(ids, rows).sum() >= 6
    reference = evaluate.logits(stack.model, ids)
    exported = modeling.load_merged(out / "base", profile)
    exported = adapters.load_adapter(exported, out / "adapter", "stack")
    adapters.activate(exported, ["stack"])
    got = evaluate.logits(exported, ids)
    rel = float((got - reference).abs().max() / reference.abs().max())
    assert rel < 1e-5, rel

    # The base folder alone is the base except for the extension's rows (the domain adapter's now):
    # on a prompt without those words, every other vocabulary column is the base's.
    stack.use()
    plain = ids_of("the council met at dawn and the fishers sailed to the isles")
    plain = plain[~torch.isin(plain, rows)].unsqueeze(0)  # the base tokenizer's pieces only
    keep = ~torch.isin(torch.arange(reference.shape[-1]), rows)
    want = evaluate.logits(stack.model, plain)[..., keep]
    adapters.activate(exported, [])
    base_rel = float((evaluate.logits(exported, plain)[..., keep] - want).abs().max() / want.abs().max())
    assert base_rel < 1e-5, base_rel
