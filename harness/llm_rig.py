"""A real llama.cpp for tests, with no download: node-llama-cpp's prebuilt CPU build behind an
OpenAI-compatible server (``harness/llm/server.mjs``), over a tiny random-weight model made here."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from harness.servers import free_port
from harness.servers import require_binary

PACKAGE = Path(__file__).resolve().parent / "llm"
CACHE = Path.home() / ".cache" / "run-registry" / "llm"

@dataclass(frozen=True)
class TinyLlama:
    """What the model's bytes depend on: the digest of this, WORDS and the numpy and gguf versions
    (whose random streams and writer could change) names the cached file. Bump ``builder`` when
    _write_model changes what it writes."""

    builder: int = 1
    seed: int = 20261206
    layers: int = 2
    embedding: int = 64
    heads: int = 4
    feed_forward: int = 128
    context: int = 2048
    embedding_scale: float = 0.15  # of the random dimensions; the constant one is 1 (see _CONSTANT)
    output_scale: float = 0.25  # smaller flattens the next-token distribution: more varied text
    word_lift: float = 0.2  # how much more likely a whole word is than a single character


MODEL = TinyLlama()

# Whole-word pieces after the single characters, so generated text has words and spaces. SPM
# merges only pairs that are themselves pieces, so a prompt still tokenizes to about one token a
# character: only the output uses these.
WORDS = (
    "the", "of", "and", "to", "a", "in", "is", "it", "that", "for", "on", "was", "with", "as", "be",
    "at", "by", "this", "from", "or", "an", "are", "not", "but", "have", "you", "they", "we", "his",
    "her", "she", "he", "all", "one", "can", "will", "if", "so", "no", "up", "out", "about",
    "which", "when", "there", "what", "run", "runs", "seed", "model", "token", "server", "test",
    "cache", "key", "event", "record", "replay", "stream", "chunk", "time",
)

# The constant channel: embedding dimension 0 is the same positive number for every token, and no
# layer writes to it, so after the final RMS norm it is positive whatever the text. Output rows
# that weigh only that dimension, negatively, can then never be sampled.
_CONSTANT = 1.0
_BAN = -100.0


def _model_digest() -> str:
    """The digest of the builder's parameters and the libraries that turn them into bytes."""
    import gguf
    import numpy

    identity = {**dataclasses.asdict(MODEL), "words": WORDS, "numpy": numpy.__version__, "gguf": _version("gguf", gguf)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _version(name: str, module: object) -> str:
    from importlib.metadata import version

    return getattr(module, "__version__", None) or version(name)


def _vocabulary() -> tuple[list[str], list[int], list[float]]:
    """A SentencePiece-style ("llama") vocabulary: control tokens, the 256 byte fallbacks, then
    printable pieces with ``▁`` for a leading space."""
    from gguf import TokenType

    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256))]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL, *[TokenType.BYTE] * 256]
    text = ["▁", *(chr(code) for code in range(0x21, 0x7F)), *(f"▁{word}" for word in WORDS)]
    pieces += text
    types += [TokenType.NORMAL] * len(text)
    # SPM merges the best-scoring pair first; these scores only order the pieces.
    scores = [0.0] * (len(pieces) - len(text)) + [-float(i) for i in range(len(text))]
    return pieces, [int(kind) for kind in types], scores


def _write_model(path: Path) -> None:
    """Write the tiny LLaMA to ``path``: random F32 weights from MODEL's seed, deterministic bytes."""
    import gguf
    import numpy as np

    pieces, types, scores = _vocabulary()
    vocab, embd, ff, heads = len(pieces), MODEL.embedding, MODEL.feed_forward, MODEL.heads
    rng = np.random.default_rng(MODEL.seed)

    def normal(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("run-registry tiny random llama")
    writer.add_context_length(MODEL.context)
    writer.add_embedding_length(embd)
    writer.add_block_count(MODEL.layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(embd // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_types(types)
    writer.add_token_scores(scores)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    embedding = normal(vocab, embd, scale=MODEL.embedding_scale)
    embedding[:, 0] = _CONSTANT
    writer.add_tensor("token_embd.weight", embedding)
    for layer in range(MODEL.layers):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v"):
            writer.add_tensor(f"{block}.{name}.weight", normal(embd, embd, scale=embd ** -0.5))
        attn_output = normal(embd, embd, scale=0.5 * embd ** -0.5)
        attn_output[0] = 0  # keep the constant channel constant
        writer.add_tensor(f"{block}.attn_output.weight", attn_output)
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(embd, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", normal(ff, embd, scale=embd ** -0.5))
        writer.add_tensor(f"{block}.ffn_up.weight", normal(ff, embd, scale=embd ** -0.5))
        ffn_down = normal(embd, ff, scale=0.5 * ff ** -0.5)
        ffn_down[0] = 0
        writer.add_tensor(f"{block}.ffn_down.weight", ffn_down)
    writer.add_tensor("output_norm.weight", np.ones(embd, dtype=np.float32))

    output = normal(vocab, embd, scale=MODEL.output_scale)
    # Byte tokens alone decode to invalid UTF-8 and </s> would end a reply at random: weigh only
    # the constant channel, strongly negative. Whole words get a small lift so text has spaces.
    banned = np.array([kind != gguf.TokenType.NORMAL for kind in types])
    output[banned] = 0
    output[:, 0] = np.where(banned, _BAN, 0.0)
    output[[piece.startswith("▁") for piece in pieces], 0] = MODEL.word_lift
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tiny_model() -> Path:
    """The tiny GGUF model, built once into the cache (written aside, then renamed in)."""
    path = CACHE / f"tiny-{_model_digest()}.gguf"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=CACHE, prefix=".tiny-", suffix=".gguf")
    os.close(descriptor)
    try:
        _write_model(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp's 0600 is for secrets; this is a shared cache
        os.replace(temporary, path)  # two builders race harmlessly: the bytes are the same
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    return path


def _unavailable(message: str) -> NoReturn:
    """Skip the test, or fail it under CI=true, where a skip would pass for a pass."""
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def node_llama_cpp() -> Path:
    """The directory whose node_modules holds harness/llm's locked packages, installed once per
    lock file. Several processes (pytest-xdist workers) may ask at once: one installs, under a
    file lock, while the others wait for it."""
    require_binary("node")
    npm = require_binary("npm")
    lock = (PACKAGE / "package-lock.json").read_bytes()
    directory = CACHE / f"node-{hashlib.sha256(lock).hexdigest()[:16]}"
    installed = directory / ".installed"
    if installed.exists():
        return directory
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{directory.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if installed.exists():  # installed while we waited
            return directory
        shutil.rmtree(directory, ignore_errors=True)  # what an install that died left
        directory.mkdir()
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(PACKAGE / name, directory / name)
        # --omit=optional: the locked CPU build only, not 650 MB of CUDA and Vulkan builds.
        # --ignore-scripts: node-llama-cpp's postinstall loads llama.cpp with default options and
        # builds it from source where that fails; the server loads the prebuilt one itself and
        # never builds (getLlama's build: "never").
        try:
            result = subprocess.run(
                [npm, "ci", "--omit=optional", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=directory, capture_output=True, text=True, timeout=600, check=False,
            )
        except subprocess.TimeoutExpired as error:
            _unavailable(f"npm ci in {directory} took over {error.timeout}s")
        if result.returncode != 0:
            _unavailable(f"npm ci in {directory} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        installed.touch()
    return directory


class LlamaServer:
    """harness/llm/server.mjs (node-llama-cpp's llama.cpp over the tiny model) on a free port."""

    def __init__(self, log_path: Path, *, ignore_seed: bool = False, api_key: str | None = None,
                 model: Path | None = None, port: int | None = None, token_delay_ms: int = 0,
                 chunk_times: Path | None = None) -> None:
        """``port``: another server's, to take its place once it is stopped (a redeploy)."""
        self.port = port or free_port()
        self.token_delay_ms = token_delay_ms
        self.chunk_times = chunk_times
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path
        self.ignore_seed = ignore_seed
        self.api_key = api_key
        self.model = model
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> LlamaServer:
        node = require_binary("node")
        modules = node_llama_cpp() / "node_modules"
        self.model = self.model or tiny_model()
        args = [node, str(PACKAGE / "server.mjs"), "--model", str(self.model), "--port", str(self.port),
                "--host", "127.0.0.1", "--node-modules", str(modules)]
        if self.ignore_seed:
            args.append("--ignore-seed")
        if self.api_key is not None:
            args += ["--api-key", self.api_key]
        if self.token_delay_ms:
            args += ["--token-delay-ms", str(self.token_delay_ms)]
        if self.chunk_times is not None:
            args += ["--chunk-times", str(self.chunk_times)]
        # An allow-listed environment: nothing of the test's (NODE_OPTIONS, a proxy) reaches node.
        env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR") if name in os.environ}
        with open(self.log_path, "wb") as log:
            # Its own process group: stop() ends node and any child it forked (getLlama tests
            # the binary in one) together.
            self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True)
        ready = self._ready_line(timeout)
        if ready != f"listening on http://127.0.0.1:{self.port}":
            self.stop()
            raise RuntimeError(f"llm server said {ready!r}, not that it listens on {self.port}:\n{self.log()}")
        return self

    def _ready_line(self, timeout: float) -> str:
        """The first line of the server's stdout, waited for up to ``timeout`` seconds."""
        assert self.process is not None and self.process.stdout is not None
        output = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in output:
            if self.process.poll() is not None:
                self.stop()  # closes our end of its stdout
                raise RuntimeError(f"llm server exited with {self.process.returncode}:\n{self.log()}")
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise RuntimeError(f"llm server did not say it listens within {timeout}s:\n{self.log()}")
            if select.select([self.process.stdout], [], [], min(left, 0.05))[0]:
                chunk = os.read(self.process.stdout.fileno(), 4096)
                if not chunk:  # closed: node is ending, which poll() will say; don't spin meanwhile
                    time.sleep(0.01)
                output += chunk
        return output.split(b"\n", 1)[0].decode(errors="replace")

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM to its process group, SIGKILL if it has not gone within ``timeout`` seconds."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def model_id(self) -> str:
        """The model's name in requests: the file's name, as the server gives it."""
        assert self.model is not None
        return self.model.name

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
