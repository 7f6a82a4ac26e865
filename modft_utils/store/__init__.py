"""The adapter store: versioned LoRA adapters as plain files at a local path or any fsspec URL, with
aliases, an audit log, a lock, recovery from killed writers, and verify. It knows nothing of PEFT.

What notebooks, the CLI and tests call; the modules beside this file hold the rest."""

from modft_utils.store.records import (
    BASE_RECORD,
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterRef,
    AdapterVersion,
    BaseIdentity,
    IncompatibleAdapterError,
    IntegrityError,
    InvalidAdapterError,
    RegistryError,
    base_identity,
    base_identity_from_config_file,
    check_adapter_dir,
    check_files_against_manifest,
    check_name,
    config_sha256,
    identity_of_config,
    loads_json,
    pickle_files,
    read_base_record,
    verify_version,
)
from modft_utils.store.registry import DEFAULT_ROOT, Registry

__all__ = [
    "AdapterRef",
    "AdapterVersion",
    "BASE_RECORD",
    "BaseIdentity",
    "CONFIG_FILE",
    "DEFAULT_ROOT",
    "IncompatibleAdapterError",
    "IntegrityError",
    "InvalidAdapterError",
    "Registry",
    "RegistryError",
    "WEIGHTS_FILE",
    "base_identity",
    "base_identity_from_config_file",
    "identity_of_config",
    "check_adapter_dir",
    "check_files_against_manifest",
    "check_name",
    "config_sha256",
    "loads_json",
    "pickle_files",
    "read_base_record",
    "verify_version",
]
