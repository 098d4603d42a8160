"""Counting tokens offline: tiktoken for OpenAI models, litellm's counters for the others.

The budget stage needs a request's prompt tokens *before* calling upstream (to reserve its
worst-case cost), and the gateway needs a count of the answer when an upstream reports no
usage (some OpenAI-compatible servers ignore ``stream_options.include_usage``). The
upstream's reported usage stays authoritative whenever it is present.

tiktoken downloads its encodings on first use, which a gateway must never do: it may have no
network, and a first request must not wait on one. The encodings are read from a directory in
tiktoken's cache layout (files named by the sha1 of their download URL). By default that is
the copy bundled inside the installed litellm package (found with ``importlib.util.find_spec``,
which does not import litellm); ``tokens.encodings_dir`` points elsewhere. At start-up every
encoding a configured model needs is *verified* (its file hashed, milliseconds), and a missing
one stops start-up with a message naming the encoding, the model and the directory: failing
later would mean counting wrong.

Building a tiktoken encoding is another matter: ~0.3-0.6 s of CPU and 40-50 MiB that stay for
the life of the process, per encoding. Most gateways count rarely (upstreams report usage, and
a budget reserves with a byte bound first), so an encoding is first built as a
:class:`~gateway.usage.bpe.CompactEncoding`: the same counts in 3-6 MiB, at ~1-4 µs a token.
tiktoken's own encoder is built only when counting gets frequent or large (see
:class:`TiktokenTokenizer`), and then takes over. Nothing is built eagerly:

* :meth:`TokenCounter.tokenizer` (async) builds a deployment's tokenizer on a worker thread,
  once however many requests ask at the same time (one build per encoding in flight); with
  ``fast=True`` (a large text to count) it also waits for tiktoken's encoder;
* :meth:`TokenCounter.built` (sync) returns it only if it already exists, for code that cannot
  wait (a finisher);
* :meth:`TokenCounter.prepare` starts builds in the background, for the deployments the budget
  stage knows it will need (those reachable by a team with a budget).

Which counter a model gets:

* a model tiktoken knows (``gpt-4o*``, ``gpt-4*``, ``o1``..., ``text-embedding-3-*``): its
  encoding (o200k_base, cl100k_base, ...);
* another model behind an OpenAI-compatible server or the mock: cl100k_base, an estimate;
* any other provider (Anthropic, Bedrock, ...): ``litellm.token_counter``, imported (on a worker
  thread) when the first such model's tokenizer is built, never on the event loop. Models for
  which litellm would download a HuggingFace tokenizer (Llama, Cohere) fall back to cl100k_base.

Chat messages are counted the way OpenAI bills them: 3 tokens of framing per message, 1 more
for a ``name``, 3 to prime the reply. Images are estimated at :data:`IMAGE_TOKENS` each.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson
import tiktoken
from tiktoken.model import encoding_name_for_model

from gateway.config.yamlfile import ConfigError
from gateway.heap import import_litellm
from gateway.pricing import litellm_package_dir
from gateway.usage.bpe import CompactEncoding
from gateway.wire import CompletionBuilder, completion_text

if TYPE_CHECKING:
    from gateway.catalog import Catalog, Deployment

log = logging.getLogger("gateway.usage.tokens")

FALLBACK_ENCODING: Final = "cl100k_base"
#: Estimate for one image part: a high-detail gpt-4o image at its largest tiling (2x6 tiles).
IMAGE_TOKENS: Final = 2125
_TOKENS_PER_MESSAGE: Final = 3
_TOKENS_PER_NAME: Final = 1
_REPLY_PRIMER: Final = 3
_TOOL_CALL_OVERHEAD: Final = 3
#: Characters the compact counter counts before tiktoken is built for its encoding: at its extra
#: ~0.5 µs a character, about the ~0.5 s of CPU building tiktoken costs.
COMPACT_CHARACTERS: Final = 1_000_000
#: One text longer than this (~5 ms of prose for the compact counter, holding the GIL) asks for
#: tiktoken, and the usage stage counts one this large with tiktoken, on a worker thread.
LARGE_TEXT_CHARACTERS: Final = 8 * 1024

_BLOB_URL: Final = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
# Encoding name → (file it is built from, that file's published sha256). Checking the hash
# here means tiktoken never finds a corrupt file, which it would delete and re-download.
_FILES: Final[dict[str, tuple[str, str]]] = {
    "o200k_base": ("o200k_base", "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
    "o200k_harmony": ("o200k_base", "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
    "cl100k_base": ("cl100k_base", "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
    "p50k_base": ("p50k_base", "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069"),
    "p50k_edit": ("p50k_base", "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069"),
    "r50k_base": ("r50k_base", "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"),
}
# litellm's counter would fetch these tokenizers from the HuggingFace hub.
_HF_DOWNLOADS: Final = frozenset({"cohere", "llama2", "llama3"})
_LITELLM_TOKENIZERS: Final = "litellm_core_utils/tokenizers"

# Builds run one at a time, whichever thread they are on. tiktoken reads its cache directory from
# the process environment, which a build sets only while it loads (and litellm's import sets it
# too): two builds interleaving could each put back the other's value and send tiktoken to the
# network. Builds are CPU-bound Python under the GIL, so running them in turn costs no time.
# Reentrant: building a litellm tokenizer builds the fallback encoding inside its own build.
_BUILD_LOCK: Final = threading.RLock()


class EncodingMissing(ConfigError):
    """A tiktoken encoding a configured model needs is not available offline."""


def encoding_file(directory: Path, encoding: str) -> Path:
    """Where tiktoken's cache layout keeps ``encoding`` inside ``directory``."""
    base, _ = _FILES[encoding]
    return directory / hashlib.sha1(_BLOB_URL.format(base).encode()).hexdigest()


def default_encodings_dir() -> Path | None:
    """The encodings litellm bundles, when litellm is installed (found without importing it)."""
    package = litellm_package_dir()
    if package is None:
        return None
    directory = package / _LITELLM_TOKENIZERS
    return directory if directory.is_dir() else None


def encoding_for(provider: str, model: str) -> str | None:
    """The tiktoken encoding for a deployment's model; ``None``: use litellm's counter."""
    bare = model.rsplit("/", 1)[-1]  # "azure/gpt-4o" and "openai/gpt-4o" are gpt-4o
    try:
        return encoding_name_for_model(bare)
    except KeyError:
        pass
    if provider in ("openai", "mock"):
        return FALLBACK_ENCODING  # an unknown model behind an OpenAI-shaped API: an estimate
    return None


@contextmanager
def _tiktoken_cache(directory: Path) -> Iterator[None]:
    # tiktoken reads its cache location from the environment on every load; it is set only
    # for the duration of a load (under _BUILD_LOCK) and put back afterwards.
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = previous


def _drop_python_ranks(encoding: tiktoken.Encoding) -> None:
    """Free the Python copy of an encoding's merge ranks (~100k-200k ``bytes → int`` entries).

    ``tiktoken.Encoding`` keeps the ``mergeable_ranks`` dict it was built from, but encoding and
    decoding run in its Rust ``CoreBPE``, which took its own copy at construction; in tiktoken
    the dict is read again only to pickle an encoding that is not in its registry. The gateway
    calls ``encode_ordinary`` and ``name`` (litellm, which shares tiktoken's registry, calls
    ``encode``/``decode``), so the dict is ~40% of the encoding's memory kept for nothing:
    measured, o200k_base goes from +76 to +43 MiB RSS. ``None`` rather than ``{}`` so anything
    that did read it fails loudly instead of counting with an empty vocabulary.
    """
    encoding._mergeable_ranks = None  # type: ignore[assignment]


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def _give_back_memory() -> None:
    """Return the freed rank table and file buffer to the OS (glibc keeps freed heap otherwise,
    and the RSS would not show the saving). ctypes releases the GIL for the call."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class Tokenizer(Protocol):
    """Counts for one model."""

    def count_text(self, text: str) -> int: ...

    def count_messages(self, messages: Sequence[Any], tools: Any = None) -> int: ...


class _FramedCount:
    """OpenAI's message framing over a text counter (``count_text``): shared by the exact count
    (:class:`TiktokenTokenizer`) and the upper bound (:class:`ByteBound`), so the two walk the
    same parts of a request and the bound can never skip one the count sees."""

    __slots__ = ()

    def count_text(self, text: str) -> int:
        raise NotImplementedError

    def count_messages(self, messages: Sequence[Any], tools: Any = None) -> int:
        total = _REPLY_PRIMER
        for message in messages:
            total += _TOKENS_PER_MESSAGE
            if not isinstance(message, dict):
                continue
            for key, value in message.items():
                total += self._count_value(key, value)
                if key == "name":
                    total += _TOKENS_PER_NAME
        if tools:
            total += self.count_text(orjson.dumps(tools).decode())
        return total

    def _count_value(self, key: str, value: Any) -> int:
        if isinstance(value, str):
            return self.count_text(value)
        if value is None:
            return 0
        if key == "content" and isinstance(value, list):
            return sum(self._count_part(part) for part in value)
        if key == "tool_calls" and isinstance(value, list):
            return sum(self._count_tool_call(call) for call in value)
        return self.count_text(orjson.dumps(value).decode())

    def _count_part(self, part: Any) -> int:
        if not isinstance(part, dict):
            return self.count_text(str(part))
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            return self.count_text(part["text"])
        if kind in ("image_url", "input_image", "image"):
            return IMAGE_TOKENS
        return self.count_text(orjson.dumps(part).decode())

    def _count_tool_call(self, call: Any) -> int:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            return self.count_text(orjson.dumps(call).decode())
        return (
            _TOOL_CALL_OVERHEAD
            + self.count_text(str(function.get("name") or ""))
            + self.count_text(str(function.get("arguments") or ""))
        )


class TiktokenTokenizer(_FramedCount):
    """An OpenAI encoding's exact count (tiktoken's ``encode_ordinary``), with OpenAI's framing.

    It counts with the encoding's :class:`CompactEncoding` (6 MiB, ~1-4 µs a token) until
    tiktoken's own encoder is given to it (:meth:`speed_up`: 40-50 MiB, ~0.3 µs a token). Both
    give the same counts (``tests/test_usage_bpe.py``; but for characters assigned in a Unicode
    version newer than tiktoken's, see ``gateway.usage.bpe``), so the switch changes only speed. It
    asks for tiktoken (``on_busy``, once) when counting stops being occasional: the compact
    counter has counted :data:`COMPACT_CHARACTERS` characters (about the CPU building tiktoken
    costs: renting until the rent equals the price), one text longer than
    :data:`LARGE_TEXT_CHARACTERS` (it holds the GIL while it counts, tiktoken does not), or one
    piece of text slow to merge (``LONG_PIECE_BYTES``: such text is rare, unless made to be slow,
    and each costs ~30 times tiktoken's time until tiktoken counts).
    """

    __slots__ = ("_compact", "_encode", "_on_busy", "_short", "_spent", "encoding", "name")

    def __init__(
        self,
        encoding: tiktoken.Encoding | None = None,
        *,
        compact: CompactEncoding | None = None,
        on_busy: Callable[[str], None] | None = None,
    ) -> None:
        if encoding is not None:
            self.name = encoding.name
        elif compact is not None:
            self.name = compact.name
        else:
            raise ValueError("a tokenizer needs tiktoken's encoding or the compact one")
        self.encoding = encoding
        self._encode = encoding.encode_ordinary if encoding is not None else None  # user text is never special
        self._compact = compact
        self._on_busy = on_busy
        self._spent = 0
        # Roles and names repeat on every request; their counts are remembered (bounded).
        self._short: dict[str, int] = {}

    @property
    def fast(self) -> bool:
        """Whether tiktoken's encoder counts (rather than the compact counter)."""
        return self._encode is not None

    def speed_up(self, encoding: tiktoken.Encoding) -> None:
        """Count with tiktoken from now on (same counts, faster)."""
        self.encoding = encoding
        self._encode = encoding.encode_ordinary
        self._on_busy = None

    def count_text(self, text: str) -> int:
        if len(text) <= 24:
            found = self._short.get(text)
            if found is None:
                found = self._count(text)
                if len(self._short) < 4096:
                    self._short[text] = found
            return found
        return self._count(text)

    def _count(self, text: str) -> int:
        encode = self._encode
        if encode is not None:
            return len(encode(text))
        compact = self._compact
        assert compact is not None
        self._spent += len(text)  # racy across threads: a count off by a few is harmless
        long_merges = compact.long_merges
        tokens = compact.count(text)
        on_busy = self._on_busy
        if on_busy is not None and (
            self._spent > COMPACT_CHARACTERS
            or len(text) > LARGE_TEXT_CHARACTERS
            or compact.long_merges != long_merges  # a piece that is slow to merge: text made to be
        ):
            self._on_busy = None
            on_busy(self.name)
        return tokens


class LiteLLMTokenizer:
    """``litellm.token_counter`` for a non-OpenAI model (never fetches images or tokenizers)."""

    __slots__ = ("_counter", "_fallback", "_model")

    def __init__(self, model: str, fallback: TiktokenTokenizer) -> None:
        self._counter = import_litellm().token_counter
        self._model = model
        self._fallback = fallback

    def count_text(self, text: str) -> int:
        try:
            return int(self._counter(model=self._model, text=text))
        except Exception:
            return self._fallback.count_text(text)

    def count_messages(self, messages: Sequence[Any], tools: Any = None) -> int:
        try:
            return int(
                self._counter(
                    model=self._model, messages=list(messages), tools=tools or None,
                    use_default_image_token_count=True,
                )
            )
        except Exception:
            # litellm refuses some message shapes it does not know; an estimate beats no count.
            return self._fallback.count_messages(messages, tools)


class ByteBound(_FramedCount):
    """An upper bound of any byte-level BPE count: one token per UTF-8 byte (a token covers at
    least one byte), with the same framing and image estimate as the exact count.

    Used for a budget's reservation before the exact count is known to matter (see
    ``gateway.budgets.stage``), and for a model whose encoding went missing at run time (a
    policy reload added it). Reserving too much is safe; too little is not."""

    __slots__ = ()

    def count_text(self, text: str) -> int:
        return len(text) if text.isascii() else len(text.encode())


#: The one :class:`ByteBound` (it holds nothing).
BYTE_BOUND: Final = ByteBound()


class TokenCounter:
    """Tokenizers per model, loaded offline and only when needed.

    Usage::

        counter = TokenCounter(settings.tokens.encodings_dir)
        counter.verify(catalog)                       # at start-up: raises EncodingMissing
        counter.prepare(deployments)                  # build these in the background
        tokenizer = await counter.tokenizer(deployment)   # on the loop: built on a thread
        tokenizer = counter.built(deployment)         # or None, when waiting is not possible
        n = counter.count_prompt(tokenizer, ctx.endpoint.value, ctx.body)

    ``for_deployment``, ``prompt_tokens`` and ``require`` build inline: for tools, tests and
    benchmarks, never on the event loop of a serving gateway.
    """

    def __init__(self, encodings_dir: Path | None = None) -> None:
        self.directory = encodings_dir if encodings_dir is not None else default_encodings_dir()
        self._encodings: dict[str, tiktoken.Encoding] = {}
        self._compact: dict[str, CompactEncoding] = {}
        self._checked: set[str] = set()
        # One TiktokenTokenizer per encoding (gpt-4o and gpt-4o-mini share one), one
        # tokenizer per (provider, model) once resolved.
        self._by_encoding: dict[str, TiktokenTokenizer] = {}
        self._tokenizers: dict[tuple[str, str], Tokenizer] = {}
        # Builds in flight on worker threads, by what they build (an encoding's name, or
        # "litellm:provider:model"): concurrent callers wait for the same one.
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self._litellm_kind: Any = None

    # -- state ---------------------------------------------------------------------------

    @property
    def encodings(self) -> frozenset[str]:
        """The tiktoken encodings built so far (each costs 40-50 MiB for the life of the process)."""
        return frozenset(self._encodings)

    @property
    def compact_encodings(self) -> frozenset[str]:
        """The compact encodings built so far (3-6 MiB each)."""
        return frozenset(self._compact)

    @property
    def building(self) -> frozenset[str]:
        """What is being built on a worker thread right now: encoding names (the compact
        counter), "tiktoken:" and a name (tiktoken's encoder), or litellm keys."""
        return frozenset(self._flights)

    # -- loading -------------------------------------------------------------------------

    def encoding(self, name: str) -> tiktoken.Encoding:
        """Build one tiktoken encoding (blocking, ~0.3-0.6 s), or raise :class:`EncodingMissing`.

        The encoding's tokenizer, if it exists, counts with it from then on.
        """
        found = self._encodings.get(name)
        if found is not None:
            return found
        with _BUILD_LOCK:
            found = self._encodings.get(name)  # built by another thread while this one waited
            if found is not None:
                return found
            self._check(name)
            encoding = self._load(name)
            _drop_python_ranks(encoding)
            self._encodings[name] = encoding
            tokenizer = self._by_encoding.get(name)
            if tokenizer is not None:
                tokenizer.speed_up(encoding)
        _give_back_memory()
        log.info("built tokenizer %s (tiktoken)", name)
        return encoding

    def compact(self, name: str) -> CompactEncoding:
        """Build one compact encoding (blocking, ~0.2-0.4 s), or raise :class:`EncodingMissing`."""
        found = self._compact.get(name)
        if found is not None:
            return found
        with _BUILD_LOCK:  # builds run in turn (see _BUILD_LOCK); this one reads no environment
            found = self._compact.get(name)
            if found is not None:
                return found
            self._check(name)
            found = self._load_compact(name)
            self._compact[name] = found
        _give_back_memory()  # the file's buffer (3.6 MiB for o200k_base), which glibc would keep
        log.info("built tokenizer %s (compact)", name)
        return found

    def _load(self, name: str) -> tiktoken.Encoding:
        """tiktoken's build of a checked encoding (its registry keeps it, shared process-wide)."""
        assert self.directory is not None
        with _tiktoken_cache(self.directory):
            return tiktoken.get_encoding(name)

    def _load_compact(self, name: str) -> CompactEncoding:
        assert self.directory is not None
        return CompactEncoding.load(name, encoding_file(self.directory, name))

    def _check(self, name: str) -> None:
        """The encoding's file is present and intact (without building the encoding).

        The file's bytes are only hashed here and dropped: tiktoken reads the file again when
        it builds the encoding, and nothing keeps either copy.
        """
        if name in self._checked:
            return
        if name not in _FILES:
            raise EncodingMissing([f"tiktoken encoding {name!r} cannot be loaded offline by the gateway"])
        if self.directory is None:
            raise EncodingMissing(
                [
                    f"tiktoken encoding {name!r} is needed but no encodings directory is known: install litellm "
                    "(pip install 'llm-gateway[providers]'), which bundles them, or set tokens.encodings_dir"
                ]
            )
        path = encoding_file(self.directory, name)
        base, expected = _FILES[name]
        try:
            data = path.read_bytes()
        except OSError:
            raise EncodingMissing(
                [
                    f"tiktoken encoding {name!r} is missing: expected the file {path} "
                    f"(tiktoken's cache name for {_BLOB_URL.format(base)}); the gateway never "
                    "downloads encodings. Copy it there or point tokens.encodings_dir at a directory that has it"
                ]
            ) from None
        intact = hashlib.sha256(data).hexdigest() == expected
        del data
        if not intact:
            raise EncodingMissing([f"tiktoken encoding {name!r} at {path} is corrupt (sha256 mismatch)"])
        self._checked.add(name)

    def verify(self, catalog: Catalog) -> None:
        """Check, without building them, that every encoding the catalog needs is available.

        Fast (it hashes the files): start-up calls it to fail at once; the tokenizers are built
        later, when and if something needs them.
        """
        needed: dict[str, list[str]] = {FALLBACK_ENCODING: []}  # the estimate for unknown models
        for alias in catalog.aliases.values():
            for deployment in alias.deployments:
                name = encoding_for(deployment.provider, deployment.model) or FALLBACK_ENCODING
                needed.setdefault(name, []).append(f"model {deployment.model!r} of alias {alias.name!r}")
        problems: list[str] = []
        for name, users in needed.items():
            try:
                self._check(name)
            except EncodingMissing as exc:
                suffix = f" (needed by {', '.join(users)})" if users else ""
                problems.extend(problem + suffix for problem in exc.problems)
        if problems:
            raise EncodingMissing(problems)

    def require(self, catalog: Catalog) -> None:
        """Verify, then build every tokenizer the catalog's deployments need (blocking, seconds:
        for tools and benchmarks; a serving gateway builds with :meth:`tokenizer`)."""
        self.verify(catalog)
        self.compact(FALLBACK_ENCODING)
        for alias in catalog.aliases.values():
            for deployment in alias.deployments:
                self.for_deployment(deployment, strict=True)

    def built(self, deployment: Deployment) -> Tokenizer | None:
        """The deployment's tokenizer if it can be had without building anything, else ``None``.

        Never blocks: for code that cannot wait (a finisher, a hot path's fast check).
        """
        key = (deployment.provider, deployment.model)
        found = self._tokenizers.get(key)
        if found is not None:
            return found
        name = encoding_for(deployment.provider, deployment.model)
        if name is None:
            return None  # litellm's counter: made by a build, with litellm's import
        if name not in self._by_encoding and name not in self._compact and name not in self._encodings:
            return None
        tokenizer = self._tiktoken(name)
        self._tokenizers[key] = tokenizer
        return tokenizer

    async def tokenizer(self, deployment: Deployment, *, fast: bool = False) -> Tokenizer:
        """The deployment's tokenizer, built on a worker thread if it does not exist yet.

        Requests arriving while it is built wait for that one build (one per encoding), and a
        caller that goes away does not cancel it. A missing encoding gives :class:`ByteBound`
        (logged), as :meth:`for_deployment` does after start-up. ``fast``: for a large text,
        also wait until tiktoken's own encoder counts (built once, on a worker thread).
        """
        found = self.built(deployment)
        if found is None:
            await asyncio.shield(self._flight(deployment))
            found = self.built(deployment)
            if found is None:
                # The flight was another model's (same encoding) and ended without one, e.g. the
                # encoding is missing: this model's ByteBound, without a thread (nothing to build).
                found = await asyncio.to_thread(self.for_deployment, deployment)
        if fast and isinstance(found, TiktokenTokenizer) and not found.fast:
            with contextlib.suppress(Exception):  # logged by _landed; the compact counter still counts
                await asyncio.shield(self._speed_up_flight(found.name))
        return found

    def prepare(self, deployments: Iterable[Deployment]) -> None:
        """Start building these deployments' tokenizers in the background (those not built yet)."""
        for deployment in deployments:
            if self.built(deployment) is None:
                self._flight(deployment)

    def _flight(self, deployment: Deployment) -> asyncio.Future[Any]:
        name = encoding_for(deployment.provider, deployment.model)
        key = name if name is not None else f"litellm:{deployment.provider}:{deployment.model}"
        return self._fly(key, self.for_deployment, deployment)

    def _speed_up_flight(self, name: str) -> asyncio.Future[Any]:
        # Building the encoding hands it to the encoding's tokenizer (see ``encoding``).
        return self._fly(f"tiktoken:{name}", self.encoding, name)

    def _fly(self, key: str, build: Callable[[Any], Any], argument: Any) -> asyncio.Future[Any]:
        """The build in flight under ``key``, or a new one on a worker thread (one per key)."""
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(asyncio.to_thread(build, argument))
            self._flights[key] = flight
            flight.add_done_callback(functools.partial(self._landed, key))
        return flight

    def _speed_up_soon(self, name: str) -> None:
        """A tokenizer became busy (see ``TiktokenTokenizer``): build tiktoken's encoder for it,
        in the background, from whatever thread counted."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            threading.Thread(target=self._speed_up_logged, args=(name,), name=f"tiktoken-{name}", daemon=True).start()
        else:
            self._speed_up_flight(name)

    def _speed_up_logged(self, name: str) -> None:
        try:
            self.encoding(name)
        except Exception:
            log.exception("building tiktoken's encoder %s failed; the compact counter goes on counting", name)

    def _landed(self, key: str, flight: asyncio.Future[Any]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled() and flight.exception() is not None:
            log.error("building the tokenizer %s failed", key, exc_info=flight.exception())

    def for_deployment(self, deployment: Deployment, *, strict: bool = False) -> Tokenizer:
        """The tokenizer for a deployment's model, built inline if need be (blocking).

        Outside start-up (``strict`` false) a missing encoding, or any failure to build, gives
        the safe :class:`ByteBound`, logged once, instead of an error.
        """
        found = self.built(deployment)
        if found is not None:
            return found
        key = (deployment.provider, deployment.model)
        try:
            tokenizer = self._build(deployment.provider, deployment.model)
        except EncodingMissing:
            if strict:
                raise
            log.error("no tokenizer for %s; counting one token per byte", deployment.label, exc_info=True)
            tokenizer = ByteBound()
        except Exception:
            if strict:
                raise
            log.exception("building the tokenizer for %s failed; counting one token per byte", deployment.label)
            tokenizer = ByteBound()
        return self._tokenizers.setdefault(key, tokenizer)

    def _tiktoken(self, name: str) -> TiktokenTokenizer:
        """The encoding's one tokenizer (gpt-4o and gpt-4o-mini share it): its compact
        encoding or tiktoken's, whichever is built, must be."""
        found = self._by_encoding.get(name)
        if found is None:
            tokenizer = TiktokenTokenizer(
                self._encodings.get(name), compact=self._compact.get(name), on_busy=self._speed_up_soon
            )
            found = self._by_encoding.setdefault(name, tokenizer)
            encoding = self._encodings.get(name)  # built by another thread meanwhile
            if encoding is not None and not found.fast:
                found.speed_up(encoding)
        return found

    def _build(self, provider: str, model: str) -> Tokenizer:
        name = encoding_for(provider, model)
        if name is not None:
            self.compact(name)
            return self._tiktoken(name)
        # litellm's import sets TIKTOKEN_CACHE_DIR for good: not while another build has it set.
        with _BUILD_LOCK:
            self.compact(FALLBACK_ENCODING)
            fallback = self._tiktoken(FALLBACK_ENCODING)
            if self._downloads_tokenizer(model):
                return fallback
            try:
                return LiteLLMTokenizer(model, fallback)
            except ImportError:
                log.warning("litellm is not installed; counting %s tokens with %s", model, FALLBACK_ENCODING)
                return fallback

    def _downloads_tokenizer(self, model: str) -> bool:
        if self._litellm_kind is None:
            try:
                self._litellm_kind = import_litellm().utils.huggingface_tokenizer_kind
            except (ImportError, AttributeError):
                return False
        try:
            return self._litellm_kind(model) in _HF_DOWNLOADS
        except Exception:
            return True

    # -- counting ------------------------------------------------------------------------

    def prompt_tokens(self, deployment: Deployment, endpoint: str, body: dict[str, Any]) -> int:
        """The request's input tokens as ``deployment`` would bill them (builds inline)."""
        return self.count_prompt(self.for_deployment(deployment), endpoint, body)

    @staticmethod
    def count_prompt(tokenizer: Tokenizer, endpoint: str, body: dict[str, Any]) -> int:
        """Input tokens of a request body (``endpoint``: "chat" or "embeddings")."""
        if endpoint == "embeddings":
            return _count_embedding_input(tokenizer, body.get("input"))
        messages = body.get("messages")
        tools = body.get("tools") or body.get("functions")
        return tokenizer.count_messages(messages if isinstance(messages, list) else [], tools)

    def completion_tokens(self, deployment: Deployment, data: dict[str, Any]) -> int:
        """Output tokens of a whole chat completion body (builds inline)."""
        return count_output(self.for_deployment(deployment), completion_text(data))

    def stream_completion_tokens(self, deployment: Deployment, events: Iterable[bytes]) -> int:
        """Output tokens of the SSE events relayed so far (builds inline)."""
        builder = CompletionBuilder()
        builder.add_parts(events)
        return count_output(self.for_deployment(deployment), "".join(builder.texts))


def count_output(tokenizer: Tokenizer, text: str) -> int:
    """Output tokens of an answer's billed text (``Answer.output_text``)."""
    return tokenizer.count_text(text) if text else 0


def _count_embedding_input(tokenizer: Tokenizer, value: Any) -> int:
    if isinstance(value, str):
        return tokenizer.count_text(value)
    if not isinstance(value, list):
        return 0
    total = 0
    for item in value:
        if isinstance(item, str):
            total += tokenizer.count_text(item)
        elif isinstance(item, int):
            total += 1  # already tokens
        elif isinstance(item, list):
            total += len(item)
    return total
