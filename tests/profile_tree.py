"""A shipped profile as a YAML tree with every data path absolute, so a copy anywhere reads the same files."""

from __future__ import annotations

from pathlib import Path

import yaml

# Where a profile names a file, relative to params/: the DAPT and SFT splits, the tiny base's corpus,
# the generic text forgetting is measured on, the replay text, the knowledge probe.
_PATHS = (
    ("data", "dapt", "train_file"),
    ("data", "dapt", "validation_file"),
    ("data", "sft", "train_file"),
    ("data", "sft", "validation_file"),
    ("model", "tiny", "generic_corpus"),
    ("data", "generic_eval_file"),
    ("data", "replay_file"),
    ("data", "knowledge_probe"),
)


def portable_tree(root: Path, name: str) -> dict:
    """params/<name>.yaml (no ``extends``) with the paths in :data:`_PATHS` made absolute."""
    tree = yaml.safe_load((root / "params" / f"{name}.yaml").read_text())
    for keys in _PATHS:
        node = tree
        for k in keys[:-1]:
            node = node.get(k) or {}
        if isinstance(node.get(keys[-1]), str):
            node[keys[-1]] = str((root / "params" / node[keys[-1]]).resolve())
    return tree
