"""CLIP's text side, as Meissonic reads it: the byte-level BPE tokenizer and the text transformer.

Meissonic conditions on a prompt through CLIP (the OpenCLIP ViT-H/14 text tower in transformers' layout, loaded
from the released ``text_encoder/`` and ``tokenizer/`` folders).  Two things come out of it
(``tests/golden/SPEC_meissonic.md`` section 3 and facts (c)):

* ``encoder_hidden_states`` [B, 77, E]: the hidden states *after the second-to-last layer*, no final LayerNorm;
* ``pooled_projections`` [B, P]: the final-LayerNorm state at the first end-of-text token, times ``text_projection``.

The tokenizer reproduces transformers' slow ``CLIPTokenizer`` without ``ftfy`` (what Meissonic's pipeline calls,
``padding="max_length", truncation=True, max_length=77``), whose every step is pinned by
``tests/golden/clip_tokenizer/SPEC.md``:

    raw text --cut at special strings--> pieces --normalise--> words --pre-split--> chunks --BPE--> symbols --> ids

Either padding convention: ``<|endoftext|>`` (CLIP's, the default) or ``!`` (SD2 / OpenCLIP's hub folders), where
``!`` becomes a special string of its own (SPEC section 9).  Any text encodes: every UTF-8 byte has a symbol, so an
unknown character falls back to its bytes; a prompt longer than 77 tokens is truncated as CLIP does, said once.

``encode_prompts`` is the one text encoding of the project: every text-to-image file imports it.

Shapes: B prompts, L tokens (77), E text width, P projection width.

Run: ``python text_encoder.py tests/golden/clip_tokenizer "two red circles left of a blue square"``.
"""
import json
import math
import os
import re
import unicodedata

import torch
import torch.nn as nn

from checkpoints import load_folder
from config import UserError

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_MERGES = 49152 - 256 - 2      # merges beyond this line of merges.txt are never read (SPEC section 1)
IDEOGRAPHS = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
              (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")   # tried in this order after an apostrophe
YPOGEGRAMMENI = "\u0345"          # no alternative of the official pattern matches it under IGNORECASE


# ----------------------------------------------------------------------------------------------------------------
# The tokenizer: special strings, normalisation, pre-splitting, byte-level BPE.
# ----------------------------------------------------------------------------------------------------------------
def byte_symbols():
    """byte value -> its printable stand-in: the 188 printable bytes stand for themselves, the other 68 take
    U+0100, U+0101, ... in increasing byte order (SPEC section 2)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return table


BYTE_SYMBOLS = byte_symbols()


def normalise(piece):
    """The no-ftfy path (SPEC section 4): whitespace -> space, controls and unassigned code points deleted,
    ideographs spaced, NFC, then each word lower-cased and the words joined by single spaces."""
    out = []
    for ch in piece:
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            out.append(" ")
        elif ch in "\x00\ufffd" or unicodedata.category(ch).startswith("C"):
            continue
        elif any(lo <= ord(ch) <= hi for lo, hi in IDEOGRAPHS):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    return " ".join(word.lower() for word in unicodedata.normalize("NFC", "".join(out)).split())


def is_letter(ch):
    return unicodedata.category(ch).startswith("L")


def is_number(ch):
    return unicodedata.category(ch).startswith("N")


def presplit(text):
    """The official regex alternation, written as a left-to-right scan (SPEC section 5): special strings,
    contractions, a run of letters, one number, or a run of anything else."""
    chunks, i, n = [], 0, len(text)
    folded = text.replace("\u017f", "s")          # IGNORECASE's only fold onto these letters: long s -> s
    while i < n:
        ch = text[i]
        if ch == " " or ch == YPOGEGRAMMENI:
            i += 1
            continue
        special = next((s for s in (BOS, EOS) if folded.startswith(s, i)), None)
        contraction = next((c for c in CONTRACTIONS if ch == "'" and folded.startswith(c, i + 1)), None)
        if special:
            j = i + len(special)
        elif contraction:
            j = i + 1 + len(contraction)
        elif is_letter(ch):
            j = i + 1
            while j < n and is_letter(text[j]):
                j += 1
        elif is_number(ch):
            j = i + 1
        else:
            j = i + 1
            while j < n and text[j] not in (" ", YPOGEGRAMMENI) and not is_letter(text[j]) \
                    and not is_number(text[j]):
                j += 1
        chunks.append(text[i:j])
        i = j
    return chunks


class CLIPTokenizer:
    """CLIP's byte-level BPE on a released ``vocab.json`` + ``merges.txt``; ``pad`` is ``<|endoftext|>`` or ``!``."""

    def __init__(self, vocab, merges, pad=EOS, max_length=77):
        if pad not in (EOS, "!"):
            raise UserError(f"pad token {pad!r}: CLIP's tokenizers pad with '{EOS}' or '!'")
        self.vocab, self.pad, self.max_length = vocab, pad, max_length
        for s in (BOS, EOS, pad):
            if s not in vocab:
                raise UserError(f"vocab.json has no {s!r}: not a CLIP tokenizer vocabulary")
        lines = merges.strip().split("\n")[1:1 + MAX_MERGES]           # the first line is always a header
        self.ranks = {tuple(line.split()): rank for rank, line in enumerate(lines)}
        self.specials = (BOS, EOS) + (("!",) if pad == "!" else ())
        self.bos, self.eos, self.pad_id = vocab[BOS], vocab[EOS], vocab[pad]
        self.cache, self.warned, self.known, self.known_path = {}, False, None, None

    @classmethod
    def from_folder(cls, folder, pad=None, max_length=77):
        """A released ``tokenizer/`` folder; the pad convention from its ``special_tokens_map.json`` (or
        ``tokenizer_config.json``) when ``pad`` is not given, CLIP's ``<|endoftext|>`` when neither says."""
        paths = {name: os.path.join(folder, name) for name in ("vocab.json", "merges.txt")}
        for name, path in paths.items():
            if not os.path.isfile(path):
                raise UserError(f"{folder}: no {name} (a CLIP tokenizer/ folder holds vocab.json and merges.txt)")
        if pad is None:
            pad = EOS
            for name in ("special_tokens_map.json", "tokenizer_config.json"):
                path = os.path.join(folder, name)
                if os.path.isfile(path):
                    with open(path, encoding="utf-8") as f:
                        value = json.load(f).get("pad_token", EOS)
                    pad = value.get("content", EOS) if isinstance(value, dict) else value
                    break
        with open(paths["vocab.json"], encoding="utf-8") as f:
            vocab = json.load(f)
        with open(paths["merges.txt"], encoding="utf-8") as f:
            merges = f.read()
        tok = cls(vocab, merges, pad, max_length)
        known = os.path.join(folder, "captions.txt")                    # a toy world's: the captions it learned
        if os.path.isfile(known):
            with open(known, encoding="utf-8") as f:
                tok.known = {chunk for line in f for chunk in presplit(normalise(line))}
            tok.known_path = known
        return tok

    def unknown_words(self, text):
        """The words of text that the captions behind this vocabulary never held (a toy world's tokenizer folder
        lists them in captions.txt; a released CLIP vocabulary has no such list: nothing is unknown)."""
        if self.known is None:
            return []
        return [c for c in presplit(normalise(text)) if c not in self.known]

    def bpe(self, chunk):
        """One pre-split chunk -> BPE symbols: its bytes' stand-ins, '</w>' on the last, then the lowest-ranked
        adjacent pair merged everywhere (left to right, no overlap) until no pair has a rank (SPEC section 6)."""
        if chunk in (BOS, EOS):
            return [chunk]
        if chunk not in self.cache:
            word = [BYTE_SYMBOLS[b] for b in chunk.encode("utf-8")]
            word[-1] += "</w>"
            while len(word) > 1:
                pairs = {(a, b) for a, b in zip(word, word[1:])}
                best = min(pairs, key=lambda p: self.ranks.get(p, math.inf))
                if best not in self.ranks:
                    break
                merged, i = [], 0
                while i < len(word):
                    if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                        merged.append(word[i] + word[i + 1])
                        i += 2
                    else:
                        merged.append(word[i])
                        i += 1
                word = merged
            self.cache[chunk] = word
        return self.cache[chunk]

    def tokenize(self, text):
        """text -> BPE symbols, without start/end tokens.  The raw text is first cut at every exact occurrence of
        a special string (SPEC section 3); each other piece is normalised and pre-split on its own."""
        symbols, piece, i = [], "", 0
        while i < len(text):
            special = next((s for s in self.specials if text.startswith(s, i)), None)
            if special is None:
                piece += text[i]
                i += 1
                continue
            symbols += [s for chunk in presplit(normalise(piece)) for s in self.bpe(chunk)] + [special]
            piece, i = "", i + len(special)
        return symbols + [s for chunk in presplit(normalise(piece)) for s in self.bpe(chunk)]

    def encode(self, text):
        """text -> [bos] + ids + [eos], no length limit; a symbol outside the vocabulary is the unk (= eos) id."""
        return [self.bos] + [self.vocab.get(s, self.eos) for s in self.tokenize(text)] + [self.eos]

    def __call__(self, prompts):
        """prompts (a str or a list) -> ids [B, max_length]: at most max_length - 2 body ids kept, framed by bos and
        eos, then padded on the right (SPEC section 8).  Truncation is said once per tokenizer."""
        rows = []
        for text in [prompts] if isinstance(prompts, str) else prompts:
            body = self.encode(text)[1:-1]
            if len(body) > self.max_length - 2 and not self.warned:
                print(f"note: a prompt of {len(body) + 2} tokens was truncated to {self.max_length}, as CLIP does "
                      f"({text[:40]!r}...)")
                self.warned = True
            body = body[:self.max_length - 2]
            rows.append([self.bos] + body + [self.eos] + [self.pad_id] * (self.max_length - 2 - len(body)))
        return torch.tensor(rows, dtype=torch.long)                    # [B, L]


# ----------------------------------------------------------------------------------------------------------------
# The text transformer (transformers' CLIPTextModelWithProjection key names).
# ----------------------------------------------------------------------------------------------------------------
ACTIVATIONS = {"gelu": nn.functional.gelu, "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x)}


class CLIPAttention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x):
        b, l, e = x.shape
        q, k, v = (p(x).reshape(b, l, self.heads, e // self.heads).transpose(1, 2)        # -> [B, h, L, E/h]
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)       # token n sees 0..n
        return self.out_proj(out.transpose(1, 2).reshape(b, l, e))                        # -> [B, L, E]


class CLIPMLP(nn.Module):
    def __init__(self, width, hidden, act):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(width, hidden), nn.Linear(hidden, width), ACTIVATIONS[act]

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        e = c["hidden_size"]
        self.layer_norm1 = nn.LayerNorm(e, eps=c["layer_norm_eps"])
        self.self_attn = CLIPAttention(e, c["num_attention_heads"])
        self.layer_norm2 = nn.LayerNorm(e, eps=c["layer_norm_eps"])
        self.mlp = CLIPMLP(e, c["intermediate_size"], c["hidden_act"])

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class TextModel(nn.Module):
    """``text_model.*``: embeddings, the pre-norm encoder, the final LayerNorm."""

    def __init__(self, c):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.token_embedding = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.embeddings.position_embedding = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(CLIPLayer(c) for _ in range(c["num_hidden_layers"]))
        self.final_layer_norm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])


TEXT_DEFAULTS = dict(hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407)


class CLIPTextEncoder(nn.Module):
    """transformers' ``CLIPTextModelWithProjection`` (config: a ``CLIPTextConfig``'s keys).  ``forward(ids)`` ->
    dict(hidden_states = (x_0, ..., x_n), last_hidden_state, pooled_output, text_embeds)."""

    def __init__(self, **config):
        super().__init__()
        self.config = c = {**TEXT_DEFAULTS, **config}
        if c["hidden_act"] not in ACTIVATIONS:
            raise UserError(f"text encoder hidden_act {c['hidden_act']!r}: expected one of {sorted(ACTIVATIONS)}")
        self.text_model = TextModel(c)
        self.text_projection = nn.Linear(c["hidden_size"], c["projection_dim"], bias=False)

    def forward(self, input_ids):
        b, l = input_ids.shape
        if l > self.config["max_position_embeddings"]:
            raise UserError(f"{l} text tokens, but the encoder has {self.config['max_position_embeddings']} positions")
        emb = self.text_model.embeddings
        x = emb.token_embedding(input_ids) + emb.position_embedding.weight[:l]              # [B, L, E]
        hidden_states = [x]
        for layer in self.text_model.encoder.layers:
            x = layer(x)
            hidden_states.append(x)
        last = self.text_model.final_layer_norm(x)
        eos = self.config["eos_token_id"]
        # transformers pools at argmax(ids) for legacy configs (eos id 2), else at the first end-of-text token
        where = input_ids.argmax(-1) if eos == 2 else (input_ids == eos).int().argmax(-1)    # [B]
        pooled = last[torch.arange(b, device=input_ids.device), where]                      # [B, E]
        return dict(hidden_states=hidden_states, last_hidden_state=last, pooled_output=pooled,
                    text_embeds=self.text_projection(pooled))


TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
             "num_attention_heads", "max_position_embeddings", "hidden_act", "layer_norm_eps", "bos_token_id",
             "eos_token_id")


def load_text_encoder(folder):
    """A released ``text_encoder/`` folder (config.json + model.safetensors or pytorch_model.bin), strictly."""
    def build(c):
        return CLIPTextEncoder(**{k: c[k] for k in TEXT_KEYS if k in c})

    def fix(state):   # transformers < 4.31 saved the position ids, an arange buffer without a weight in it
        return {k: v for k, v in state.items() if k != "text_model.embeddings.position_ids"}

    return load_folder(folder, "text encoder", build, fix)[0]


def open_clip_config(embed_dim, text_cfg, quick_gelu=False, **_):
    """open_clip's ``CLIP(embed_dim, vision_cfg, text_cfg, quick_gelu)`` text tower -> this class's config.  The
    activation is a switch because the release does not record it: open_clip <= 2.28 loaded OpenAI's weights with
    QuickGELU, 2.29-2.31 built the json config with exact GELU (SPEC_maskgen.md facts (c)).  open_clip pools at
    argmax(ids), the first end-of-text since it is the largest id (vocab - 1); so is eos_token_id here."""
    return dict(vocab_size=text_cfg["vocab_size"], hidden_size=text_cfg["width"],
                intermediate_size=int(text_cfg.get("mlp_ratio", 4.0) * text_cfg["width"]),
                projection_dim=embed_dim, num_hidden_layers=text_cfg["layers"], num_attention_heads=text_cfg["heads"],
                max_position_embeddings=text_cfg.get("context_length", 77),
                hidden_act="quick_gelu" if quick_gelu else "gelu", bos_token_id=text_cfg["vocab_size"] - 2,
                eos_token_id=text_cfg["vocab_size"] - 1)


OPEN_CLIP_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def from_open_clip(state):
    """An open_clip text tower's state dict (``transformer.resblocks.{i}.*``, packed ``in_proj``, ``text_projection``
    as [W, E] used as x @ P) -> this class's keys.  Every key must be known: an unknown one is an error, so that the
    strict load after it stays strict; ``logit_scale`` (the contrastive temperature, unused by a text condition) and
    a ``visual.*`` tower are dropped."""
    out = {}
    for key, value in state.items():
        if key == "logit_scale" or key.startswith("visual."):
            continue
        packed = re.fullmatch(r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", key)
        m = re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)", key)
        if packed:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3)):        # rows: q, k, v
                out[f"text_model.encoder.layers.{packed[1]}.self_attn.{name}.{packed[2]}"] = part
        elif m and m[2] in OPEN_CLIP_LAYER:
            out[f"text_model.encoder.layers.{m[1]}.{OPEN_CLIP_LAYER[m[2]]}.{m[3]}"] = value
        elif key in ("ln_final.weight", "ln_final.bias"):
            out["text_model.final_layer_norm." + key.split(".")[1]] = value
        elif key == "token_embedding.weight":
            out["text_model.embeddings.token_embedding.weight"] = value
        elif key == "positional_embedding":
            out["text_model.embeddings.position_embedding.weight"] = value
        elif key == "text_projection":
            out["text_projection.weight"] = value.T                                      # x @ P = Linear with P^T
        else:
            raise UserError(f"open_clip text tower: unknown key {key!r} (expected token_embedding, "
                            f"positional_embedding, transformer.resblocks.*, ln_final, text_projection, logit_scale)")
    return out


@torch.no_grad()
def encode_prompts(tokenizer, encoder, prompts, device="cpu", final=False):
    """The text condition of Meissonic and MaskGen: (hidden [B, L, E] = hidden_states[-2], the penultimate layer's
    output without the final LayerNorm; pooled [B, P] = text_embeds, the projected end-of-text state).  final=True
    adds the final-LayerNorm states of every position [B, L, E]: what TA-TiTok's decoder reads."""
    out = encoder(tokenizer(prompts).to(device))
    cond = out["hidden_states"][-2], out["text_embeds"]
    return (*cond, out["last_hidden_state"]) if final else cond


if __name__ == "__main__":
    import sys

    folder, text = (sys.argv[1:3] + [None, None])[:2]
    tok = CLIPTokenizer.from_folder(folder or os.path.join(os.path.dirname(__file__), "tests/golden/clip_tokenizer"))
    text = text or "two red circles left of a blue square"
    print(tok.tokenize(text))
    print(tok.encode(text))
