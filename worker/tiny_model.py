"""``infercdn worker tiny-model DIR``: build the deterministic tiny chat model for real-vLLM tests.

A byte-level BPE tokenizer trained on the Python standard library's own sources (sorted, so the
input is fixed for a given interpreter), a ChatML-style chat template, and a random-weight Llama
under a fixed seed.  Its output is gibberish, but it runs the real engine end to end and every
build is byte-identical.  torch and transformers live only in the vLLM venv, so when they are not
importable here the build runs under that venv's python (see ``worker.vllm.interpreter``)."""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

VOCAB_SIZE = 2048
SEED = 0
CORPUS_LIMIT = 4 * 1024 * 1024
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML.  transformers implements continue_final_message by cutting the rendered text after the
# final message's content, so the template only has to render each message the same way.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="directory to write the model and tokenizer into")
    parser.add_argument(
        "--python", type=Path, default=None,
        help="interpreter with torch+transformers to build under "
             "(default: this one if it has them, else $INFERCDN_VLLM_PYTHON or the cached vLLM venv)",
    )


def main(args: argparse.Namespace) -> int:
    if args.python is None and _can_build_here():
        print(build_tiny_model(args.dir))
        return 0
    from worker.vllm.interpreter import VllmPythonNotFound, find_vllm_python

    try:
        python = args.python or find_vllm_python()
    except VllmPythonNotFound as exc:
        print(f"infercdn worker tiny-model: {exc}", file=sys.stderr)
        return 2
    return run_under(python, args.dir)


def _can_build_here() -> bool:
    return all(importlib.util.find_spec(m) for m in ("torch", "transformers", "tokenizers"))


def run_under(python: Path, out_dir: Path) -> int:
    """Run this module's build under another interpreter, with this checkout on its path."""
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    cmd = [str(python), "-m", "worker.tiny_model", str(out_dir.resolve())]
    return subprocess.run(cmd, env=env, cwd=root, check=False).returncode


def corpus_files() -> list[Path]:
    """The standard library's top-level modules, sorted by name."""
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def iter_corpus(limit: int = CORPUS_LIMIT) -> Iterator[str]:
    used = 0
    for path in corpus_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        if used + len(text) > limit:
            return
        used += len(text)
        yield text


def train_tokenizer(vocab_size: int = VOCAB_SIZE):  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def build_model(tokenizer):  # -> transformers.LlamaForCausalLM
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 64: one the CPU attention backend supports
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def build_tiny_model(out_dir: Path | str) -> Path:
    """Write tokenizer + model into ``out_dir``; the same bytes on every run."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    tokenizer.save_pretrained(out)
    build_model(tokenizer).save_pretrained(out, safe_serialization=True)
    return out


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m worker.tiny_model")
    _parser.add_argument("dir", type=Path)
    print(build_tiny_model(_parser.parse_args().dir))
