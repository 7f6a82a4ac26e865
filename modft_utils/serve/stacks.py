"""Named stacks for the server: which store references a request's ``model`` stands for.

A stack spec is a name and the store references it runs, in order (``domain@production``,
``task@candidate``): ``--stack NAME=domain@production+task@candidate``. The defaults are the
notebooks' stacks (:data:`modft_utils.evaluate.STACKS`) that can run from the store as it is
published: ``base``, ``base+domain`` and ``base+domain+task``, each on the ``production`` alias
(``base+task`` is left out: a task adapter is trained on a domain version, and the stack check
refuses it without one).

What a stack resolves to at a moment is its *identity*, the string every answer carries in
``system_fingerprint``: ``base:1a2b3c4d+domain@5+task@7`` (the first 8 hex digits of the base's
config hash, then the exact versions).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from modft_utils.errors import ModftError
from modft_utils.evaluate import STACKS
from modft_utils.store import BaseIdentity, check_name

DEFAULT_STACKS = ("base", "base+domain", "base+domain+task")
DEFAULT_ALIAS = "production"
# The stack names a request's `model` may carry: OpenAI model ids are free text, but a name that shows up
# in logs, headers and URLs (/admin/stacks/{name}) stays printable and unambiguous.
_STACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+:-]{0,99}$")
_SELECTOR = re.compile(r"^([0-9]+|[a-z][a-z0-9_-]*)$")


class StackSpecError(ModftError, ValueError):
    """A ``--stack`` value that cannot be read; the message quotes it and says the form."""


@dataclass(frozen=True)
class StackSpec:
    """A named stack: the store references it runs, in order (empty: the bare base)."""

    name: str
    refs: tuple[str, ...]

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """The adapters of the stack (``("domain", "task")``), in order."""
        return tuple(ref.partition("@")[0] for ref in self.refs)

    def __str__(self) -> str:
        return f"{self.name}={'+'.join(self.refs) or 'base'}"


def parse_stack(text: str) -> StackSpec:
    """``NAME=domain@production+task@candidate`` as a :class:`StackSpec`.

    Args:
        text: the ``--stack`` value. The right side is ``+``-separated references ``adapter@selector``
            (a version number or an alias; a bare ``adapter`` means ``adapter@production``); ``base`` or
            nothing after ``=`` is the bare base.
    """
    name, sep, right = text.partition("=")
    name = name.strip()
    if not sep or not _STACK_NAME.match(name):
        raise StackSpecError(
            f"--stack {text!r}: expected NAME=ADAPTER@SELECTOR+..., e.g. "
            "'prod=domain@production+task@production' (NAME: letters, digits, . _ + : -)"
        )
    refs: list[str] = []
    right = right.strip()
    if right and right != "base":
        for part in right.split("+"):
            adapter, at, selector = part.strip().partition("@")
            selector = selector if at else DEFAULT_ALIAS
            try:
                check_name(adapter)
            except ModftError as err:
                raise StackSpecError(f"--stack {text!r}: {err}") from None
            if not _SELECTOR.match(selector):
                raise StackSpecError(f"--stack {text!r}: {part!r}: the selector must be a version number or an alias")
            refs.append(f"{adapter}@{selector}")
    spec = StackSpec(name, tuple(refs))
    names = spec.adapter_names
    if len(set(names)) != len(names):
        raise StackSpecError(f"--stack {text!r}: one adapter twice in a stack")
    return spec


def default_stacks(alias: str = DEFAULT_ALIAS) -> list[StackSpec]:
    """The notebooks' stacks that serve by default, each adapter on ``alias``."""
    return [StackSpec(name, tuple(f"{adapter}@{alias}" for adapter in STACKS[name])) for name in DEFAULT_STACKS]


def stack_specs(extra: Iterable[str] = (), *, defaults: bool = True) -> list[StackSpec]:
    """The defaults (unless ``defaults`` is False), then each ``--stack`` value, which replaces a default of its name."""
    specs = {s.name: s for s in (default_stacks() if defaults else [])}
    for text in extra:
        spec = parse_stack(text)
        specs[spec.name] = spec
    if not specs:
        raise StackSpecError("no stack to serve: give --stack NAME=... (or keep the defaults)")
    return list(specs.values())


def identity(base: BaseIdentity, versions: Sequence[tuple[str, int]]) -> str:
    """What answered: ``base:<8 hex of the base config hash>`` then ``+name@N`` for each active version."""
    return "+".join([f"base:{base.config_sha256[:8]}", *(f"{name}@{number}" for name, number in versions)])
