"""A deterministic word-level tokenizer and the ChatML chat template.

Text is first split into pieces (special tokens, an optional space followed by ASCII letters,
or any single character); a piece in the vocabulary is one token, any other piece falls back
to one token per UTF-8 byte. Because pieces never cross a space or punctuation boundary,
``encode(a + b) == encode(a) + encode(b)`` whenever ``b`` starts with a space, punctuation or a
newline, which is what generated text always does; so ``encode(decode(ids)) == ids`` for
generated ids, and a prompt followed by generated text tokenizes to prompt ids + generated ids.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_ID, IM_START_ID, IM_END_ID = 0, 1, 2
BYTE_BASE = len(SPECIAL_TOKENS)
WORD_BASE = BYTE_BASE + 256

_WORDS = """
the of and to in is that it was for on are as with his they at be this from have or by one had
not but what all were when we there can an your which their said if do will each about how up out
them then she many some so these would other into has more her two like him see time could no make
than first been its who now people my made over did down only way find use may water long little
very after words called just where most know get through back much before go good new write our used
me man too any day same right look think also around another came come work three word must because
does part even place well such here take why things help put years different away again off went old
number great tell men say small every found still between name should home big give air line set own
under read last never us left end along while might next sound below saw something thought both few
those always looked show large often together asked house world going want school important until form
food keep children feet land side without boy once animals life enough took sometimes four head above
kind began almost live page got earth need far hand high year mother light parts country father let
night following picture being study second eyes soon times story boys since white days ever paper hard
near sentence better best across during today others sure means knew its try told young miles sun ways
thing whole hear example heard several change answer room sea against top turned learn point city play
toward five using himself usually model token stream region cache route edge pool fast quiet river
assistant user system hello world
"""
WORDS: tuple[str, ...] = tuple(dict.fromkeys(_WORDS.split()))

_PIECE = re.compile(
    "|".join(re.escape(s) for s in SPECIAL_TOKENS) + r"| ?[A-Za-z]+|.", re.DOTALL
)


def _build_vocab() -> tuple[str | bytes, ...]:
    pieces: list[str | bytes] = list(SPECIAL_TOKENS)
    pieces += [bytes([b]) for b in range(256)]
    for word in WORDS:
        pieces += [" " + word, word, " " + word.capitalize(), word.capitalize()]
    return tuple(dict.fromkeys(pieces))


class Tokenizer:
    """Word-level tokenizer with byte fallback; ids are stable across runs and machines."""

    def __init__(self) -> None:
        self.pieces: tuple[str | bytes, ...] = _build_vocab()
        self.ids: Mapping[str | bytes, int] = {p: i for i, p in enumerate(self.pieces)}
        # text of each id as it appears in a stream (bytes >= 0x80 only occur in prompts)
        self.texts: tuple[str, ...] = tuple(
            p.decode("latin-1") if isinstance(p, bytes) else p for p in self.pieces
        )

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        vocab = self.ids
        for piece in _PIECE.findall(text):
            token = vocab.get(piece)
            if token is not None:
                ids.append(token)
            else:
                ids.extend(BYTE_BASE + b for b in piece.encode("utf-8"))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        out = bytearray()
        for token in ids:
            piece = self.pieces[token]
            out += piece if isinstance(piece, bytes) else piece.encode("utf-8")
        return out.decode("utf-8", errors="replace")

    def is_valid(self, token: int) -> bool:
        return 0 <= token < len(self.pieces)

    def word_id(self, word: str) -> int:
        return self.ids[word]


def render_chat(messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool,
                continue_final_message: bool) -> str:
    """ChatML: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message; with
    ``continue_final_message`` the last message is left open (no ``<|im_end|>``)."""
    parts: list[str] = []
    last = len(messages) - 1
    for i, msg in enumerate(messages):
        parts.append(f"<|im_start|>{msg['role']}\n{msg['content']}")
        if not (continue_final_message and i == last):
            parts.append("<|im_end|>\n")
    if add_generation_prompt and not continue_final_message:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)
