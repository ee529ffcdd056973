"""Tokenizer adapters for drafting across vocabularies: one byte-exact
interface over the byte-level identity (the shipped target's vocabulary), a
``tokenizers.Tokenizer`` and a transformers tokenizer.

Translation works on bytes, because a byte-level model can stop in the middle
of a UTF-8 character and a byte-level BPE token can hold half of one. So an
adapter needs the exact bytes of every token (``token_bytes``): the byte
identity has them, and so does any tokenizer with a ``ByteLevel`` decoder
(GPT-2, Llama 3, Qwen and the BPE ``bench/train_tiny.py`` trains), whose
token strings spell bytes in GPT-2's byte-to-unicode alphabet. Other
tokenizers (SentencePiece's metaspace) are refused with a clear error.
"""
from __future__ import annotations

import json
from functools import lru_cache


class TokenizerMismatchError(ValueError):
    """A tokenizer cannot represent the text it is asked to encode (its
    decoding of the encoding is not the text), or it has no exact bytes per
    token."""


@lru_cache(maxsize=1)
def _byte_alphabet() -> tuple[dict[int, str], dict[str, int]]:
    """GPT-2's byte -> printable character table (and its inverse): printable
    Latin-1 bytes stand for themselves, the rest map to U+0100 onwards."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars, {c: b for b, c in chars.items()}


class ByteTokenizer:
    """Token = byte value (vocabulary 256): the shipped models' tokenizer."""

    vocab_size = 256
    max_token_bytes = 1

    def encode(self, data: bytes) -> list[int]:
        return list(data)

    def token_bytes(self, ids) -> bytes:
        return bytes(ids)

    def word_start(self, data: bytes) -> int:
        """Where the last unit a later byte could still change starts: none."""
        return len(data)

    def __repr__(self):
        return "ByteTokenizer()"


class ByteLevelBPE:
    """A ``tokenizers.Tokenizer`` with a ``ByteLevel`` decoder (a transformers
    fast tokenizer's ``backend_tokenizer`` too). ``encode`` takes UTF-8 text
    as bytes, adds no special tokens and checks the round trip."""

    def __init__(self, tokenizer):
        decoder = (json.loads(tokenizer.to_str()).get("decoder") or {})
        kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", [])}
        if "ByteLevel" not in kinds:
            raise TokenizerMismatchError(
                f"a tokenizer without a ByteLevel decoder (decoder {decoder.get('type')!r}) has no exact bytes per "
                "token; drafting across vocabularies needs byte-level tokenizers (GPT-2, Llama 3, Qwen style) or "
                "ByteTokenizer()")
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        _, inverse = _byte_alphabet()
        table = []
        for i in range(self.vocab_size):
            token = tokenizer.id_to_token(i) or ""
            try:
                table.append(bytes(inverse[c] for c in token))
            except KeyError:  # an added/special token spelt in plain text
                table.append(token.encode("utf-8"))
        self._bytes = table
        self.max_token_bytes = max(len(b) for b in table)

    def encode(self, data: bytes) -> list[int]:
        ids = self.tokenizer.encode(data.decode("utf-8"), add_special_tokens=False).ids
        if self.token_bytes(ids) != data:
            raise TokenizerMismatchError(f"the tokenizer cannot encode {data[:40]!r}... losslessly (its tokens "
                                         f"decode to {self.token_bytes(ids)[:40]!r}...)")
        return ids

    def token_bytes(self, ids) -> bytes:
        return b"".join(self._bytes[i] for i in ids)

    def word_start(self, data: bytes, window: int = 64) -> int:
        """Byte offset where the last pre-token (word) of the valid UTF-8
        ``data`` starts: a later byte can still change how it is tokenized,
        so a drafter holds it back (token healing). ``len(data)`` (nothing
        held) when the last ``window`` bytes are one piece: a text of one
        word, a 64-byte word, or a pre-tokenizer that does not split."""
        pre = self.tokenizer.pre_tokenizer
        if pre is None or not data:
            return len(data)
        begin = char_start(data, max(0, len(data) - window))
        text = data[begin:].decode("utf-8")
        pieces = pre.pre_tokenize_str(text)
        if len(pieces) < 2:
            return len(data)
        return begin + len(text[:pieces[-1][1][0]].encode("utf-8"))

    def __repr__(self):
        return f"ByteLevelBPE(vocab_size={self.vocab_size})"


def as_tokenizer(obj):
    """An adapter for ``obj``: ``"bytes"`` (the identity, ``ByteTokenizer``),
    an adapter already, a ``tokenizers.Tokenizer``, or a transformers fast
    tokenizer (its ``backend_tokenizer``)."""
    if isinstance(obj, (ByteTokenizer, ByteLevelBPE)):
        return obj
    if isinstance(obj, str) and obj == "bytes":
        return ByteTokenizer()
    backend = getattr(obj, "backend_tokenizer", None)  # transformers' fast tokenizers
    if backend is not None:
        return ByteLevelBPE(backend)
    if hasattr(obj, "to_str") and hasattr(obj, "id_to_token"):
        return ByteLevelBPE(obj)
    raise TypeError(f"cannot use {type(obj).__name__} as a tokenizer: pass 'bytes', a tokenizers.Tokenizer or a "
                    "transformers fast tokenizer")


def char_start(data: bytes, i: int) -> int:
    """The largest j <= i where a UTF-8 character starts (not a continuation byte)."""
    while 0 < i < len(data) and data[i] & 0xC0 == 0x80:
        i -= 1
    return i


def valid_prefix(data: bytes) -> int:
    """Length of the longest prefix of ``data`` that is valid UTF-8."""
    try:
        data.decode("utf-8")
        return len(data)
    except UnicodeDecodeError as e:
        return e.start
