"""Profiles fail before any loading, naming the key or path at fault."""

import pytest
import yaml

from modft_utils.config import ProfileError, check_device, describe, load_profile, parse_override


def test_shipped_profiles_validate(root):
    tiny = load_profile(root / "params" / "tiny.yaml")
    assert tiny.model.id == "tiny" and tiny.model.tiny.num_local_experts >= 2
    real = load_profile(root / "params" / "minimax_m2.yaml")
    assert real.model.id == "MiniMaxAI/MiniMax-M2"
    assert (real.data.dapt.hub_name, real.data.dapt.hub_config, real.data.sft.hub_name) == ("wikitext", "wikitext-2-raw-v1", "squad")
    assert real.data.sft_subset_size == 1000 and real.model.load_in_4bit and real.model.quant_type == "nf4"


def test_unknown_key_wrong_type_and_range_are_named(root):
    with pytest.raises(ProfileError) as err:
        load_profile(root / "params" / "tiny.yaml", {"dapt.train.max_stepz": 3, "sft.lora.r": 0, "data.block_size": "big"})
    text = str(err.value)
    assert "tiny.yaml" in text
    assert "dapt.train.max_stepz: unknown key" in text
    assert "sft.lora.r" in text and "greater than or equal to 1" in text
    assert "data.block_size" in text


def test_missing_data_path_is_named(tmp_path, root):
    tree = yaml.safe_load((root / "params" / "tiny.yaml").read_text())
    tree["data"]["sft"]["train_file"] = "nowhere/train.jsonl"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(tree))
    with pytest.raises(ProfileError, match=r"data\.sft\.train_file: .*nowhere/train\.jsonl does not exist"):
        load_profile(bad)


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(broken)


def test_cuda_profile_refused_on_cpu(root):
    import torch

    real = load_profile(root / "params" / "minimax_m2.yaml")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ProfileError, match="needs a CUDA GPU"):
        check_device(real)


def test_overrides_parse_as_yaml():
    assert parse_override("dapt.train.max_steps=20") == ("dapt.train.max_steps", 20)
    assert parse_override("model.load_in_4bit=false") == ("model.load_in_4bit", False)
    with pytest.raises(ProfileError, match="KEY=VALUE"):
        parse_override("dapt.train.max_steps")


def test_every_key_is_documented():
    rows = describe()
    keys = {r[0] for r in rows}
    assert {"dapt.lora.r", "data.block_size", "model.tiny.hidden_size", "sft.train.max_steps"} <= keys
    assert all(help_text for key, _, _, help_text in rows if not key.startswith(("dapt.", "sft.")) or "lora" in key or "train" in key)
