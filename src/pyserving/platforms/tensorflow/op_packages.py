"""Op libraries shipped as Python packages, imported when a SavedModel needs their ops.

TensorFlow registers an op when the shared library defining it is loaded into the process.
``tensorflow_model_server`` links the op libraries it supports (TF Text among them) into its
binary; here they come from Python packages (``tensorflow-text``), which load their libraries
when imported. Nothing imports them up front: before a SavedModel's graph is imported,
:func:`require_ops` lists the op types the graph uses (:func:`graph_op_types`), finds those
TensorFlow has not registered, and imports the packages of :data:`OP_PACKAGES` known to
provide them. An op still unregistered afterwards fails the load with a ``NOT_FOUND`` error
naming the ops and the package to install, instead of TensorFlow's
``Op type not registered 'X' in binary running on ...``.

An op package must be the release built for the running TensorFlow (``tensorflow-text``
2.21.x for TensorFlow 2.21); ``pip install 'pyserving[text]'`` installs the matching one.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from types import ModuleType

from tensorflow.core.framework import graph_pb2

from pyserving.errors import NotFound

__all__ = [
    "OP_PACKAGES",
    "TENSORFLOW_TEXT",
    "OpPackage",
    "graph_op_types",
    "is_registered",
    "require_ops",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpPackage:
    """A Python package whose import registers TensorFlow ops.

    Attributes:
        module: the name to import (``tensorflow_text``).
        distribution: the name pip installs it by (``tensorflow-text``).
        extra: the pyserving extra that installs the matching release (``text``), or
            ``None`` when there is none.
        ops: the op types the package registers.
        namespaces: op-name prefixes only this package uses (``TFText>``): ops of newer
            releases that ``ops`` does not list yet are still attributed to it.
    """

    module: str
    distribution: str
    extra: str | None
    ops: frozenset[str]
    namespaces: tuple[str, ...] = field(default=())

    def provides(self, op_type: str) -> bool:
        """Whether ``op_type`` is one of this package's ops."""
        return op_type in self.ops or op_type.startswith(self.namespaces)

    @property
    def install_command(self) -> str:
        """What to run to install the package: ``pip install 'pyserving[text]'``."""
        if self.extra:
            return f"pip install 'pyserving[{self.extra}]'"
        return f"pip install {self.distribution}"


#: TensorFlow Text (``tensorflow-text``): tokenizers, normalizers, constrained sequence...
#: ``ops`` is what ``import tensorflow_text`` 2.21 registers.
TENSORFLOW_TEXT = OpPackage(
    module="tensorflow_text",
    distribution="tensorflow-text",
    extra="text",
    ops=frozenset(
        {
            "CaseFoldUTF8",
            "ConstrainedSequence",
            "FastBertNormalize",
            "FastWordpieceTokenizeWithOffsets",
            "FindSourceOffsets",
            "MaxSpanningTree",
            "NormalizeUTF8",
            "NormalizeUTF8WithOffsetsMap",
            "PhraseTokenize",
            "RegexSplitWithOffsets",
            "RougeL",
            "SentenceFragments",
            "SentenceFragmentsV2",
            "SentencepieceDetokenizeOp",
            "SentencepieceIdToStringOp",
            "SentencepieceOp",
            "SentencepieceStringToIdOp",
            "SentencepieceTokenizeOp",
            "SentencepieceTokenizeWithOffsetsOp",
            "SentencepieceVocabSizeOp",
            "SplitMergeTokenizeWithOffsets",
            "TFText>BoiseTagsToOffsets",
            "TFText>ByteSplitByOffsets",
            "TFText>ByteSplitWithOffsets",
            "TFText>FastSentencepieceDetokenize",
            "TFText>FastSentencepieceTokenize",
            "TFText>FastWordpieceDetokenize",
            "TFText>NgramsStringJoin",
            "TFText>OffsetsToBoiseTags",
            "TFText>PhraseDetokenize",
            "TFText>RoundRobinGenerateMasks",
            "TFText>RoundRobinTrim",
            "TFText>Utf8Binarize",
            "TFText>WhitespaceTokenizeWithOffsetsV2",
            "TokenizerFromLogits",
            "UnicodeScriptTokenizeWithOffsets",
            "WhitespaceTokenizeWithOffsets",
            "WordpieceTokenizeWithOffsets",
        }
    ),
    namespaces=("TFText>",),
)

#: The op packages pyserving knows, in the order they are tried.
OP_PACKAGES: tuple[OpPackage, ...] = (TENSORFLOW_TEXT,)


def graph_op_types(graph_def: graph_pb2.GraphDef) -> set[str]:
    """Every op type ``graph_def`` uses: its nodes' and those of every function in its
    library (TF2 exports keep their computation there). A node calling a library function
    by name is a function call, not an op, and is left out."""
    library = graph_def.library
    functions = {f.signature.name for f in library.function}
    types = {node.op for node in graph_def.node}
    for function in library.function:
        types.update(node.op for node in function.node_def)
    return types - functions


def is_registered(op_type: str) -> bool:
    """Whether TensorFlow has registered ``op_type`` in this process."""
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(op_type) is not None


def _is_absent(exc: ModuleNotFoundError, module: str) -> bool:
    """Whether ``exc`` says ``module`` itself is not installed (or its import is blocked),
    as opposed to one of its dependencies missing."""
    name = exc.name or ""
    return name == module or module.startswith(name + ".")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def _names(ops: Iterable[str]) -> str:
    return ", ".join(sorted(ops))


def require_ops(
    op_types: Collection[str],
    *,
    packages: Sequence[OpPackage] = OP_PACKAGES,
    import_module: Callable[[str], ModuleType] = importlib.import_module,
    registered: Callable[[str], bool] = is_registered,
) -> list[str]:
    """Make sure TensorFlow has every op of ``op_types`` registered before a graph using
    them is imported.

    Ops already registered cost one registry lookup each. For the others, every package of
    ``packages`` that provides one of them is imported (once imported, a package stays
    imported: a later call finds its ops registered).

    Args:
        op_types: the op types a graph uses (see :func:`graph_op_types`).
        packages: the known op packages (:data:`OP_PACKAGES`).
        import_module: imports a module by name (``importlib.import_module``).
        registered: whether an op type is registered (:func:`is_registered`).

    Returns:
        the modules imported by this call (empty when nothing was missing).

    Raises:
        NotFound: some ops are still unregistered. The message names them and, for each,
            the package providing it and why its ops are missing (not installed, its import
            failed, or the installed release lacks them) with the install command, or says
            that no known package provides it.
    """
    missing = sorted(op for op in op_types if not registered(op))
    if not missing:
        return []
    imported: list[str] = []
    problems: list[str] = []
    unattributed = set(missing)
    for package in packages:
        wanted = [op for op in missing if package.provides(op)]
        if not wanted:
            continue
        unattributed.difference_update(wanted)
        try:
            import_module(package.module)
        except ModuleNotFoundError as exc:
            if not _is_absent(exc, package.module):
                problems.append(_import_failed(package, wanted, exc))
                continue
            problems.append(
                f"{_names(wanted)} (from the Python package {package.distribution}, which is "
                f"not installed: {package.install_command})"
            )
            continue
        except Exception as exc:
            problems.append(_import_failed(package, wanted, exc))
            continue
        imported.append(package.module)
        still = [op for op in wanted if not registered(op)]
        _log.info(
            "Imported %s (%s %s) for ops %s",
            package.module,
            package.distribution,
            _version(package.distribution),
            _names(wanted),
        )
        if still:
            problems.append(
                f"{_names(still)} (not registered by the installed {package.distribution} "
                f"{_version(package.distribution)}: install the release built for this "
                f"TensorFlow: {package.install_command})"
            )
    if unattributed:
        known = ", ".join(p.distribution for p in packages) or "none"
        problems.append(
            f"{_names(unattributed)} (no op package pyserving knows provides them; "
            f"known packages: {known})"
        )
    if problems:
        raise NotFound("Op type not registered in TensorFlow: " + "; ".join(problems))
    return imported


def _import_failed(package: OpPackage, ops: Sequence[str], exc: BaseException) -> str:
    return (
        f"{_names(ops)} (from the Python package {package.distribution}, whose import failed: "
        f"{type(exc).__name__}: {exc}; {package.install_command} installs the release built "
        "for this TensorFlow)"
    )
