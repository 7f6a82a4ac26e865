"""Profiles fail before any loading, naming the key or path at fault."""

import pytest
import yaml

from modft_utils.config import ProfileError, check_device, describe, load_profile, parse_override


def test_every_shipped_profile_loads_and_is_documented(root):
    docs = (root / "docs" / "profiles.md").read_text()
    shipped = sorted((root / "params").glob("*.yaml"))
    assert len(shipped) >= 9
    for path in shipped:
        assert load_profile(path).name == path.stem, path
        assert f"`params/{path.name}`" in docs, f"docs/profiles.md does not name {path.name}"


def test_shipped_profiles_validate(root):
    tiny = load_profile(root / "params" / "tiny.yaml")
    assert tiny.model.id == "tiny" and tiny.model.tiny.num_local_experts >= 2
    real = load_profile(root / "params" / "minimax_m2.yaml")
    assert real.model.id == "MiniMaxAI/MiniMax-M2"
    assert (real.data.dapt.hub_name, real.data.dapt.hub_config, real.data.sft.hub_name) == (
        "wikitext",
        "wikitext-2-raw-v1",
        "squad",
    )
    assert real.data.sft_subset_size == 1000 and real.model.load_in_4bit and real.model.quant_type == "nf4"


def test_unknown_key_wrong_type_and_range_are_named(root):
    with pytest.raises(ProfileError) as err:
        load_profile(
            root / "params" / "tiny.yaml", {"dapt.train.max_stepz": 3, "sft.lora.r": 0, "data.block_size": "big"}
        )
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
    assert all(
        help_text
        for key, _, _, help_text in rows
        if not key.startswith(("dapt.", "sft.")) or "lora" in key or "train" in key
    )


@pytest.mark.parametrize(("uri", "named"), [("foo://store", "'foo'"), ("memory://ok::foo://x", "'foo'")])
def test_a_registry_url_with_an_unknown_protocol_is_named_before_any_run(root, uri, named):
    with pytest.raises(ProfileError, match=rf"tiny\.yaml.*\n  - registry: .*unknown storage protocol {named}"):
        load_profile(root / "params" / "tiny.yaml", {"registry": uri})
    for fine in ("file:///tmp/store", "../outputs/registry"):
        assert load_profile(root / "params" / "tiny.yaml", {"registry": fine}).registry == fine
    # memory:// is known to fsspec, but each notebook's process has its own: 03 would not find 02's publish.
    with pytest.raises(ProfileError, match=r"\n  - registry: memory:// is the memory of one process"):
        load_profile(root / "params" / "tiny.yaml", {"registry": "memory://store"})


def test_modft_validate_names_a_model_id_that_cannot_be_read(root, tmp_path, capsys):
    from modft_utils.cli import main

    assert main(["validate", "--profile", str(root / "params" / "tiny.yaml")]) == 0
    assert "is valid" in capsys.readouterr().out
    typo = "MiniMaxAI/MiniMax-M3"  # offline here, as in the whole suite: not in the hub cache either
    assert main(["validate", "--profile", str(root / "params" / "tiny.yaml"), "--set", f"model.id={typo}"]) == 2
    assert f"model.id {typo!r}: cannot read the config" in capsys.readouterr().err
    missing_folder = tmp_path / "models" / "base"
    missing_folder.mkdir(parents=True)
    assert (
        main(["validate", "--profile", str(root / "params" / "tiny.yaml"), "--set", f"model.id={missing_folder}"]) == 2
    )
    assert "has no config.json" in capsys.readouterr().err


def test_modft_validate_checks_the_profile_not_this_machine(root, capsys):
    # A GPU profile validates on a laptop: requires_cuda is for `modft run`, checked before loading.
    from modft_utils.cli import main

    assert main(["validate", "--profile", str(root / "params" / "tiny.yaml"), "--set", "model.requires_cuda=true"]) == 0
    assert "needs a CUDA GPU to run" in capsys.readouterr().out


def test_compute_dtype_auto_is_resolved_when_read(root, monkeypatch):
    """``auto`` never reaches a run: the profile holds the dtype this machine multiplies in natively."""
    from modft_utils import machine

    for native in ("bfloat16", "float32"):
        monkeypatch.setattr(machine, "native_compute_dtype", lambda native=native: native)
        prof = load_profile(root / "params" / "tiny.yaml", {"model.compute_dtype": "auto"})
        assert prof.model.compute_dtype == native
        assert prof.model_dump()["model"]["compute_dtype"] == native
    explicit = load_profile(root / "params" / "tiny.yaml", {"model.compute_dtype": "float16"})
    assert explicit.model.compute_dtype == "float16"


def test_attention_auto_is_resolved_when_read(root, monkeypatch):
    """``auto`` attention is eager on a CPU and sdpa on a GPU, fixed in the profile a run records."""
    from modft_utils import machine

    assert machine.native_attention(cuda=False) == "eager" and machine.native_attention(cuda=True) == "sdpa"
    for native in ("eager", "sdpa"):
        monkeypatch.setattr(machine, "native_attention", lambda native=native: native)
        prof = load_profile(root / "params" / "smollm2.yaml")
        assert prof.model.attn_implementation == native
        assert prof.model_dump()["model"]["attn_implementation"] == native
    assert load_profile(root / "params" / "tiny.yaml", {}).model.attn_implementation == "sdpa"  # pinned numbers


def test_native_compute_dtype_follows_the_hardware(tmp_path):
    from modft_utils.machine import cpu_flags, native_compute_dtype

    assert native_compute_dtype(cuda=False, flags={"avx2", "avx512f"}) == "float32"
    assert native_compute_dtype(cuda=False, flags={"avx512f", "avx512_bf16"}) == "bfloat16"
    assert native_compute_dtype(cuda=False, flags={"amx_bf16", "amx_tile"}) == "bfloat16"
    assert native_compute_dtype(cuda=True, cuda_bf16=True) == "bfloat16"
    assert native_compute_dtype(cuda=True, cuda_bf16=False) == "float16"
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16\n")
    assert cpu_flags(info) == {"fpu", "sse2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") == set()
