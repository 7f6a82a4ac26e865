"""`modft serve --engine vllm`: which version sets are prepared, and a front that cannot use its vLLM says why.

The front driving a real vLLM (answers, alias follow, emergency off, refused token rows) is checked by
`make vllm-check` (benchmarks/vllm_check.py `follow_check`): vLLM's own environment is too large for
`make test`.
"""

import argparse
import json
from dataclasses import dataclass

import pytest

from modft_utils.config import ProfileError
from modft_utils.serve import command, free_port
from modft_utils.serve.remote import VllmEngine, fallback_sets, label
from modft_utils.serve.stacks import default_stacks
from modft_utils.store import Registry


@dataclass(frozen=True)
class Ref:
    name: str
    version: int


@dataclass(frozen=True)
class Manifest:
    parent: Ref | None


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    manifest: Manifest


DOMAIN = Version("domain", 1, Manifest(None))
TASK = Version("task", 2, Manifest(Ref("domain", 1)))


def test_fallbacks_keep_every_parent_and_come_full_set_first():
    sets = fallback_sets((DOMAIN, TASK))
    assert sets == [(DOMAIN, TASK), (DOMAIN,), ()]  # never the task without the domain it was trained on
    assert fallback_sets((TASK,)) == [(TASK,), ()]  # a stack without the parent's adapter keeps the task
    assert label([("domain", 1), ("task", 2)]) == "domain@1+task@2"


def _engine(tmp_path, manifest: dict | None, wait_s: float = 0.3) -> VllmEngine:
    export = tmp_path / "export"
    export.mkdir()
    if manifest is not None:
        (export / "modft_export.json").write_text(json.dumps(manifest))

    def never():
        raise AssertionError("the base is loaded only once vLLM is usable")

    return VllmEngine(
        never,
        Registry(str(tmp_path / "store")),
        default_stacks(),
        engine_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        engine_export=export,
        work_dir=tmp_path / "work",
        connect_wait_s=wait_s,
    )


@pytest.mark.parametrize(
    ("manifest", "said"),
    [
        (None, "cannot read modft_export.json"),
        ({"kind": "merged"}, "is a 'merged' export, not vllm"),
        ({"kind": "vllm", "launch": ["vllm", "serve", "x", "--served-model-name", "base"]}, "did not answer /health"),
    ],
)
def test_a_front_without_a_usable_vllm_fails_to_start_and_says_why(tmp_path, manifest, said):
    engine = _engine(tmp_path, manifest)
    assert engine.load() is False
    assert engine.status == "failed" and said in engine.failure
    engine.stop()


def test_engine_options_need_each_other():
    args = argparse.Namespace(engine="embedded", engine_url="http://127.0.0.1:1", engine_export=None)
    with pytest.raises(ProfileError, match="--engine-url needs --engine vllm"):
        command.make_engine(args, None, [], "me")
    args = argparse.Namespace(engine="vllm", engine_url=None, engine_export=None)
    with pytest.raises(ProfileError, match="--engine vllm needs --engine-url"):
        command.make_engine(args, None, [], "me")
