"""Tokenizer + chat template for the Llama-family decoders, from a GGUF file or an HF dir.

A GGUF of a GPT-2-style BPE model carries its vocabulary, merges, token types and chat
template in the metadata; `tokenizers` rebuilds the tokenizer from those alone (the
SmolLM2 layout: Digits(individual) then ByteLevel without a prefix space; ByteLevel
decoder). The Jinja chat template is rendered in a sandbox, as transformers does.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from jaxdiv.models.checkpoints import CheckpointError, gguf_field

# gguf token types (llama.cpp's llama_token_type)
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4
_SUPPORTED_PRE = ("smollm", "default", "gpt2", "qwen2", "llama-bpe", "smaug-bpe")


def _render_template(template: str, messages: Sequence[dict], add_generation_prompt: bool,
                     special: dict) -> str:
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    return env.from_string(template).render(messages=list(messages),
                                            add_generation_prompt=add_generation_prompt, **special)


@dataclasses.dataclass
class ChatTokenizer:
    """A `tokenizers.Tokenizer` plus the ids and chat template generation needs."""

    tokenizer: Tokenizer
    chat_template: str
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None = None
    pad_token_id: int | None = None

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Ids of `text` as is (special-token strings in it map to their ids; no BOS added)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        if not self.chat_template:
            raise CheckpointError("this tokenizer has no chat template; pass raw prompts instead")
        special = {"bos_token": self._token(self.bos_token_id),
                   "eos_token": self._token(self.eos_token_ids[0] if self.eos_token_ids else None)}
        return _render_template(self.chat_template, messages, add_generation_prompt, special)

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.apply_chat_template(messages, add_generation_prompt))

    def _token(self, token_id: int | None) -> str:
        return "" if token_id is None else (self.tokenizer.id_to_token(token_id) or "")

    @classmethod
    def from_gguf(cls, path: str | Path) -> "ChatTokenizer":
        import gguf

        path = Path(path)
        reader = gguf.GGUFReader(path)
        kind = gguf_field(reader, "tokenizer.ggml.model")
        if kind != "gpt2":
            raise CheckpointError(f"{path}: tokenizer.ggml.model={kind!r}; only byte-level BPE "
                                  f"('gpt2') tokenizers can be rebuilt")
        pre = gguf_field(reader, "tokenizer.ggml.pre", "default")
        if pre not in _SUPPORTED_PRE:
            raise CheckpointError(f"{path}: pre-tokenizer {pre!r} is not supported ({_SUPPORTED_PRE})")
        tokens = gguf_field(reader, "tokenizer.ggml.tokens")
        merges = gguf_field(reader, "tokenizer.ggml.merges")
        types = gguf_field(reader, "tokenizer.ggml.token_type")
        if tokens is None or merges is None:
            raise CheckpointError(f"{path}: GGUF metadata lacks tokenizer.ggml.tokens/merges")
        vocab = {token: index for index, token in enumerate(tokens)}
        tokenizer = Tokenizer(models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges],
                                         ignore_merges=False))
        pieces = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if pre == "smollm":
            pieces.insert(0, pre_tokenizers.Digits(individual_digits=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(pieces)
        tokenizer.decoder = decoders.ByteLevel()
        if types is not None:
            special = [tokens[i] for i, t in enumerate(types)
                       if t in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED)]
            tokenizer.add_special_tokens(special)
        eos = gguf_field(reader, "tokenizer.ggml.eos_token_id")
        return cls(tokenizer=tokenizer, chat_template=gguf_field(reader, "tokenizer.chat_template", ""),
                   eos_token_ids=() if eos is None else (int(eos),),
                   bos_token_id=gguf_field(reader, "tokenizer.ggml.bos_token_id"),
                   pad_token_id=gguf_field(reader, "tokenizer.ggml.padding_token_id"))

    @classmethod
    def from_hf_dir(cls, directory: str | Path) -> "ChatTokenizer":
        directory = Path(directory)
        if not (directory / "tokenizer.json").is_file():
            raise CheckpointError(f"{directory}: no tokenizer.json")
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        settings = {}
        if (directory / "tokenizer_config.json").is_file():
            settings = json.loads((directory / "tokenizer_config.json").read_text())
        template = settings.get("chat_template") or ""
        if not template and (directory / "chat_template.jinja").is_file():
            template = (directory / "chat_template.jinja").read_text()

        def token_id(name):
            token = settings.get(name)
            if isinstance(token, dict):
                token = token.get("content")
            return None if token is None else tokenizer.token_to_id(token)

        eos = token_id("eos_token")
        return cls(tokenizer=tokenizer, chat_template=template,
                   eos_token_ids=() if eos is None else (eos,),
                   bos_token_id=token_id("bos_token"), pad_token_id=token_id("pad_token"))
